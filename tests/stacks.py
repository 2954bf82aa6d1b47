"""The two ways the black-box tests get a whole stack: native processes, or docker compose.

The e2e and chaos tests are written once, against :class:`Stack`; ``pytest --stack=compose``
(``make test-compose``) runs the same test functions against stacks started with the project's
own ``docker-compose.yml``, where ``--stack=native`` (the default) starts them with
``deploy/native.py``. What a test does to the stack goes through this interface, so each
mode does it its own way:

- replicas of a service: ``native.replicas`` (ports +10 each) | ``docker compose ps`` (IPs);
- kill a replica and keep it down: a signal, then supervisord told to stop it (one XML-RPC
  multicall, so it is not restarted) | ``docker kill --signal``;
- crash a replica (``crash``): ``os.kill`` of its pid, and supervisord restarts it by itself |
  ``docker kill`` (compose does not restart a killed container: ``restart_missing`` does);
- bring back what died: ``native.up`` (starts what is missing) | ``docker compose up --wait``;
- restart RabbitMQ: ``rabbitmqctl stop_app``/``start_app`` | ``docker compose stop/start``;
- restart a database: ``pg_ctlcluster ... stop/start`` | ``docker compose stop/start <db>``;
- logs: ``.run/<stack>/logs/*.log`` | ``docker compose logs``;
- metrics of a replica: ``GET /metrics`` on its port | the same request through ``docker exec``;
- traces and logs: the tests' OTLP receiver (tests/e2e/otlp.py) | Jaeger's and Seq's query APIs.

A compose stack publishes, besides the gateway and the operator UIs, its broker and databases on
loopback (``tests/compose/test-stack.yml``): the tests inject events and check the books
directly, as they do natively. Its ports are ``TEST_PORT_BASE`` + 10000 + (e2e: 0, chaos: 500) +
the offsets of ``COMPOSE_PORTS``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from deploy import native

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILES = (REPO / "docker-compose.yml", REPO / "tests" / "compose" / "test-stack.yml")
# Offsets from a compose stack's port base.
COMPOSE_PORTS = {"GATEWAY_PORT": 80, "TEST_AMQP_PORT": 72, "RABBITMQ_UI_PORT": 73,
                 "TEST_ORDER_DB_PORT": 32, "TEST_PAYMENT_DB_PORT": 33, "TEST_IDENTITY_DB_PORT": 34,
                 "TEST_REDIS_PORT": 79,
                 "JAEGER_UI_PORT": 86, "SEQ_UI_PORT": 38}
# The variables of docker-compose.yml a test stack sets (tuning knobs, credentials, limits).
COMPOSE_KNOBS = ("PRODUCTION_PREPARATION_SECONDS", "RETRY_DELAYS_MS", "IDENTITY_TOKEN_TTL_SECONDS",
                 "GATEWAY_RATE_LIMIT", "GATEWAY_RATE_BURST", "GATEWAY_LIST_RATE_LIMIT",
                 "GATEWAY_LIST_RATE_BURST", "GATEWAY_CONN_LIMIT", "GATEWAY_CLIENT_TIMEOUT",
                 "ORDER_DB_POOL_SIZE", "PAYMENT_DB_POOL_SIZE", "LOG_LEVEL",
                 "ORDER_ADMISSION_MAX_WAITING", "WEBHOOK_ALLOWED_HOSTS", "WEBHOOK_MAX_ATTEMPTS",
                 "WEBHOOK_BACKOFF_SECONDS", "WEBHOOK_TIMEOUT_SECONDS")


def stack_mode(config: Any) -> str:
    return str(config.getoption("--stack"))


@dataclass(frozen=True)
class Replica:
    name: str     # native: order-1; compose: saga-e2e-order-2 (the container's name)
    address: str  # host:port as the gateway's access log shows the upstream


class Stack(Protocol):
    mode: str
    base_url: str
    rabbitmq_url: str
    env: dict[str, str]

    def replicas(self, service: str) -> list[Replica]: ...
    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None: ...
    def crash(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None: ...
    def pid(self, name: str) -> int | None: ...
    def running(self, name: str) -> bool: ...
    def restart_missing(self) -> None: ...
    def log(self, name: str) -> str: ...
    def service_logs(self) -> dict[str, str]: ...
    def gateway_log(self) -> str: ...
    def metrics(self, service: str) -> list[str]: ...
    def stop_broker(self) -> None: ...
    def start_broker(self) -> None: ...
    def databases(self) -> list[str]: ...
    def store_urls(self) -> dict[str, str]: ...
    def stop_database(self, name: str) -> None: ...
    def start_database(self, name: str) -> None: ...


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --- native ------------------------------------------------------------------------------------


@dataclass
class NativeStack:
    base_url: str
    rabbitmq_url: str
    env: dict[str, str]
    run_dir: Path
    mode: str = "native"

    def start(self, timeout: float = 120) -> NativeStack:
        native.up(self.env, self.run_dir, timeout=timeout)
        return self

    def stop(self) -> None:
        native.down(self.run_dir)

    def replicas(self, service: str) -> list[Replica]:
        return [Replica(r.name, r.address)
                for r in native.replicas(service, native.stack_env(self.env))]

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """`sig` to the replica, and it stays down until :meth:`restart_missing`: in the same
        XML-RPC multicall supervisord is told to stop it, before it can see the exit as a
        crash and restart it (the program state goes STOPPING, then STOPPED)."""
        proxy = native.rpc(self.run_dir)
        assert proxy is not None and self.running(name), f"{name} is not running"
        results = proxy.system.multicall([
            {"methodName": "supervisor.signalProcess", "params": [name, sig.name[3:]]},
            {"methodName": "supervisor.stopProcess", "params": [name, False]},
        ])
        assert results == [True, True], results  # a fault would be a dict in the list

    def crash(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """`sig` to the replica's pid, from outside as a crash would be: supervisord restarts
        it by itself (deploy/runner/processes.py)."""
        pid = native.read_pid(self.run_dir, name)
        assert pid is not None, f"{name} is not running"
        os.kill(pid, sig)

    def pid(self, name: str) -> int | None:
        return native.read_pid(self.run_dir, name)

    def running(self, name: str) -> bool:
        return native.read_pid(self.run_dir, name) is not None

    def restart_missing(self) -> None:
        native.up(self.env, self.run_dir, timeout=90)

    def log(self, name: str) -> str:
        return (self.run_dir / "logs" / f"{name}.log").read_text(errors="replace")

    def log_tail(self, name: str, lines: int = 30) -> str:
        return native.log_tail(self.run_dir, name, lines, this_run=True)

    def service_logs(self) -> dict[str, str]:
        return {f.stem: f.read_text(errors="replace")
                for f in sorted((self.run_dir / "logs").glob("*.log"))}

    def store_urls(self) -> dict[str, str]:
        """Where each store of the stack is, as the tests reach it: service -> URL."""
        env = native.stack_env(self.env)
        return {"order": env["ORDER_DATABASE_URL"], "payment": env["PAYMENT_DATABASE_URL"],
                "identity": env["IDENTITY_DATABASE_URL"], "production": env["PRODUCTION_REDIS_URL"]}

    def gateway_log(self) -> str:
        return self.log("gateway")

    def metrics(self, service: str) -> list[str]:
        texts = []
        for replica in self.replicas(service):
            response = httpx.get(f"http://{replica.address}/metrics", timeout=5)
            assert response.status_code == 200, response.text
            texts.append(response.text)
        return texts

    def stop_broker(self) -> None:
        _run(["rabbitmqctl", "-q", "stop_app"])

    def start_broker(self) -> None:
        _run(["rabbitmqctl", "-q", "start_app"])

    def databases(self) -> list[str]:
        # One PostgreSQL cluster holds both services' databases; Redis keeps nothing on disk
        # on these machines, so restarting it natively would lose the kitchen by design.
        return ["postgresql"]

    def stop_database(self, name: str) -> None:
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "stop", "-m", "fast"])

    def start_database(self, name: str) -> None:
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"])


# --- compose -----------------------------------------------------------------------------------


@dataclass
class ComposeStack:
    """A docker compose project of this repository's stack, for the tests."""

    project: str
    port_base: int
    knobs: Mapping[str, str]
    scale: Mapping[str, int]
    mode: str = "compose"
    env: dict[str, str] = field(default_factory=dict)
    # More compose files laid over the test stack's (docker-compose.ha.yml: a broker cluster).
    extra_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        # A knob the compose stack would not pass on would make the test run on defaults
        # without a word: refuse it instead.
        if dropped := sorted(set(self.knobs) - set(COMPOSE_KNOBS)):
            raise ValueError(f"compose does not pass {dropped} on: add them to COMPOSE_KNOBS "
                             "(and to docker-compose.yml)")
        self.ports = {name: self.port_base + offset for name, offset in COMPOSE_PORTS.items()}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()}, **self.knobs}
        self.base_url = f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"
        self.rabbitmq_url = ""  # known once started: its password is made by the `keys` job
        self.jaeger_url = f"http://127.0.0.1:{self.ports['JAEGER_UI_PORT']}"
        self.seq_url = f"http://127.0.0.1:{self.ports['SEQ_UI_PORT']}"

    def _password(self, container: str) -> str:
        """The random password the `keys` job made for `container` (on its secret volume)."""
        password = self.compose("exec", "-T", container, "cat", "/run/saga-secrets/password",
                                timeout=60).strip()
        return quote(password, safe="")

    def postgres_url(self, service: str) -> str:
        """The service's database as published for the tests, with its password."""
        port = self.ports[f"TEST_{service.upper()}_DB_PORT"]
        role, database = {"order": ("order_svc", "orders"),
                          "payment": ("payment_svc", "payments"),
                          "identity": ("identity_svc", "identity")}[service]
        return f"postgresql://{role}:{self._password(f'{service}-db')}@127.0.0.1:{port}/{database}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['TEST_REDIS_PORT']}/0"

    def store_urls(self) -> dict[str, str]:
        """Where each store of the stack is, as the tests reach it (published on loopback by
        tests/compose/test-stack.yml): service -> URL."""
        return {"order": self.postgres_url("order"), "payment": self.postgres_url("payment"),
                "identity": self.postgres_url("identity"), "production": self.redis_url}

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        files = [arg for path in (*COMPOSE_FILES, *self.extra_files) for arg in ("-f", str(path))]
        done = subprocess.run(["docker", "compose", "-p", self.project, *files, *args],
                              env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def _up_args(self) -> list[str]:
        return ["up", "-d", "--wait", "--wait-timeout", "300",
                *[arg for s, n in self.scale.items() for arg in ("--scale", f"{s}={n}")]]

    def start(self) -> ComposeStack:
        self.compose("down", "--volumes", "--remove-orphans", check=False)
        self.compose(*self._up_args()[:1], "--build", *self._up_args()[1:], timeout=1200)
        self.rabbitmq_url = (f"amqp://saga:{self._password('rabbitmq')}@127.0.0.1:"
                             f"{self.ports['TEST_AMQP_PORT']}/")
        self._wait_gateway_sees_all()
        return self

    def stop(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)

    def _wait_gateway_sees_all(self, timeout: float = 60) -> None:
        """Until every replica answers through the gateway (its upstream files follow DNS)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(httpx.get(f"{self.base_url}/health/{s}/ready", timeout=5).status_code == 200
                       for s in native.SERVICES):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the compose stack's gateway never became ready")
            time.sleep(0.5)

    def _containers(self, service: str, *, all_states: bool = False) -> list[dict[str, Any]]:
        args = ["ps", "--format", "json", *(["--all"] if all_states else []), service]
        out = self.compose(*args).strip()
        if not out:
            return []
        rows = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines()]
        return sorted(rows, key=lambda r: r["Name"])

    def replicas(self, service: str) -> list[Replica]:
        port = {"order": 8001, "payment": 8002, "production": 8003, "identity": 8004}[service]
        found = []
        for row in self._containers(service):
            inspect = json.loads(subprocess.run(
                ["docker", "inspect", row["Name"]], env=self.env, capture_output=True,
                text=True, check=True, timeout=60).stdout)[0]
            networks = inspect["NetworkSettings"]["Networks"].values()
            found.append(Replica(row["Name"], f"{next(iter(networks))['IPAddress']}:{port}"))
        return found

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        _run(["docker", "kill", f"--signal={sig.name}", name], env=self.env)

    def crash(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        self.kill(name, sig)  # compose restarts no killed container: restart_missing does

    def pid(self, name: str) -> int | None:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], check=False,
                              env=self.env, capture_output=True, text=True, timeout=60)
        pid = done.stdout.strip()
        return int(pid) if pid.isdigit() and pid != "0" else None

    def running(self, name: str) -> bool:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                              env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)
        return done.stdout.strip() == "true"

    def restart_missing(self) -> None:
        self.compose(*self._up_args(), timeout=600)
        self._wait_gateway_sees_all()

    def log(self, name: str) -> str:
        done = subprocess.run(["docker", "logs", name], env=self.env, capture_output=True,
                              text=True, timeout=60, check=False)
        return done.stdout + done.stderr

    def log_tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def _logs(self, service: str) -> str:
        # compose 2.26 writes an erase-line escape (ESC[2K) before some lines even with
        # --no-color and no TTY: strip terminal control sequences so each line is the log line.
        text = self.compose("logs", "--no-color", "--no-log-prefix", service)
        return _ANSI.sub("", text)

    def service_logs(self) -> dict[str, str]:
        return {s: self._logs(s) for s in (*native.SERVICES, "gateway")}

    def gateway_log(self) -> str:
        return self._logs("gateway")

    def metrics(self, service: str) -> list[str]:
        port = {"order": 8001, "payment": 8002, "production": 8003, "identity": 8004}[service]
        probe = ("import urllib.request as u; print(u.build_opener(u.ProxyHandler({}))"
                 f".open('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())")
        return [subprocess.run(["docker", "exec", r.name, "python", "-c", probe], env=self.env,
                               capture_output=True, text=True, check=True, timeout=60).stdout
                for r in self.replicas(service)]

    def container(self, service: str) -> str:
        """The name of the (first) container of ``service``."""
        return str(self._containers(service)[0]["Name"])

    def exec(self, service: str, *argv: str) -> str:
        done = subprocess.run(["docker", "exec", self.container(service), *argv], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {service} failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def stop_broker(self) -> None:
        self.compose("stop", "rabbitmq", timeout=120)

    def start_broker(self) -> None:
        self.compose("start", "rabbitmq", timeout=120)

    def databases(self) -> list[str]:
        return ["order-db", "payment-db", "redis"]

    def stop_database(self, name: str) -> None:
        self.compose("stop", name, timeout=120)

    def start_database(self, name: str) -> None:
        self.compose("start", name, timeout=120)


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120,
                   env=dict(env) if env is not None else None)


def docker_answers() -> bool:
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=10)
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False

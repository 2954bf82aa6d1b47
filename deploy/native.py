"""Native mode: saga-shop's three services and its nginx gateway as local processes.

The same commands compose runs (``python -m order`` ...), against RabbitMQ, PostgreSQL and Redis at
the URLs in the environment (defaults: docs/conventions.md), behind nginx rendered from the one
gateway template. ``make up`` calls this when no Docker engine answers; pytest fixtures import it.

    python deploy/native.py [--run-dir DIR] up [--timeout S] | prepare | down | status | logs

Everything comes from the environment, so a second, isolated stack is just other values::

    SAGA_RUN_DIR=.run/test GATEWAY_PORT=18080 ORDER_HTTP_PORT=18001 ... python deploy/native.py up

Replicas: ``ORDER_REPLICAS``, ``PAYMENT_REPLICAS``, ``PRODUCTION_REPLICAS`` (default 1) processes
per service, competing consumers on the same queues, balanced by nginx. Replica ``i`` (0-based)
listens on ``<SERVICE>_HTTP_PORT + 10*i`` and is named ``order``, ``order-2``, ``order-3`` ...

Run directory (``--run-dir``, else ``SAGA_RUN_DIR``, else ``.run``; a relative path is taken from
the repository root): ``<name>.pid`` and ``logs/<name>.log`` for the gateway and every replica,
the rendered nginx config under ``nginx/``, and ``stack.json`` (the gateway port and replica
addresses, so ``status`` finds a stack started with other values).

``SAGA_SERVICE_CMD_<SERVICE>`` (e.g. ``SAGA_SERVICE_CMD_ORDER="python /tmp/fake.py order"``)
replaces a service's start command; it exists to test this runner before the services do.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "gateway" / "templates" / "gateway.conf.template"
# The services of the saga (events, dead letters), and every service process the runner starts.
SERVICES = ("order", "payment", "production")
IDENTITY = "identity"
ALL_SERVICES = (*SERVICES, IDENTITY)
GATEWAY = "gateway"
# The shop page and operator view (plain files nginx serves; compose mounts the same folder).
SITE_ROOT = REPO_ROOT / "gateway" / "site"
TEMPLATE_VARS = ("GATEWAY_LISTEN", "GATEWAY_RATE_LIMIT", "GATEWAY_RATE_BURST", "GATEWAY_SITE_ROOT",
                 "GATEWAY_LIST_RATE_LIMIT", "GATEWAY_LIST_RATE_BURST", "GATEWAY_CONN_LIMIT",
                 "GATEWAY_CLIENT_TIMEOUT", "ORDER_UPSTREAM_SERVERS", "PAYMENT_UPSTREAM_SERVERS",
                 "PRODUCTION_UPSTREAM_SERVERS", "IDENTITY_UPSTREAM_SERVERS")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
RATE = re.compile(r"[1-9][0-9]*r/[sm]")
# The gateway's limits: each variable, the shape nginx needs, an example of it.
GATEWAY_KNOBS = (
    ("GATEWAY_RATE_LIMIT", RATE, "30r/s or 600r/m"),
    ("GATEWAY_RATE_BURST", re.compile(r"[0-9]+"), "60"),
    ("GATEWAY_LIST_RATE_LIMIT", RATE, "5r/s or 300r/m"),
    ("GATEWAY_LIST_RATE_BURST", re.compile(r"[0-9]+"), "10"),
    ("GATEWAY_CONN_LIMIT", re.compile(r"[1-9][0-9]*"), "20"),
    ("GATEWAY_CLIENT_TIMEOUT", re.compile(r"[1-9][0-9]*(?:ms|s|m)?"), "10s"),
)
# Passive circuit breaking: 3 failures within 10 s take a replica out for 10 s.
UPSTREAM_SERVER_OPTIONS = "max_fails=3 fail_timeout=10s"
REPLICA_PORT_STEP = 10
DATABASE_URLS = ("ORDER_DATABASE_URL", "PAYMENT_DATABASE_URL", "IDENTITY_DATABASE_URL")

# The defaults of docs/conventions.md that this runner itself reads.
DEFAULTS = {
    "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/",
    "ORDER_DATABASE_URL": "postgresql://order_svc:order_svc@127.0.0.1:5432/orders",
    "PAYMENT_DATABASE_URL": "postgresql://payment_svc:payment_svc@127.0.0.1:5432/payments",
    "IDENTITY_DATABASE_URL": "postgresql://identity_svc:identity_svc@127.0.0.1:5432/identity",
    "POSTGRES_ADMIN_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "GATEWAY_PORT": "8080",
    # Loopback unless set: the development accounts are on (IDENTITY_SEED_DEV_ACCOUNTS).
    "GATEWAY_BIND": "127.0.0.1",
    "ORDER_HTTP_HOST": "127.0.0.1",
    "ORDER_HTTP_PORT": "8001",
    "PAYMENT_HTTP_HOST": "127.0.0.1",
    "PAYMENT_HTTP_PORT": "8002",
    "PRODUCTION_HTTP_HOST": "127.0.0.1",
    "PRODUCTION_HTTP_PORT": "8003",
    "IDENTITY_HTTP_HOST": "127.0.0.1",
    "IDENTITY_HTTP_PORT": "8004",
    "ORDER_REPLICAS": "1",
    "PAYMENT_REPLICAS": "1",
    "PRODUCTION_REPLICAS": "1",
    "IDENTITY_REPLICAS": "1",
    # Per client address, sized to the stack's measured capacity (SECURITY.md, "Limits"): a
    # benchmark or a test stack raises them for itself.
    "GATEWAY_RATE_LIMIT": "30r/s",
    "GATEWAY_RATE_BURST": "60",
    "GATEWAY_LIST_RATE_LIMIT": "5r/s",
    "GATEWAY_LIST_RATE_BURST": "10",
    "GATEWAY_CONN_LIMIT": "20",
    "GATEWAY_CLIENT_TIMEOUT": "10s",
}


class StackError(RuntimeError):
    """The stack could not be brought to the state asked for; the message says why."""


def _say(message: str) -> None:
    print(f"native: {message}", flush=True)


# --- Configuration ----------------------------------------------------------------------------


def stack_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every process gets: the caller's, plus conventions defaults and upstreams.

    ``<SERVICE>_UPSTREAM`` (host:port of each replica, space-separated) defaults to this stack's
    replicas; ``<SERVICE>_UPSTREAM_SERVERS``, what the gateway template takes, to one nginx
    ``server`` line per address in it.
    """
    full = dict(os.environ if env is None else env)
    for name, value in DEFAULTS.items():
        full.setdefault(name, value)
    bind = full["GATEWAY_BIND"]
    full.setdefault("GATEWAY_LISTEN", f"{f'[{bind}]' if ':' in bind else bind}:"
                                      f"{full['GATEWAY_PORT']}")
    full.setdefault("GATEWAY_SITE_ROOT", str(SITE_ROOT))
    for service in ALL_SERVICES:
        prefix = service.upper()
        full.setdefault(f"{prefix}_UPSTREAM", " ".join(r.address for r in replicas(service, full)))
        full.setdefault(f"{prefix}_UPSTREAM_SERVERS", "\n    ".join(
            f"server {address} {UPSTREAM_SERVER_OPTIONS};"
            for address in full[f"{prefix}_UPSTREAM"].split()))
    full.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach the log file as they happen
    return full


@dataclass(frozen=True)
class Replica:
    """One process of a service: replica ``index`` (0-based) listens on base port + 10*index."""

    service: str
    index: int
    host: str  # what it binds
    port: int

    @property
    def name(self) -> str:
        """``order`` for the first replica (the names from before replicas), then ``order-2``..."""
        return self.service if self.index == 0 else f"{self.service}-{self.index + 1}"

    @property
    def address(self) -> str:
        """host:port to reach it at, as nginx writes it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in nginx's host:port
        return f"{host}:{self.port}"

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {**env, f"{self.service.upper()}_HTTP_PORT": str(self.port)}


def replicas(service: str, env: Mapping[str, str]) -> list[Replica]:
    """The replicas `env` asks for (``<SERVICE>_REPLICAS``, default 1)."""
    prefix = service.upper()
    raw = env.get(f"{prefix}_REPLICAS", DEFAULTS[f"{prefix}_REPLICAS"])
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise StackError(f"{prefix}_REPLICAS must be a whole number from 1, not {raw!r}")
    host = env.get(f"{prefix}_HTTP_HOST", DEFAULTS[f"{prefix}_HTTP_HOST"])
    port = int(env.get(f"{prefix}_HTTP_PORT", DEFAULTS[f"{prefix}_HTTP_PORT"]))
    return [Replica(service, i, host, port + REPLICA_PORT_STEP * i) for i in range(int(raw))]


def database_url(env: Mapping[str, str], name: str) -> str:
    """A service's database URL as the service connects with it: with the password of
    ``<NAME without _URL>_PASSWORD_FILE`` when one is set (sagakit.settings.DatabaseSettings)."""
    from sagakit.settings import read_password_file, with_password

    url = env[name]
    if path := env.get(name.removesuffix("_URL") + "_PASSWORD_FILE"):
        return with_password(url, read_password_file(path))
    return url


def development_credentials(env: Mapping[str, str]) -> list[str]:
    """What in `env` is a credential anyone can read in this repository."""
    found = []
    if env.get("IDENTITY_SEED_DEV_ACCOUNTS", "true").lower() not in ("0", "false", "no"):
        found.append("the development accounts (IDENTITY_SEED_DEV_ACCOUNTS=false turns them off)")
    for name in DATABASE_URLS:
        known = urlsplit(DEFAULTS[name]).password
        if urlsplit(database_url(env, name)).password in (known, None, ""):
            found.append(f"{name}'s development password (or none)")
    if unquote(urlsplit(env["RABBITMQ_URL"]).password or "guest") == "guest":
        found.append("RABBITMQ_URL's guest account")
    return found


def check_gateway_settings(env: Mapping[str, str]) -> None:
    """Refuse limits nginx would misread, and a public gateway with development credentials,
    before anything starts.

    On loopback (the default) the development credentials are safe and `make up` needs nothing
    else; listening anywhere else (GATEWAY_BIND) needs real secrets, from the environment or
    ``*_FILE`` files, and the runner refuses to start until every one is replaced."""
    if env["GATEWAY_BIND"] not in LOCAL_HOSTS and (known := development_credentials(env)):
        raise StackError(f"GATEWAY_BIND={env['GATEWAY_BIND']} would publish a stack reachable "
                         f"with credentials anyone can read: {'; '.join(known)}. Set real "
                         "secrets first (SECURITY.md), or keep GATEWAY_BIND=127.0.0.1")
    for name, shape, example in GATEWAY_KNOBS:
        if not shape.fullmatch(env[name]):
            raise StackError(f"{name} must read like {example}, not {env[name]!r}")


def resolve_run_dir(run_dir: str | os.PathLike[str] | None = None) -> Path:
    path = Path(run_dir or os.environ.get("SAGA_RUN_DIR") or ".run")
    return path if path.is_absolute() else REPO_ROOT / path


def service_command(service: str, env: Mapping[str, str]) -> list[str]:
    override = env.get(f"SAGA_SERVICE_CMD_{service.upper()}")
    return shlex.split(override) if override else [sys.executable, "-m", service]


# --- PostgreSQL roles and databases, RabbitMQ vhost -------------------------------------------


@dataclass(frozen=True)
class Database:
    role: str
    password: str | None
    name: str

    @classmethod
    def from_url(cls, url: str) -> Database:
        parts = urlsplit(url)
        name = unquote(parts.path.lstrip("/"))
        if not parts.username or not name:
            raise StackError(f"database URL needs a user and a database name: {url!r}")
        password = unquote(parts.password) if parts.password is not None else None
        return cls(unquote(parts.username), password, name)


async def _ensure_databases(admin_url: str, databases: Iterable[Database]) -> None:
    import asyncpg  # only `up`/`prepare` need it; `down` and `status` stay stdlib-only

    try:
        conn = await asyncpg.connect(admin_url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StackError(f"cannot reach PostgreSQL with POSTGRES_ADMIN_URL: {exc}") from exc
    try:
        admin = await conn.fetchval("SELECT current_user")

        async def run(template: str, *args: str | None) -> None:
            # The server quotes identifiers (%I) and literals (%L); NULL becomes PASSWORD NULL.
            params = ", ".join(f"${i}::text" for i in range(2, len(args) + 2))
            await conn.execute(await conn.fetchval(f"SELECT format($1, {params})", template, *args))

        for db in databases:
            if db.role != admin:
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", db.role)
                verb = "ALTER" if exists else "CREATE"
                await run(verb + " ROLE %I LOGIN PASSWORD %L", db.role, db.password)
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db.name):
                await run("ALTER DATABASE %I OWNER TO %I", db.name, db.role)
            else:
                await run("CREATE DATABASE %I OWNER %I", db.name, db.role)
            # Each role may open only its own database: no service reads another's tables.
            await run("REVOKE CONNECT ON DATABASE %I FROM PUBLIC", db.name)
            _say(f"postgres: database {db.name} owned by {db.role}")
    finally:
        await conn.close()


def _run_coroutine(factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion even when the caller is inside an event loop (a fixture)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def ensure_databases(env: Mapping[str, str]) -> None:
    """Create (or converge) each service's role and database from its URL; idempotent."""
    databases = [Database.from_url(database_url(env, k)) for k in DATABASE_URLS]
    _run_coroutine(lambda: _ensure_databases(env["POSTGRES_ADMIN_URL"], databases))


def drop_service_databases(env: Mapping[str, str]) -> None:
    """Drop the services' databases (connections closed by force): a fresh start for a test or
    benchmark stack. Never used by `up`/`down`; the roles stay."""
    names = [Database.from_url(env[k]).name for k in DATABASE_URLS]

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(env["POSTGRES_ADMIN_URL"], timeout=10)
        try:
            for name in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run_coroutine(drop)


def amqp_vhost(url: str) -> str:
    """The vhost an AMQP URL names, read the way aiormq reads it ("/" when the path is empty)."""
    path = urlsplit(url).path
    return "/" if path in ("", "/") else unquote(path[1:])


def ensure_vhost(url: str) -> None:
    """Create a non-default vhost named by RABBITMQ_URL; only possible on this machine."""
    vhost = amqp_vhost(url)
    if vhost == "/":
        return
    parts = urlsplit(url)
    if (parts.hostname or "") not in LOCAL_HOSTS:
        _say(f"rabbitmq: broker {parts.hostname} is remote; vhost {vhost!r} must exist there")
        return
    ctl = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/sbin")
    if ctl is None:
        raise StackError(f"vhost {vhost!r} is needed but rabbitmqctl is not installed here")

    def rabbitmqctl(*args: str) -> str:
        done = subprocess.run([ctl, "-s", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"rabbitmqctl {' '.join(args)} failed (run as root?):\n"
                             f"{done.stdout}{done.stderr}")
        return done.stdout

    if vhost in rabbitmqctl("list_vhosts", "name").split():
        return
    user = unquote(parts.username or "guest")
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    _say(f"rabbitmq: created vhost {vhost!r} for {user}")


# --- Processes --------------------------------------------------------------------------------

# Processes this interpreter started: polled so they never linger as zombies (pytest fixtures).
_children: dict[int, subprocess.Popen[bytes]] = {}
_START_MARK = "native: starting"


def _pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def _log_file(run_dir: Path, name: str) -> Path:
    return run_dir / "logs" / f"{name}.log"


@functools.cache
def _boot_time() -> int:
    btime = next(line for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))
    return int(btime.split()[1])


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(state, process group, start time as epoch seconds) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0], int(fields[2]), started


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def read_pid(run_dir: Path, name: str) -> int | None:
    """The pid recorded for `name` if that process still runs (not a later one reusing its pid)."""
    pid_file = _pid_file(run_dir, name)
    try:
        pid = int(pid_file.read_text().strip())
        written = pid_file.stat().st_mtime
    except (OSError, ValueError):
        return None
    stat = _stat(pid)
    if stat is None or not _alive(pid) or stat[2] > written + 2:
        return None
    return pid


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group; reaps our own children first."""
    for pid in list(_children):
        if _children[pid].poll() is not None:
            del _children[pid]
    members = []
    for entry in Path("/proc").iterdir():
        if (entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None
                and stat[1] == pgid and stat[0] != "Z"):
            members.append(int(entry.name))
    return members


def _start(name: str, argv: list[str], env: Mapping[str, str], run_dir: Path) -> int:
    """Start one process in its own session, output appended to its log, pid recorded."""
    log_path = _log_file(run_dir, name)
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"--- {stamp} {_START_MARK} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    _pid_file(run_dir, name).write_text(f"{proc.pid}\n")
    return proc.pid


def _port_busy(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_service(replica: Replica, env: Mapping[str, str], run_dir: Path) -> None:
    name = replica.name
    if (pid := read_pid(run_dir, name)) is not None:
        _say(f"{name}: already running (pid {pid})")
        return
    host, port = replica.address.rsplit(":", 1)
    if _port_busy(host.strip("[]"), int(port)):
        raise StackError(f"{name}: port {port} is taken by a process this run dir did not "
                         f"start; stop it or choose another {replica.service.upper()}_HTTP_PORT")
    pid = _start(name, service_command(replica.service, env), replica.env(env), run_dir)
    _say(f"{name}: started (pid {pid}) on {replica.address}, log {_log_file(run_dir, name)}")


_PROCESS_NAME = re.compile(rf"(?:{GATEWAY}|(?:{'|'.join(ALL_SERVICES)})(?:-[2-9]|-[1-9][0-9]+)?)")


def process_sort_key(name: str) -> tuple[int, int]:
    """Gateway first, then each service's replicas in order."""
    service, _, number = name.partition("-")
    rank = 0 if service == GATEWAY else 1 + ALL_SERVICES.index(service)
    return rank, int(number or 1)


def recorded(run_dir: Path) -> list[str]:
    """Every process this run dir has a pid file for (running or not), gateway first."""
    names = [f.stem for f in run_dir.glob("*.pid") if _PROCESS_NAME.fullmatch(f.stem)]
    return sorted(names, key=process_sort_key)


# --- Gateway ----------------------------------------------------------------------------------


def render_template(text: str, values: Mapping[str, str]) -> str:
    """envsubst restricted to TEMPLATE_VARS: `${VAR}` and `$VAR`; nginx's own `$vars` stay."""
    names = "|".join(TEMPLATE_VARS)
    pattern = re.compile(rf"\$(?:\{{({names})\}}|({names})(?![A-Za-z0-9_]))")

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if not values.get(name):
            raise StackError(f"gateway template needs {name}")
        return values[name]

    return pattern.sub(value, text)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise StackError("nginx is not installed; run deploy/bootstrap.sh as root, or: "
                         "sudo apt-get update && sudo apt-get install -y nginx")
    return found


def _nginx_main_conf(nginx_dir: Path) -> str:
    """The main config around conf.d: every path a worker writes stays inside the run dir."""
    temp = "\n".join(f"    {kind}_temp_path {nginx_dir / 'tmp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    mime = "    include /etc/nginx/mime.types;\n" if Path("/etc/nginx/mime.types").exists() else ""
    # As root, nginx would hand requests to `nobody`, which may not enter the run dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        "# Written by deploy/native.py; edit gateway/templates/gateway.conf.template instead.\n"
        f"{user}daemon off;\nworker_processes auto;\npid {nginx_dir / 'nginx.pid'};\n"
        "error_log stderr warn;\n\n"
        "events {\n    worker_connections 1024;\n}\n\n"
        "http {\n"
        f"{mime}    default_type application/octet-stream;\n"
        "    sendfile on;\n    keepalive_timeout 65;\n"
        f"{temp}\n    include {nginx_dir / 'conf.d'}/*.conf;\n"
        "}\n"
    )


def _nginx(nginx_dir: Path, *args: str) -> list[str]:
    return [nginx_binary(), "-p", f"{nginx_dir}/", "-c", str(nginx_dir / "nginx.conf"),
            "-e", "stderr", *args]


def _write_nginx_config(env: Mapping[str, str], nginx_dir: Path) -> bool:
    """Render and validate the gateway config; True when it differs from what was there."""
    for sub in ("conf.d", "tmp"):
        (nginx_dir / sub).mkdir(parents=True, exist_ok=True)
    gateway_conf = nginx_dir / "conf.d" / "gateway.conf"
    rendered = render_template(TEMPLATE.read_text(), env)
    changed = not gateway_conf.exists() or gateway_conf.read_text() != rendered
    gateway_conf.write_text(rendered)
    (nginx_dir / "nginx.conf").write_text(_nginx_main_conf(nginx_dir))
    check = subprocess.run(_nginx(nginx_dir, "-t", "-q"), capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        raise StackError(f"nginx rejected {gateway_conf}:\n{check.stdout}{check.stderr}")
    return changed


def _start_gateway(env: Mapping[str, str], run_dir: Path) -> None:
    nginx_dir = run_dir / "nginx"
    changed = _write_nginx_config(env, nginx_dir)
    if (pid := read_pid(run_dir, GATEWAY)) is not None:
        if changed:
            os.kill(pid, signal.SIGHUP)  # nginx re-reads its config without dropping requests
            _say(f"gateway: config changed, reloaded (pid {pid})")
        else:
            _say(f"gateway: already running (pid {pid})")
        return
    port = int(env["GATEWAY_PORT"])
    if _port_busy("127.0.0.1", port):
        raise StackError(f"gateway: port {port} is taken by a process this run dir did not start")
    pid = _start(GATEWAY, _nginx(nginx_dir), env, run_dir)
    _say(f"gateway: started nginx (pid {pid}) on http://127.0.0.1:{port}/")


# --- Readiness --------------------------------------------------------------------------------

# Straight to 127.0.0.1: an http_proxy in the environment must not be asked.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status a GET gets, or None when nothing answers."""
    try:
        with _opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def log_tail(run_dir: Path, name: str, lines: int = 40, *, this_run: bool = False) -> str:
    """The last `lines` of a log; with `this_run`, none from before the latest start."""
    try:
        text = _log_file(run_dir, name).read_bytes()[-200_000:].decode(errors="replace")
    except OSError:
        return f"(no log for {name})"
    if this_run and (mark := text.rfind(_START_MARK)) >= 0:
        text = text[text.rfind("\n", 0, mark) + 1 :]
    return "\n".join(text.splitlines()[-lines:])


def _failure(run_dir: Path | None, name: str, problem: str) -> StackError:
    if run_dir is None:
        return StackError(f"{name}: {problem}")
    return StackError(f"{name}: {problem}; last lines of {_log_file(run_dir, name)}:\n"
                      f"{log_tail(run_dir, name, this_run=True)}")


def wait_ready(gateway_port: int | str, *, run_dir: Path | None = None,
               services: Iterable[str] = ALL_SERVICES, replicas: Iterable[Replica] = (),
               timeout: float = 60.0, interval: float = 0.5) -> None:
    """Poll until every replica answers ready directly and every service through the gateway.

    The gateway alone would hide a replica that never came up behind one that did. A service is
    asked through the gateway only once its replicas answer: refused connections would otherwise
    make nginx leave them out for fail_timeout. With a run dir, a recorded process that has died
    fails at once, with the end of its log.
    """
    base = f"http://127.0.0.1:{gateway_port}"
    pending = [_Probe(r.name, f"http://{r.address}/health/ready", r.service, r.name)
               for r in replicas]
    pending += [_Probe(f"{GATEWAY} -> {service}", f"{base}/health/{service}/ready", service,
                       service, via_gateway=True) for service in services]
    seen: dict[str, int | None] = {}
    deadline = time.monotonic() + timeout
    while True:
        for name in {GATEWAY, *(probe.process for probe in pending)}:
            if run_dir is not None and _pid_file(run_dir, name).exists() \
                    and read_pid(run_dir, name) is None:
                raise _failure(run_dir, name, "process exited")
        starting = {probe.service for probe in pending if not probe.via_gateway}
        for probe in list(pending):
            if probe.via_gateway and probe.service in starting:
                continue
            status = http_status(probe.url)
            if status == 200:
                pending.remove(probe)
                _say(f"{probe.label}: ready")
            elif seen.get(probe.label, -1) != status:
                seen[probe.label] = status
                why = "not answering" if status is None else f"HTTP {status}"
                _say(f"{probe.label}: waiting ({why})")
        if not pending:
            return
        if time.monotonic() > deadline:
            first = pending[0]
            culprit = GATEWAY if first.via_gateway and seen.get(first.label) is None \
                else first.process
            raise _failure(run_dir, culprit, f"not ready after {timeout:.0f}s (still waiting "
                                             f"for {', '.join(p.label for p in pending)})")
        time.sleep(interval)


@dataclass(frozen=True)
class _Probe:
    label: str
    url: str
    service: str
    process: str  # the one to blame while it does not answer
    via_gateway: bool = False


# --- The commands -----------------------------------------------------------------------------


def ensure_keys(env: dict[str, str], run_dir: Path) -> None:
    """The identity's signing keys and their public set, made once per run dir unless given.

    ``IDENTITY_SIGNING_KEYS_FILE`` (private, the identity only) and ``AUTH_JWKS_FILE`` (public,
    every service) point at them; set both to use keys of your own.
    """
    if not env.get("IDENTITY_SIGNING_KEYS_FILE") and not env.get("IDENTITY_SIGNING_KEYS"):
        from identity import keys  # the installed project, as the services themselves

        directory = run_dir / "keys"
        if keys.init(directory):
            _say(f"identity: made a signing key in {directory}")
        env["IDENTITY_SIGNING_KEYS_FILE"] = str(directory / keys.PRIVATE)
        env.setdefault("AUTH_JWKS_FILE", str(directory / keys.PUBLIC))
    if not env.get("AUTH_JWKS_FILE") and not env.get("AUTH_JWKS"):
        raise StackError("AUTH_JWKS_FILE (or AUTH_JWKS) must be set with IDENTITY_SIGNING_KEYS: "
                         "the services verify tokens with the public key set")


def prepare(env: Mapping[str, str] | None = None) -> None:
    """Create the databases, roles and broker vhost the services need (idempotent)."""
    full = stack_env(env)
    ensure_databases(full)
    ensure_vhost(full["RABBITMQ_URL"])


def up(env: Mapping[str, str] | None = None, run_dir: str | os.PathLike[str] | None = None, *,
       timeout: float = 60.0) -> None:
    """Start whatever is not running yet and return once every replica is ready.

    Replicas beyond the number asked for (``<SERVICE>_REPLICAS`` went down) are stopped once the
    gateway no longer sends them requests.
    """
    full = stack_env(env)
    check_gateway_settings(full)
    path = resolve_run_dir(run_dir or full.get("SAGA_RUN_DIR"))
    (path / "logs").mkdir(parents=True, exist_ok=True)
    ensure_keys(full, path)
    wanted = [replica for service in ALL_SERVICES for replica in replicas(service, full)]
    prepare(full)
    for replica in wanted:
        _start_service(replica, full, path)
    _start_gateway(full, path)
    (path / "stack.json").write_text(json.dumps({
        "gateway_port": int(full["GATEWAY_PORT"]),
        "replicas": {replica.name: replica.address for replica in wanted},
    }))
    names = {replica.name for replica in wanted}
    if surplus := [name for name in recorded(path) if name != GATEWAY and name not in names]:
        _stop(path, surplus)
    wait_ready(full["GATEWAY_PORT"], run_dir=path, replicas=wanted, timeout=timeout)
    _say(f"all ready: http://127.0.0.1:{full['GATEWAY_PORT']}/")
    if full.get("IDENTITY_SEED_DEV_ACCOUNTS", "true").lower() not in ("0", "false", "no"):
        _say("development accounts (README.md, \"Accounts\"): ana@example.com / "
             "ana-dev-password, bob@example.com / bob-dev-password; operator client "
             "ops-console / ops-dev-secret")


def down(run_dir: str | os.PathLike[str] | None = None, *, timeout: float = 15.0) -> None:
    """Stop every process this run dir recorded, gateway first."""
    path = resolve_run_dir(run_dir)
    if not _stop(path, recorded(path), timeout=timeout):
        _say(f"nothing running from {path}")


def _stop(path: Path, names: list[str], *, timeout: float = 15.0) -> dict[str, int]:
    """SIGTERM each named process group, SIGKILL what outlives `timeout`; forget their pids."""
    groups: dict[str, int] = {}
    for name in names:
        pid = read_pid(path, name)
        if pid is not None:
            groups[name] = pid
            _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_group_members(pid) for pid in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, pid in groups.items():
        if _group_members(pid):
            _say(f"{name}: still running after {timeout:.0f}s, killing")
            _signal_group(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5
    while any(_group_members(pid) for pid in groups.values()) and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    # Give init a moment to reap the leaders too, so `pgrep` right after `down` finds nothing.
    while any(Path(f"/proc/{pid}").exists() for pid in groups.values()) \
            and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    for name in names:
        _pid_file(path, name).unlink(missing_ok=True)
        if name in groups:
            _say(f"{name}: stopped (pid {groups[name]})")
    return groups


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def status(run_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Each process: its pid, whether it runs, and whether it answers ready.

    The gateway answers at its /health, a replica at its own address (the gateway would answer
    for whichever replica it picked).
    """
    path = resolve_run_dir(run_dir)
    try:
        stack = json.loads((path / "stack.json").read_text())
    except (OSError, ValueError):
        stack = {}
    port = stack.get("gateway_port") or stack_env()["GATEWAY_PORT"]
    addresses: dict[str, str] = stack.get("replicas", {})
    rows = []
    for name in sorted({GATEWAY, *ALL_SERVICES, *addresses, *recorded(path)},
                       key=process_sort_key):
        pid = read_pid(path, name)
        if name == GATEWAY:
            url = f"http://127.0.0.1:{port}/health"
        elif name in addresses:
            url = f"http://{addresses[name]}/health/ready"
        else:  # a stack.json from before replicas
            url = f"http://127.0.0.1:{port}/health/{name}/ready"
        rows.append({"name": name, "pid": pid, "alive": pid is not None,
                     "ready": pid is not None and http_status(url) == 200})
    return rows


def _print_logs(run_dir: Path, names: list[str], lines: int | None) -> None:
    files = [_log_file(run_dir, name) for name in names if _log_file(run_dir, name).exists()]
    if not files:
        raise StackError(f"no logs in {run_dir / 'logs'}")
    if lines is None:
        os.execvp("tail", ["tail", "-n", "20", "-F", *map(str, files)])
    for file in files:
        print(f"==> {file} <==")
        print(log_tail(run_dir, file.stem, lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="native.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", help="default: $SAGA_RUN_DIR, else .run at the repo root")
    commands = parser.add_subparsers(dest="command", required=True)
    up_cmd = commands.add_parser("up", help="start what is missing, wait until all are ready")
    up_cmd.add_argument("--timeout", type=float, default=60.0)
    commands.add_parser("prepare", help="only create the databases, roles and vhost")
    commands.add_parser("down", help="stop everything this run dir started")
    commands.add_parser("status", aliases=["ps"], help="pid, alive and ready of each process")
    logs_cmd = commands.add_parser("logs", help="follow the logs (or print the last --lines)")
    logs_cmd.add_argument("names", nargs="*",
                          help=f"any of {GATEWAY}, {', '.join(ALL_SERVICES)}, or a "
                               "replica: order-2")
    logs_cmd.add_argument("--lines", "-n", type=int)
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            up(None, args.run_dir, timeout=args.timeout)
        elif args.command == "prepare":
            prepare()
        elif args.command == "down":
            down(args.run_dir)
        elif args.command in ("status", "ps"):
            print(f"{'NAME':<14} {'PID':>8}  {'ALIVE':<6} READY")
            for row in status(args.run_dir):
                pid = row["pid"] or "-"
                print(f"{row['name']:<14} {pid:>8}  {row['alive']!s:<6} {row['ready']}")
        else:
            path = resolve_run_dir(args.run_dir)
            logged = [f.stem for f in (path / "logs").glob("*.log")
                      if _PROCESS_NAME.fullmatch(f.stem)]
            names = args.names or sorted({GATEWAY, *ALL_SERVICES, *logged},
                                         key=process_sort_key)
            if unknown := [name for name in names if not _PROCESS_NAME.fullmatch(name)]:
                parser.error(f"unknown process: {', '.join(sorted(unknown))}")
            _print_logs(path, names, args.lines)
    except StackError as exc:
        print(f"native: {exc}", file=sys.stderr)
        if args.command == "up":
            print("native: `make down` (or `deploy/native.py down`) stops what did start",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

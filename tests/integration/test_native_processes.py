"""Native mode's supervisord: the restart policy it is given, and a crash it repairs by itself.

Hermetic: the programs are Python one-liners, so no broker, database or nginx is needed.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deploy import native
from deploy.runner import processes
from deploy.runner.control import rpc

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]


def _programs(env: dict[str, str]) -> list[processes.Program]:
    return [processes.Program("order", SLEEPER, env), processes.Program("order-2", SLEEPER, env)]


def test_each_program_is_restarted_with_backoff_and_logs_in_the_run_dir(tmp_path: Path):
    config = processes.write_config(tmp_path, _programs({"SECRET": "50%-off"}))
    parsed = configparser.RawConfigParser()
    parsed.read(config)
    assert [s for s in parsed.sections() if s.startswith("program:")] == \
        ["program:order", "program:order-2"]
    order = parsed["program:order"]
    assert order["autorestart"] == "true"
    assert int(order["startsecs"]) == processes.START_SECONDS
    assert int(order["startretries"]) == processes.START_RETRIES >= 10
    assert order["stopasgroup"] == order["killasgroup"] == "true"
    assert order["stdout_logfile"] == str(tmp_path / "logs" / "order.log")
    # The environment goes in a file only the owner reads, never through the config's quoting.
    env_file = tmp_path / "env" / "order.json"
    assert "SECRET" not in config.read_text()
    assert env_file.stat().st_mode & 0o077 == 0
    assert json.loads(env_file.read_text())["env"] == {"SECRET": "50%-off"}


@pytest.fixture
def supervised(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    try:
        yield run_dir
    finally:
        native.down(run_dir)


def _wait(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return result


def test_a_killed_program_comes_back_and_down_leaves_nothing(supervised: Path):
    assert processes.apply(supervised, _programs(dict(os.environ))) == []
    first = _wait(lambda: native.read_pid(supervised, "order"), "order never started")
    _wait(lambda: native.log_tail(supervised, "order").endswith("up"), "no output from order")
    assert os.getpgid(first) == first  # its own process group (bench/stack.py counts CPU so)
    os.kill(first, signal.SIGKILL)
    again = _wait(lambda: (pid := native.read_pid(supervised, "order")) not in (None, first)
                  and pid, "supervisord did not restart order")
    # The restart's own start mark and output; log_tail(this_run=True) shows only those.
    _wait(lambda: native.log_tail(supervised, "order").count(processes.START_MARK) == 2,
          "no start mark from the restarted order")
    _wait(lambda: native.log_tail(supervised, "order", this_run=True).splitlines()[-2:] ==
          [native.log_tail(supervised, "order", this_run=True).splitlines()[0], "up"],
          "no output from the restarted order")
    assert native.recorded(supervised) == ["order", "order-2"]

    # `up` again with fewer programs: the surplus one is handed back to stop.
    assert processes.apply(supervised, _programs(dict(os.environ))[:1]) == ["order-2"]
    processes.stop(supervised, ["order-2"])
    assert native.recorded(supervised) == ["order"]

    proxy = rpc(supervised)
    assert proxy is not None
    supervisord = proxy.supervisor.getPID()
    native.down(supervised)
    for pid in (again, supervisord):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert native.rpc(supervised) is None and native.read_pid(supervised, "order") is None


def test_a_program_that_dies_as_it_starts_is_retried_and_up_says_why(supervised: Path):
    """Dying within startsecs is supervisord's BACKOFF (retried 1 s, 2 s ... later); ``up``'s
    wait for readiness fails at once with the end of this run's log instead of timing out."""
    dying = [sys.executable, "-c", "import sys; sys.exit('no broker here')"]
    processes.apply(supervised, [processes.Program("order", dying, dict(os.environ))])
    _wait(lambda: processes.processes(supervised)["order"]["statename"] == "BACKOFF",
          "order never went to BACKOFF")
    started = time.monotonic()
    with pytest.raises(native.StackError, match=r"order: process exited \(BACKOFF\)") as failed:
        native.wait_ready(1, run_dir=supervised, services=(),
                          replicas=[native.Replica("order", 0, "127.0.0.1", 1)], timeout=30)
    assert time.monotonic() - started < 5
    assert "no broker here" in str(failed.value)
    _wait(lambda: native.log_tail(supervised, "order").count(processes.START_MARK) >= 2,
          "supervisord did not retry order")


# A program that says how it ends: SIGTERM is a graceful stop, as the services' own.
GRACEFUL = [sys.executable, "-c", "\n".join((
    "import signal, sys, time",
    "signal.signal(signal.SIGTERM, lambda *_: (print('stopping', flush=True), sys.exit(0)))",
    "print('up', flush=True)",
    "time.sleep(600)"))]


def test_the_programs_of_a_killed_supervisord_stop_and_up_starts_them_again(supervised: Path):
    """supervisord killed (SIGKILL: nothing of it runs to stop its programs) leaves no program
    running unwatched on its port: each is sent SIGTERM (launch.py's parent-death signal) and
    stops gracefully; the next ``apply`` (what ``up`` does) starts a supervisord and them."""
    programs = [processes.Program(name, GRACEFUL, dict(os.environ))
                for name in ("order", "payment")]
    processes.apply(supervised, programs)
    pids = [_wait(lambda n=name: native.read_pid(supervised, n), f"{name} never started")
            for name in ("order", "payment")]
    for name in ("order", "payment"):
        _wait(lambda n=name: native.log_tail(supervised, n).endswith("up"),
              f"no output from {name}")
    proxy = rpc(supervised)
    assert proxy is not None
    os.kill(proxy.supervisor.getPID(), signal.SIGKILL)

    def gone(pid: int) -> bool:
        """Exited: no such process, or a zombie (where nothing reaps the dead
        supervisord's orphans, as a container's first process may not)."""
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    _wait(lambda: all(gone(pid) for pid in pids), "a program outlived its supervisord", 15)
    for name in ("order", "payment"):
        assert native.log_tail(supervised, name).endswith("stopping")
    assert native.rpc(supervised) is None

    processes.apply(supervised, programs)
    again = _wait(lambda: native.read_pid(supervised, "order"), "order not started again")
    assert again not in pids


def test_a_launch_whose_supervisord_is_gone_starts_nothing(tmp_path: Path):
    """launch.py run after its supervisord died (before the parent-death signal was set): its
    parent is not the pid supervisord wrote, so it exits instead of starting the program."""
    programs = [processes.Program("order", SLEEPER, dict(os.environ))]
    processes.write_config(tmp_path, programs)
    (tmp_path / processes.PID_FILE).write_text("999999999")  # no such process is its parent
    done = subprocess.run([sys.executable, str(processes.LAUNCHER),
                           str(tmp_path / "env" / "order.json")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "supervisord (pid 999999999) is gone" in done.stderr
    assert processes.START_MARK not in native.log_tail(tmp_path, "order")


def test_up_waits_for_a_port_only_after_a_killed_supervisord(monkeypatch):
    """``up`` after a killed supervisord may find its programs still stopping: it waits for
    their ports (up to PORT_WAIT_SECONDS), and names a port that stays taken and what to set.
    With no killed supervisord, a taken port is named at once."""
    from deploy.runner import cli

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    replica = native.Replica("order", 0, "127.0.0.1", port)
    env = {"GATEWAY_PORT": "1"}  # nothing listens on port 1
    threading.Timer(1.0, holder.close).start()
    started = time.monotonic()
    cli._refuse_taken_ports(env, [replica], {}, killed=True)
    assert 0.9 < time.monotonic() - started < 10

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        replica = native.Replica("order", 0, "127.0.0.1", taken.getsockname()[1])
        monkeypatch.setattr(cli, "PORT_WAIT_SECONDS", 1)
        with pytest.raises(native.StackError, match=r"order: port \d+ .*killed.* ORDER_HTTP_PORT"):
            cli._refuse_taken_ports(env, [replica], {}, killed=True)
        started = time.monotonic()
        with pytest.raises(native.StackError, match=r"order: port \d+ .* ORDER_HTTP_PORT"):
            cli._refuse_taken_ports(env, [replica], {}, killed=False)
        assert time.monotonic() - started < 0.9  # no wait
        # ... unless this run dir's supervisord keeps it
        cli._refuse_taken_ports(env, [replica], {"order": {"statename": "RUNNING"}}, killed=True)


def test_a_running_program_whose_settings_changed_is_restarted_with_them(supervised: Path):
    """`make up WEBHOOK_ALLOWED_HOSTS=...`, then `make up ORDER_REPLICAS=2`: the second replica
    started without the override while the first kept it, and they answered the same order
    differently. As compose recreates a changed container, a change to a setting the program
    reads restarts it, judged by the environment it really runs with; a setting only another
    service reads, or the rest of the caller's shell (PATH, MAKEFLAGS ...), restarts nothing,
    nor does anything restart the gateway (it re-reads its config on a signal)."""
    watched = frozenset({"WEBHOOK_ALLOWED_HOSTS"})

    def programs(env: dict[str, str]) -> list[processes.Program]:
        return [processes.Program("gateway", SLEEPER, env, 100),
                *(processes.Program(name, SLEEPER, env, watched=watched)
                  for name in ("order", "order-2"))]

    base = {**os.environ, "WEBHOOK_ALLOWED_HOSTS": "http://127.0.0.1:9000"}
    processes.apply(supervised, programs(base))
    pids = {name: _wait(lambda n=name: native.read_pid(supervised, n), f"{name} never started")
            for name in ("gateway", "order", "order-2")}
    for name in pids:  # running the program itself, as after an up (which waits for ready)
        _wait(lambda n=name: native.log_tail(supervised, n).endswith("up"), f"{name} silent")

    processes.apply(supervised, programs({**base, "MAKEFLAGS": "-j2",
                                          "PRODUCTION_PREPARATION_SECONDS": "0"}))
    assert {n: native.read_pid(supervised, n) for n in pids} == pids

    # An up interrupted after the env files were written must not hide the change: what the
    # process runs with counts.
    processes.write_config(supervised, programs({**base, "WEBHOOK_ALLOWED_HOSTS": ""}))
    processes.apply(supervised, programs({**base, "WEBHOOK_ALLOWED_HOSTS": ""}))
    now = {n: native.read_pid(supervised, n) for n in pids}
    assert now["gateway"] == pids["gateway"]
    for name in ("order", "order-2"):
        assert now[name] not in (None, pids[name]), name
    for name in ("order", "order-2"):
        environ = Path(f"/proc/{now[name]}/environ").read_bytes().split(b"\0")
        assert b"WEBHOOK_ALLOWED_HOSTS=" in environ


def test_the_runner_watches_what_each_service_reads_and_no_more(tmp_path: Path):
    from deploy.runner import cli
    from deploy.runner.config import replicas

    env = native.stack_env({})
    by_name = {p.name: p for p in cli._programs(env, tmp_path,
                                                [r for s in ("order", "production")
                                                 for r in replicas(s, env)])}
    assert by_name["gateway"].watched is None
    order, production = by_name["order"].watched, by_name["production"].watched
    assert order is not None and production is not None
    assert {"WEBHOOK_ALLOWED_HOSTS", "ORDER_DATABASE_URL", "RETRY_DELAYS_MS"} <= order
    assert "PRODUCTION_PREPARATION_SECONDS" in production - order
    assert not {"PATH", "ORDER_REPLICAS", "GATEWAY_PORT"} & (order | production)
    assert by_name["order"].ready_url == f"http://{replicas('order', env)[0].address}/health/ready"

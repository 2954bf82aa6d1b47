"""Native mode's supervisord: the restart policy it is given, and a crash it repairs by itself.

Hermetic: the programs are Python one-liners, so no broker, database or nginx is needed.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import sys
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

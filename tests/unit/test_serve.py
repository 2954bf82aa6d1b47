"""``sagakit.runtime.serve``, the one entry point, in a process of its own as a service runs.

What it owes an operator: a stop signal is said in the log as it arrives (so a stop that never
began and a signal that never came look different), the stop is graceful (the lifespan's
shutdown runs, then the process ends by that signal), and a start-up that fails exits non-zero,
as ``uvicorn.run``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from sagakit import runtime

APP = textwrap.dedent("""
    import asyncio, contextlib, logging, sys
    from fastapi import FastAPI
    from sagakit import runtime
    from sagakit.runtime import serve
    from sagakit.settings import ServiceSettings

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if sys.argv[2] == "fail":
            raise RuntimeError("the database is away")
        yield
        if sys.argv[2] == "slow":  # a stop that outlasts the report's delay
            await asyncio.sleep(1.0)
        logging.getLogger("probe").info("lifespan shutdown ran")

    def build():
        app = FastAPI(lifespan=lifespan)

        @app.get("/ping")
        async def ping():
            return {"ok": True}

        return app

    if __name__ == "__main__":  # uvicorn imports this module again for build()
        runtime.STOP_REPORT_SECONDS = 0.3
        serve("probe_app:build", ServiceSettings(http_port=int(sys.argv[1])), "probe")
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "probe_app.py").write_text(APP)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    process = subprocess.Popen([sys.executable, str(tmp_path / "probe_app.py"), str(port), mode],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return process, port


def _messages(output: str) -> list[str]:
    found = []
    for line in output.splitlines():
        try:
            found.append(json.loads(line)["message"])
        except (ValueError, KeyError, TypeError):
            found.append(line)
    return found


def _stop_when_up(process: subprocess.Popen[str], port: int) -> str:
    """SIGTERM once the probe answers; its whole output once it has ended."""
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the probe service never answered"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=30)[0]
    finally:
        process.kill()


def test_sigterm_is_said_as_it_arrives_and_the_stop_is_graceful(tmp_path: Path) -> None:
    process, port = _start(tmp_path, "ok")
    output = _stop_when_up(process, port)
    messages = _messages(output)
    said = "SIGTERM received: stopping (in-flight work finishes first)"
    assert said in messages, output
    # Stopped, uvicorn raises the signal again with the default action restored: the parent
    # sees the usual "ended by SIGTERM" (a container's PID 1 ignores that one and exits 0).
    assert process.returncode == -signal.SIGTERM, output
    # In this order: the signal, then the stop the lifespan makes, then uvicorn's last line.
    assert (messages.index(said) < messages.index("lifespan shutdown ran")
            < messages.index("Application shutdown complete.")), output
    assert not any(m.startswith("still stopping") for m in messages), output  # a quick stop


def test_a_stop_past_its_limits_logs_what_it_waits_on(tmp_path: Path) -> None:
    process, port = _start(tmp_path, "slow")  # the report after 0.3 s, a stop of 1 s
    messages = _messages(_stop_when_up(process, port))
    reports = [m for m in messages if m.startswith("still stopping after")]
    assert len(reports) == 1, messages
    assert "LifespanOn.main()" in reports[0], reports  # the task the stop waits on, named
    assert messages.index(reports[0]) < messages.index("lifespan shutdown ran"), messages


def test_a_start_up_that_fails_exits_non_zero(tmp_path: Path) -> None:
    process, _ = _start(tmp_path, "fail")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 3, output  # uvicorn's STARTUP_FAILURE, as uvicorn.run
    assert "the database is away" in output


def test_a_slow_stop_reports_what_each_task_waits_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async def stuck_sender() -> None:
            await asyncio.Event().wait()

        task = asyncio.create_task(stuck_sender(), name="webhook-sender")
        await asyncio.sleep(0)
        runtime._report_slow_stop()
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="sagakit.runtime"):
        asyncio.run(scenario())
    report = caplog.records[-1].getMessage()
    assert report.startswith(f"still stopping after {runtime.STOP_REPORT_SECONDS:.0f} s")
    assert "name='webhook-sender'" in report and "in stuck_sender" in report

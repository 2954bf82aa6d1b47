"""Readiness: every replica asked directly, every service through the gateway."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deploy.runner import processes
from deploy.runner.config import ALL_SERVICES, GATEWAY, Replica, StackError, say

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


def failure(run_dir: Path | None, name: str, problem: str) -> StackError:
    if run_dir is None:
        return StackError(f"{name}: {problem}")
    return StackError(f"{name}: {problem}; last lines of {processes.log_file(run_dir, name)}:\n"
                      f"{processes.log_tail(run_dir, name, this_run=True)}")


@dataclass(frozen=True)
class _Probe:
    label: str
    url: str
    service: str
    process: str  # the one to blame while it does not answer
    via_gateway: bool = False


def wait_ready(gateway_port: int | str, *, run_dir: Path | None = None,
               services: Iterable[str] = ALL_SERVICES, replicas: Iterable[Replica] = (),
               timeout: float = 60.0, interval: float = 0.5) -> None:
    """Poll until every replica answers ready directly and every service through the gateway.

    The gateway alone would hide a replica that never came up behind one that did. A service is
    asked through the gateway only once its replicas answer: refused connections would otherwise
    make nginx leave them out for fail_timeout. With a run dir, a program that exits while it
    starts fails at once, with the end of its log (supervisord goes on retrying it).
    """
    base = f"http://127.0.0.1:{gateway_port}"
    pending = [_Probe(r.name, f"http://{r.address}/health/ready", r.service, r.name)
               for r in replicas]
    pending += [_Probe(f"{GATEWAY} -> {service}", f"{base}/health/{service}/ready", service,
                       service, via_gateway=True) for service in services]
    seen: dict[str, int | None] = {}
    deadline = time.monotonic() + timeout
    while True:
        if run_dir is not None:
            states = processes.processes(run_dir)
            for name in {GATEWAY, *(probe.process for probe in pending)}:
                if (state := states.get(name, {}).get("statename")) in processes.FAILED:
                    raise failure(run_dir, name, f"process exited ({state})")
        starting = {probe.service for probe in pending if not probe.via_gateway}
        for probe in list(pending):
            if probe.via_gateway and probe.service in starting:
                continue
            status = http_status(probe.url)
            if status == 200:
                pending.remove(probe)
                say(f"{probe.label}: ready")
            elif seen.get(probe.label, -1) != status:
                seen[probe.label] = status
                why = "not answering" if status is None else f"HTTP {status}"
                say(f"{probe.label}: waiting ({why})")
        if not pending:
            return
        if time.monotonic() > deadline:
            first = pending[0]
            culprit = GATEWAY if first.via_gateway and seen.get(first.label) is None \
                else first.process
            raise failure(run_dir, culprit, f"not ready after {timeout:.0f}s (still waiting "
                                            f"for {', '.join(p.label for p in pending)})")
        time.sleep(interval)

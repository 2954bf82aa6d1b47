"""CPU time per process from /proc (Linux): who spent the machine's cores during a run.

No psutil: ``/proc/<pid>/stat`` fields 14 and 15 (utime, stime, in clock ticks) are enough. A
service is its process group (uvicorn, nginx's master and workers); the servers are found by
command name; the machine's total comes from ``/proc/stat``, which includes everyone else's load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = {"rabbitmq": ("beam.smp",), "postgres": ("postgres",), "redis": ("redis-server",)}


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, pgid, cpu seconds) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return comm, int(fields[2]), (int(fields[11]) + int(fields[12])) / TICKS


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores summed."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / TICKS, total / TICKS


def load_average() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


@dataclass
class CpuMeter:
    """CPU seconds per named group between :meth:`start` and :meth:`stop`.

    ``groups`` maps a name to a process-group id (a service's pid: supervisord starts each
    program in a group of its own); server processes are matched by command name, so a process
    that starts mid-run (a PostgreSQL backend) counts from its start. Servers are shared: other
    sessions on this machine add to them.
    """

    groups: dict[str, int]
    own_pids: dict[str, int] = field(default_factory=dict)
    _start: dict[int, tuple[str, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        pgids = {pgid: name for name, pgid in self.groups.items()}
        own = {pid: name for name, pid in self.own_pids.items()}
        found: dict[int, tuple[str, float]] = {}
        for pid in _all_pids():
            stat = _stat(pid)
            if stat is None:
                continue
            comm, pgid, cpu = stat
            name = own.get(pid) or pgids.get(pgid) or next(
                (server for server, comms in SERVERS.items() if comm.startswith(comms)), None)
            if name:
                found[pid] = (name, cpu)
        return found

    def start(self) -> None:
        self._start = self._snapshot()
        self._machine = machine_busy_seconds()

    def stop(self, seconds: float) -> dict[str, object]:
        end = self._snapshot()
        busy0, total0 = self._machine
        busy1, total1 = machine_busy_seconds()
        per: dict[str, float] = {}
        for pid, (name, cpu) in end.items():
            before = self._start.get(pid, (name, 0.0))[1]
            per[name] = per.get(name, 0.0) + max(0.0, cpu - before)
        cores = os.cpu_count() or 1
        ours = sum(per.values())
        machine = busy1 - busy0
        return {
            "seconds": round(seconds, 3),
            "cores": cores,
            "cpu_seconds": {k: round(v, 3) for k, v in sorted(per.items())},
            "cpu_percent_of_one_core": {k: round(100 * v / seconds, 1)
                                        for k, v in sorted(per.items())} if seconds else {},
            "machine_busy_percent": round(100 * machine / (total1 - total0), 1)
            if total1 > total0 else None,
            # What this machine spent outside the processes named above: other sessions' load.
            "others_cpu_seconds": round(max(0.0, machine - ours), 3),
        }

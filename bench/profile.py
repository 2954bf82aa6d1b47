"""Sample the services' stacks while the load runs: ``py-spy record`` on each replica's pid.

Output is py-spy's collapsed-stack format (``<replica>.folded``, one line per stack with its
sample count; flamegraph.pl or speedscope read it) plus, in the report, each replica's top
functions by own time and by inclusive time. py-spy comes with the ``bench`` extra.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def _py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pids: dict[str, int], out_dir: Path, seconds: float) -> None:
        self.pids = {name: pid for name, pid in pids.items() if name != "gateway"}
        self.out_dir = out_dir
        self.seconds = seconds
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        binary = _py_spy()
        if binary is None:
            print("bench: py-spy not installed (pip install -e '.[bench]'); no profile",
                  file=sys.stderr)
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            self._procs[name] = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--duration", str(int(self.seconds)),
                 "--rate", "200", "--format", "raw", "--nonblocking",
                 "--output", str(self.out_dir / f"{name}.folded")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> dict[str, Any]:
        summary = {}
        for name, proc in self._procs.items():
            try:
                proc.wait(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            path = self.out_dir / f"{name}.folded"
            if path.exists():
                summary[name] = top_functions(path)
        return summary


def top_functions(path: Path, count: int = 15) -> dict[str, Any]:
    """Share of samples per function: ``self`` (leaf frame) and ``total`` (anywhere on stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        n = int(number)
        frames = [_short(frame) for frame in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n

    def share(counts: Counter[str]) -> dict[str, float]:
        if not samples:
            return {}
        return {k: round(100 * v / samples, 1) for k, v in counts.most_common(count)}

    return {"samples": samples, "self_percent": share(own), "total_percent": share(total)}


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/libs/", "/services/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name

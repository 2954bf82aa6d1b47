"""Turn a run into figures: throughput, latency percentiles, per-hop latency, a JSON and a PNG."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.load import TERMINAL, LoadResult


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, Any]:
    """Nearest-rank percentiles, in the values' unit, rounded to 0.01."""
    if not values:
        return {f"p{round(q * 100)}": None for q in qs} | {"n": 0}
    ordered = sorted(values)
    picks = {f"p{round(q * 100)}": round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)
             for q in qs}
    return picks | {"max": round(ordered[-1], 2), "n": len(ordered)}


def _at(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["at"]).timestamp()


def saga_figures(result: LoadResult) -> dict[str, Any]:
    """Throughput and latency of the sagas, from each order's timeline (order service clock)."""
    latencies: list[float] = []
    hops: dict[str, list[float]] = {}
    starts: list[float] = []
    ends: list[tuple[float, float]] = []  # (end time, latency ms)
    outcomes: Counter[str] = Counter()
    for order in result.orders.values():
        timeline = order.get("timeline") or []
        if not timeline:
            continue
        starts.append(_at(timeline[0]))
        if order["status"] not in TERMINAL:
            continue
        outcomes[order["status"]] += 1
        first, last = _at(timeline[0]), _at(timeline[-1])
        latencies.append(1000 * (last - first))
        ends.append((last, 1000 * (last - first)))
        for before, after in itertools.pairwise(timeline):
            hop = f"{before['status']}->{after['status']}"
            hops.setdefault(hop, []).append(1000 * (_at(after) - _at(before)))
    span = (max(e for e, _ in ends) - min(starts)) if ends else 0.0
    return {
        **_after_sending(result, ends),
        "completed": len(latencies),
        "completed_per_s": round(len(latencies) / span, 1) if span > 0 else None,
        "completion_window_s": round(span, 3),
        "latency_ms": percentiles(latencies),
        "hop_latency_ms": {hop: percentiles(v, (0.5, 0.99)) for hop, v in sorted(hops.items())},
        "outcomes": dict(outcomes),
        "series": _series(starts, ends),
    }


def _after_sending(result: LoadResult, ends: list[tuple[float, float]]) -> dict[str, Any]:
    """How fast the backlog drains once no more orders arrive: the saga pipeline on its own,
    without the HTTP intake competing for the order service (client clock vs server clock: both
    on this machine)."""
    if not result.placed or not ends:
        return {"completed_after_sending": 0, "completed_per_s_after_sending": None}
    stop = max(p.sent + p.http_ms / 1000 for p in result.placed)
    late = [end for end, _ in ends if end > stop]
    span = max(late) - stop if late else 0.0
    return {"completed_after_sending": len(late),
            "completed_per_s_after_sending": round(len(late) / span, 1) if span > 1 else None}


def _series(starts: list[float], ends: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Per second since the first order: accepted, completed, completion p50/p99 of that second."""
    if not starts:
        return []
    origin = min(starts)
    seconds = int(max(list(starts) + [e for e, _ in ends]) - origin) + 1
    accepted = Counter(int(s - origin) for s in starts)
    done: dict[int, list[float]] = {}
    for end, latency in ends:
        done.setdefault(int(end - origin), []).append(latency)
    return [{"t": t, "accepted": accepted.get(t, 0), "completed": len(done.get(t, [])),
             **{k: v for k, v in percentiles(done.get(t, []), (0.5, 0.99)).items()
                if k in ("p50", "p99")}}
            for t in range(seconds)]


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["started_at"].replace(":", "").replace("-", "")[:15]
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path, plot(report, out_dir / f"{stamp}.png")


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Latency over time and throughput; None when matplotlib is not installed (extra ``bench``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = report["saga"]["series"]
    t = [row["t"] for row in series]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(t, [row["p50"] for row in series], label="completion p50")
    top.plot(t, [row["p99"] for row in series], label="completion p99")
    top.set_ylabel("saga latency (ms)")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(t, [row["accepted"] for row in series], label="accepted/s")
    bottom.plot(t, [row["completed"] for row in series], label="completed/s")
    if ceiling := (report.get("ceiling") or {}).get("sagas_per_s"):
        bottom.axhline(ceiling, linestyle="--", color="grey", label="raw aio-pika ceiling")
    bottom.set_ylabel("orders per second")
    bottom.set_xlabel("seconds since the first order")
    bottom.legend()
    bottom.grid(alpha=0.3)
    figure.suptitle(f"saga-shop bench {report['started_at']} "
                    f"(efficiency {report.get('efficiency')})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

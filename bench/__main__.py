"""``python -m bench``: load the saga through the gateway, measure it against the machine's ceiling.

    python -m bench --orders 3000 --concurrency 32              # own isolated stack, closed loop
    python -m bench --rate 50 --duration 60 --orders 3000       # open loop at 50 orders/s
    python -m bench --url http://127.0.0.1:8080 --api-key dev-key-change-me --run-dir .run

Writes ``bench-results/<time>.json`` and ``.png``; docs/performance.md explains every field.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import load, procstat, raw_pipeline, report, stack
from bench.profile import Profiler

REPO = Path(__file__).resolve().parent.parent


class Progress:
    """A one-line progress bar on stderr (no dependency); silent when stderr is not a terminal.

    Redrawn at most every ``REDRAW_S`` (and at the start and end of a phase), not on every order:
    the benchmark shares the machine it measures."""

    REDRAW_S = 0.2

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.phase, self.done, self.total, self.begin = "", 0, 0, time.monotonic()
        self.drawn = self.begin

    def start(self, phase: str, total: int) -> None:
        self.phase, self.done, self.total, self.begin = phase, 0, total, time.monotonic()
        self._draw()

    def update(self, done: int | None = None) -> None:
        self.done = self.done + 1 if done is None else done
        if self.enabled and time.monotonic() - self.drawn >= self.REDRAW_S:
            self._draw()

    def _draw(self, end: str = "") -> None:
        if not self.enabled:
            return
        self.drawn = time.monotonic()
        share = self.done / self.total if self.total else 0.0
        bar = "#" * int(30 * share)
        elapsed = time.monotonic() - self.begin
        rate = self.done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r{self.phase:<10} [{bar:<30}] {self.done}/{self.total} "
                         f"{rate:7.1f}/s {elapsed:6.1f}s{end}")
        sys.stderr.flush()

    def finish(self) -> None:
        self._draw("\n")


def parse_mix(text: str) -> dict[str, float]:
    """``approve=8,decline=1,out_of_stock=1`` -> weights."""
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in load.KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r}; use {sorted(load.KINDS)}")
        mix[kind.strip()] = float(weight or 1)
    return mix


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=3000, help="orders at most (default 3000)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of sending at most (default 60)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="requests in flight (closed loop), or at most (with --rate)")
    parser.add_argument("--rate", type=float, default=None, help="open loop: orders per second")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("approve=8,decline=1,"
                                                                    "out_of_stock=1"))
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds to wait for the last sagas to end")
    parser.add_argument("--url", help="a running gateway instead of an own stack")
    parser.add_argument("--client-id", default=os.environ.get("BENCH_CLIENT_ID",
                                                             stack.CLIENT[0]),
                        help="with --url: the OAuth client the load runs as (an operator: "
                             "it restocks)")
    parser.add_argument("--client-secret", default=os.environ.get("BENCH_CLIENT_SECRET",
                                                                 stack.CLIENT[1]))
    parser.add_argument("--run-dir", type=Path, help="with --url: its run dir, for CPU figures")
    parser.add_argument("--replicas", type=int, default=1, help="own stack: replicas per service")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="own stack: an extra environment variable (a tuning knob)")
    parser.add_argument("--ceiling-sagas", type=int, default=3000,
                        help="sagas of the raw aio-pika ceiling run (0: skip it)")
    parser.add_argument("--ceiling-faststream", action="store_true",
                        help="also run the ceiling with FastStream relays (the framework's "
                        "own cost: ceiling.faststream, ceiling.faststream_ratio)")
    parser.add_argument("--ceiling-vhost", default=raw_pipeline.VHOST,
                        help="the vhost the ceiling runs on (re-created empty with this machine's "
                             "rabbitmqctl); '' runs it on the broker URL's own vhost as given")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--label", default="", help="a note kept in the report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="py-spy the services for this long from the start of the load")
    return parser.parse_args(argv)


async def drive(target: stack.Target, args: argparse.Namespace,
                progress: Progress) -> tuple[load.LoadResult, dict[str, Any]]:
    result = load.LoadResult()
    token = await load.fetch_token(target.url, *target.credentials)
    async with load.client_for(target.url, token, args.concurrency) as client:
        await load.restock(client, args.orders)
        meter = procstat.CpuMeter(stack.pid_groups(target.run_dir), {"bench": os.getpid()})
        profiler = Profiler(stack.pid_groups(target.run_dir), args.out / "profile",
                            args.profile)
        if args.profile:
            profiler.start()
        meter.start()
        begin = time.perf_counter()
        progress.start("placing", args.orders)
        await load.send(client, result, orders=args.orders, duration=args.duration,
                        concurrency=args.concurrency, rate=args.rate,
                        next_kind=load.mix_sequence(args.mix), tick=progress.update)
        progress.finish()
        progress.start("sagas", len(result.placed))
        await load.wait_terminal(client, result, timeout=args.drain_timeout,
                                 progress=progress.update)
        progress.finish()
        cpu = meter.stop(time.perf_counter() - begin)
        if args.profile:
            cpu["profile"] = profiler.stop()
        progress.start("reading", len(result.placed))
        await load.fetch_all(client, result)
        progress.finish()
    return result, cpu


def summarise(args: argparse.Namespace, started: datetime, result: load.LoadResult,
              cpu: dict[str, Any], ceiling: dict[str, Any] | None,
              load_before: list[float]) -> dict[str, Any]:
    saga = report.saga_figures(result)
    rate = ceiling["sagas_per_s"] if ceiling else None
    if saga["completed"]:
        # What one saga costs each process: robust to a busy machine, unlike the rates.
        per = {name: round(1000 * seconds / saga["completed"], 2)
               for name, seconds in cpu["cpu_seconds"].items()}
        cpu["ms_per_saga"] = {**per, "total": round(sum(per.values()), 2)}
        # CPU per saga against the raw pipeline's in the same run: the ratio the machine's
        # speed of the day divides out of (rates drift between runs, this much less).
        raw = ((ceiling or {}).get("cpu_ms_per_saga") or {}).get("total")
        if raw:
            cpu["vs_ceiling"] = round(cpu["ms_per_saga"]["total"] / raw, 2)
    completed = saga["completed_per_s"]
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "label": args.label,
        "parameters": {"orders": args.orders, "duration_s": args.duration,
                       "concurrency": args.concurrency, "rate": args.rate, "mix": args.mix,
                       "url": args.url, "replicas": None if args.url else args.replicas,
                       "set": args.set},
        "machine": {"host": platform.node(), "cores": os.cpu_count(),
                    "load_average_before": load_before,
                    "load_average_after": procstat.load_average(),
                    "busy_percent_during_load": cpu.get("machine_busy_percent")},
        "orders": {"placed": len(result.placed), "refused": result.refused,
                   "read": len(result.orders),
                   "terminal": saga["completed"], "unfinished": result.unfinished},
        "accepted_per_s": round(len(result.placed) / result.send_seconds, 1)
        if result.send_seconds else None,
        "completed_per_s": completed,
        "http_latency_ms": {kind: report.percentiles(values, (0.5, 0.99))
                            for kind, values in result.http_ms.items()},
        "saga": saga,
        "errors": dict(result.errors),
        "error_count": sum(result.errors.values()),
        "cpu": cpu,
        "ceiling": ceiling,
        "efficiency": round(completed / rate, 3) if completed and rate else None,
        "seconds": {"sending": round(result.send_seconds, 3),
                    "draining": round(result.drain_seconds, 3)},
    }


def run(args: argparse.Namespace, rabbitmq_url: str | None = None) -> dict[str, Any]:
    """One benchmark; ``rabbitmq_url`` is the broker (any vhost) the ceiling runs on."""
    started = datetime.now(UTC)
    load_before = procstat.load_average()
    progress = Progress(not args.quiet and sys.stderr.isatty())
    broker = rabbitmq_url or os.environ.get("BENCH_RABBITMQ_URL",
                                            "amqp://guest:guest@127.0.0.1:5672/")
    ceiling = None
    if args.ceiling_sagas:
        print(f"bench: ceiling, raw aio-pika, {args.ceiling_sagas} sagas", file=sys.stderr)
        ceiling = raw_pipeline.run(broker, args.ceiling_sagas, vhost=args.ceiling_vhost)
        if args.ceiling_faststream:
            print("bench: ceiling again, FastStream relays", file=sys.stderr)
            framework = raw_pipeline.run(broker, args.ceiling_sagas, vhost=args.ceiling_vhost,
                                         framework="faststream")
            ceiling["faststream"] = framework
            ceiling["faststream_ratio"] = (round(framework["sagas_per_s"] / ceiling["sagas_per_s"],
                                                 3) if ceiling["sagas_per_s"] else None)
    if args.url:
        target = stack.Target(args.url, (args.client_id, args.client_secret), args.run_dir,
                              broker)
        result, cpu = asyncio.run(drive(target, args, progress))
    else:
        extra = dict(item.split("=", 1) for item in args.set)
        run_dir = REPO / ".run" / "bench"
        with stack.own_stack(run_dir, replicas=args.replicas, extra=extra) as target:
            result, cpu = asyncio.run(drive(target, args, progress))
    return summarise(args, started, result, cpu, ceiling, load_before)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    figures = run(args)
    json_path, png_path = report.write(figures, args.out)
    saga = figures["saga"]
    print(f"bench: {figures['orders']['placed']} orders ({figures['orders']['refused']} refused "
          f"by admission control), accepted {figures['accepted_per_s']}/s,"
          f" completed {figures['completed_per_s']} sagas/s, ceiling "
          f"{(figures['ceiling'] or {}).get('sagas_per_s')}/s, efficiency "
          f"{figures['efficiency']}")
    print(f"bench: saga latency ms {saga['latency_ms']}; http place ms "
          f"{figures['http_latency_ms']['place']}")
    print(f"bench: errors {figures['errors'] or 'none'}; cpu % of a core "
          f"{figures['cpu']['cpu_percent_of_one_core']}; machine busy "
          f"{figures['machine']['busy_percent_during_load']}%")
    print(f"bench: cpu ms per saga {figures['cpu'].get('ms_per_saga')}")
    if "vs_ceiling" in figures["cpu"]:
        print(f"bench: cpu ms per saga of the raw pipeline "
              f"{figures['ceiling']['cpu_ms_per_saga']['total']}; the stack costs "
              f"{figures['cpu']['vs_ceiling']}x as much")
    print(f"bench: wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0 if figures["error_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

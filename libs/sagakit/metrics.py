"""The saga's Prometheus metrics, the same in every service, served at ``GET /metrics``.

The gateway serves each service's at ``/metrics/<service>``. Counters count what this process
did since it started (Prometheus' ``rate()`` and ``increase()`` handle restarts); gauges are
sampled: the outbox backlog by the relay, the dead-letter depth by :class:`sagakit.runtime.
Messaging`, and anything a service adds by the samplers it passes to :func:`add_metrics_route`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from sagakit import telemetry

EVENTS_PUBLISHED = Counter(
    "saga_events_published", "Events published to the broker and confirmed, by type", ["type"]
)
EVENTS_CONSUMED = Counter(
    "saga_events_consumed", "Deliveries handled (duplicates included), by event type", ["type"]
)
EVENTS_FAILED = Counter(
    "saga_events_failed",
    "Deliveries whose handler failed, by event type and what came next (retry or parked)",
    ["type", "outcome"],
)
OUTBOX_BACKLOG = Gauge(
    "saga_outbox_backlog", "Events committed but not yet published (sampled by the relay)"
)
DEAD_LETTERS = Gauge(
    "saga_dead_letters", "Messages parked in this service's dead-letter queue (sampled)"
)

Sampler = Callable[[], Awaitable[None]]


def add_metrics_route(app: FastAPI, *samplers: Sampler) -> None:
    """``GET /metrics`` in the Prometheus text format; ``samplers`` refresh gauges first."""

    @app.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        with telemetry.untraced():
            # A sampler that fails (its database is away) leaves its last values; the rest
            # is still worth a scrape.
            await asyncio.gather(*(sample() for sample in samplers), return_exceptions=True)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

"""The saga's Prometheus metrics, the same in every service, served at ``GET /metrics``.

The gateway serves each service's at ``/metrics/<service>`` (for a scraper on the host), and
the service itself at ``/api/v1/ops/<service>/metrics`` to operators only: the operator view
(gateway/site) draws its charts from that, with the same bearer token as the rest of it.
Counters count what this process did since it started (Prometheus' ``rate()`` and
``increase()`` handle restarts); gauges are sampled: the outbox backlog by the relay, the
dead-letter depth and the consumer lag by :class:`sagakit.runtime.Messaging`, and anything a
service adds by the samplers it passes to :func:`add_metrics_route`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from sagakit import telemetry
from sagakit.auth import allow

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
CONSUMER_LAG = Gauge(
    "saga_consumer_lag",
    "Messages waiting in this service's consumer queues, not yet delivered (sampled)",
    ["queue"],
)

Sampler = Callable[[], Awaitable[None]]


def add_metrics_route(app: FastAPI, service: str, *samplers: Sampler) -> None:
    """``GET /metrics`` and ``GET /api/v1/ops/<service>/metrics``, the same Prometheus text;
    ``samplers`` refresh gauges first."""

    async def saga_metrics() -> Response:
        with telemetry.untraced():
            # A sampler that fails (its database is away) leaves its last values; the rest
            # is still worth a scrape.
            await asyncio.gather(*(sample() for sample in samplers), return_exceptions=True)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", saga_metrics, include_in_schema=False)
    ops = APIRouter(prefix=f"/api/v1/ops/{service}", tags=["operations"])
    ops.add_api_route(
        "/metrics", saga_metrics, methods=["GET"], response_class=Response,
        summary="This replica's metrics (Prometheus text): what the operator view charts",
        responses={200: {"content": {"text/plain": {}}}}, **allow("ops"))
    app.include_router(ops)

"""The order service's own metrics, next to sagakit's: how long sagas take, where orders are."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from prometheus_client import Gauge, Histogram

from order import store
from order.domain import Status

SAGA_DURATION = Histogram(
    "saga_duration_seconds",
    "From an order's acceptance to its terminal status, by outcome",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
ORDERS = Gauge("saga_orders", "Orders by current status (counted at each scrape)", ["status"])


def saga_ended(outcome: Status, accepted_at: datetime) -> None:
    SAGA_DURATION.labels(outcome).observe((datetime.now(UTC) - accepted_at).total_seconds())


async def count_orders(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        counts = await store.count_by_status(conn)
    for status in Status:
        ORDERS.labels(status).set(counts.get(status, 0))

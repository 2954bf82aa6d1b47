"""Composition root of the payment service: settings, pool, broker, relay, HTTP app, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from payment import api, handlers
from payment.settings import PaymentSettings
from sagakit import postgres, telemetry
from sagakit.deadletters import dead_letters_router
from sagakit.metrics import add_metrics_route
from sagakit.outbox import PostgresOutboxRelay
from sagakit.runtime import Messaging, add_asyncapi_route
from sagakit.web import create_app

SERVICE = "payment"
settings = PaymentSettings()
messaging = Messaging(SERVICE, settings, handlers.QUEUES)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    telemetry.setup(SERVICE)
    pool = await postgres.create_pool(settings.database_url, max_size=settings.db_pool_size)
    await postgres.migrate(pool, [Path(__file__).with_name("migrations")])
    app.state.pool, app.state.settings = pool, settings
    relay = PostgresOutboxRelay(pool, settings.database_url, messaging.publisher)
    await messaging.start()
    await relay.start()
    try:
        yield
    finally:
        await messaging.stop_consuming()  # first, letting in-flight handlers finish
        await relay.stop()  # then publish what they committed
        await messaging.close()
        await pool.close()
        telemetry.shutdown()  # last: flush the spans and logs of everything above


async def _database_ready() -> bool:
    async with app.state.pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT 1"))


app = create_app(
    SERVICE,
    title="saga-shop payment service",
    description="Tokenizes cards and keeps the payments ledger. Orders are charged, refunded or "
    "voided by events from the order service; an order's ledger is GET /api/v1/payments"
    "?order_id={id}. Card numbers and cvcs are never stored.",
    lifespan=lifespan,
    readiness=lambda app: {"database": _database_ready, "broker": messaging.ready},
)
app.include_router(api.router)
app.include_router(dead_letters_router(SERVICE, settings.rabbitmq_url))
handlers.register(messaging, lambda: app.state.pool)
add_asyncapi_route(app, SERVICE, messaging)
add_metrics_route(app)

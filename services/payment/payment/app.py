"""Composition root of the payment service: settings, broker, handlers, HTTP app; the lifecycle
(pool, migrations, outbox relay, telemetry) is sagakit.runtime.postgres_lifespan."""

from __future__ import annotations

from pathlib import Path

from payment import api, handlers
from payment.settings import PaymentSettings
from sagakit.deadletters import dead_letters_router
from sagakit.metrics import add_metrics_route
from sagakit.runtime import Messaging, add_asyncapi_route, database_ready, postgres_lifespan
from sagakit.web import create_app

SERVICE = "payment"
settings = PaymentSettings()
messaging = Messaging(SERVICE, settings, handlers.QUEUES)


app = create_app(
    SERVICE,
    title="saga-shop payment service",
    description="Tokenizes cards and keeps the payments ledger. Orders are charged, refunded or "
    "voided by events from the order service; an order's ledger is GET /api/v1/payments"
    "?order_id={id}. Card numbers and cvcs are never stored.",
    lifespan=postgres_lifespan(SERVICE, settings, messaging,
                               Path(__file__).with_name("migrations")),
    readiness=lambda app: {"database": database_ready(app), "broker": messaging.ready},
)
app.include_router(api.router)
app.include_router(dead_letters_router(SERVICE, settings.rabbitmq_url))
handlers.register(messaging, lambda: app.state.pool)
add_asyncapi_route(app, SERVICE, messaging)
add_metrics_route(app)

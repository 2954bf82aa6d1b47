"""Composition root of the order service: settings, broker, handlers, HTTP app; the lifecycle
(pool, migrations, outbox relay, telemetry) is sagakit.runtime.postgres_lifespan."""

from __future__ import annotations

from pathlib import Path

from order import api, handlers, metrics
from order.settings import OrderSettings
from sagakit.deadletters import dead_letters_router, unrouted_router
from sagakit.metrics import add_metrics_route
from sagakit.runtime import Messaging, add_asyncapi_route, database_ready, postgres_lifespan
from sagakit.web import create_app

SERVICE = "order"
settings = OrderSettings()
messaging = Messaging(SERVICE, settings, handlers.QUEUES)


app = create_app(
    SERVICE,
    title="saga-shop order service",
    description="Places orders and runs the order saga. Orders are accepted at once (202) and "
    "move through payment and the kitchen by events; follow one with GET /api/v1/orders/{id}.",
    lifespan=postgres_lifespan(SERVICE, settings, messaging,
                               Path(__file__).with_name("migrations")),
    readiness=lambda app: {"database": database_ready(app), "broker": messaging.ready},
)
app.include_router(api.router)
app.include_router(dead_letters_router(SERVICE, settings.rabbitmq_url))
app.include_router(unrouted_router(settings.rabbitmq_url))
handlers.register(messaging, lambda: app.state.pool)
add_asyncapi_route(app, SERVICE, messaging)
add_metrics_route(app, lambda: metrics.count_orders(app.state.pool))

"""Composition root of the order service: settings, broker, handlers, HTTP app; the lifecycle
(pool, migrations, outbox relay, telemetry) is sagakit.runtime.postgres_lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from fastapi import FastAPI

from order import (
    api,
    customer_data,
    handlers,
    metrics,
    service,
    store,
    stream_api,
    webhooks,
    webhooks_api,
)
from order.callbacks import CallbackPolicy
from order.domain import WAITING_TO_START, OrderFaults
from order.settings import OrderSettings
from sagakit.admission import Admission
from sagakit.archive import archive_router
from sagakit.audit import audit_router
from sagakit.deadletters import dead_letters_router, unrouted_router
from sagakit.faults import PostgresFaultStore, faults_router
from sagakit.metrics import add_metrics_route
from sagakit.notifications import NotificationFanout
from sagakit.runtime import (
    Messaging,
    add_asyncapi_route,
    database_ready,
    every,
    postgres_archive,
    postgres_lifespan,
)
from sagakit.web import create_app

SERVICE = "order"


def build(settings: OrderSettings | None = None) -> FastAPI:
    """The order service, built from its settings (from the environment when none are
    given). Nothing is built at import time, so a test can build one with settings of its own;
    ``python -m order`` serves ``build()`` (uvicorn's factory mode)."""
    settings = settings or OrderSettings()
    messaging = Messaging(SERVICE, settings, handlers.QUEUES,
                          service.PUBLISHES + customer_data.PUBLISHES)

    def _pool() -> asyncpg.Pool:
        pool: asyncpg.Pool = app.state.pool
        return pool

    faults = PostgresFaultStore(_pool, OrderFaults().model_dump())
    callback_policy = CallbackPolicy.from_setting(settings.webhook_allowed_hosts)

    async def _waiting_orders() -> int:
        async with _pool().acquire() as conn:
            return await store.count_waiting(conn, WAITING_TO_START)

    admission = Admission(_waiting_orders, bound=settings.admission_max_waiting,
                          retry_after_seconds=settings.admission_retry_after_seconds,
                          what="orders")

    saga_lifespan = postgres_lifespan(SERVICE, settings, messaging,
                                      Path(__file__).with_name("migrations"),
                                      relay_held_while=faults.condition("relay_paused"),
                                      retention=customer_data.anonymise_older_than)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The saga's lifecycle, and inside it the LISTEN connection that wakes every live
        follower of an order (GET /api/v1/orders/{id}/events) of this process, its webhook
        sender (woken by this process's writes, sagakit.units), the sweep that erases customers
        whose last saga has ended (order.customer_data), and admission control's sample of the
        orders waiting to start (sagakit.admission)."""
        async with saga_lifespan(app), every(
            settings.sweep_seconds, lambda: customer_data.erase_pending(app.state.pool), "erasures",
        ), admission.sampling():
            app.state.admission = admission
            feed = NotificationFanout(settings.database_dsn, store.TIMELINE_CHANNEL,
                                      settings.max_event_streams)
            await feed.start()
            app.state.timeline_feed = feed
            app.state.callback_policy = callback_policy
            sender = webhooks.WebhookSender(app.state.pool, callback_policy,
                                            webhooks.SenderSettings(
                                                max_attempts=settings.webhook_max_attempts,
                                                backoff_seconds=settings.webhook_backoff_seconds,
                                                backoff_max_seconds=settings.webhook_backoff_max_seconds,
                                                timeout_seconds=settings.webhook_timeout_seconds))
            await sender.start()
            try:
                yield
            finally:
                await sender.stop()
                await feed.stop()

    app = create_app(
        SERVICE,
        title="saga-shop order service",
        description="Places orders and runs the order saga. Orders are accepted at once (202) and "
        "move through payment and the kitchen by events; follow one with GET /api/v1/orders/{id}, "
        "or live with GET /api/v1/orders/{id}/events.",
        lifespan=lifespan,
        readiness=lambda app: {"database": database_ready(app), "broker": messaging.ready},
    )
    app.include_router(webhooks_api.router)  # first: its paths are no {order_id}
    app.include_router(faults_router(
        "/api/v1/orders", OrderFaults, lambda request: faults,
        "The order service's fault switch: `relay_paused` stops its outbox relay (every "
        "replica's), so new orders stay pending_payment with their events in the outbox until it "
        "is resumed. Off by default; every change is in /faults/history."))
    app.include_router(api.router)
    app.include_router(stream_api.router)
    app.include_router(dead_letters_router(SERVICE, settings.rabbitmq_dsn))
    app.include_router(audit_router(SERVICE))
    app.include_router(archive_router(SERVICE, postgres_archive))
    app.include_router(unrouted_router(settings.rabbitmq_dsn))
    handlers.router.include(messaging, app.state)  # its pool: opened by the lifespan
    add_asyncapi_route(app, SERVICE, messaging)
    add_metrics_route(app, SERVICE, lambda: metrics.count_orders(app.state.pool))
    return app

"""Composition root of the payment service: settings, broker, handlers, HTTP app; the lifecycle
(pool, migrations, outbox relay, telemetry) is sagakit.runtime.postgres_lifespan."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from fastapi import FastAPI

from payment import api, customer_data, handlers, service
from payment.domain import PaymentFaults
from payment.settings import PaymentSettings
from sagakit.archive import archive_router
from sagakit.audit import audit_router
from sagakit.deadletters import dead_letters_router
from sagakit.faults import PostgresFaultStore, faults_router
from sagakit.metrics import add_metrics_route
from sagakit.runtime import (
    Messaging,
    add_asyncapi_route,
    database_ready,
    postgres_archive,
    postgres_lifespan,
)
from sagakit.web import create_app

SERVICE = "payment"


def build(settings: PaymentSettings | None = None) -> FastAPI:
    """The payment service, built from its settings (from the environment when none are
    given). Nothing is built at import time, so a test can build one with settings of its own;
    ``python -m payment`` serves ``build()`` (uvicorn's factory mode)."""
    settings = settings or PaymentSettings()
    messaging = Messaging(SERVICE, settings, handlers.QUEUES,
                          service.PUBLISHES + customer_data.PUBLISHES)

    def _pool() -> asyncpg.Pool:
        pool: asyncpg.Pool = app.state.pool
        return pool

    faults = PostgresFaultStore(_pool, PaymentFaults().model_dump())

    app = create_app(
        SERVICE,
        title="saga-shop payment service",
        description="Tokenizes cards and keeps the payments ledger. Orders are charged, refunded "
        "or voided by events from the order service; an order's ledger is GET /api/v1/payments"
        "?order_id={id}. Card numbers and cvcs are never stored.",
        lifespan=postgres_lifespan(SERVICE, settings, messaging,
                                   Path(__file__).with_name("migrations"),
                                   retention=customer_data.anonymise_older_than),
        readiness=lambda app: {"database": database_ready(app), "broker": messaging.ready},
    )
    app.include_router(faults_router(
        "/api/v1/payments", PaymentFaults, lambda request: faults,
        "Payment's fault switches: `decline_rate` declines that share of charges as an ordinary "
        "decline (reason `fault: decline_rate`, so the order is cancelled), `latency_ms` delays "
        "every charge decision. Off (0) by default; every change is in /faults/history."))
    app.include_router(api.router)
    app.include_router(dead_letters_router(SERVICE, settings.rabbitmq_dsn))
    app.include_router(audit_router(SERVICE))
    app.include_router(archive_router(SERVICE, postgres_archive))
    app.state.faults = faults
    handlers.router.include(messaging, app.state)  # its pool: opened by the lifespan
    add_asyncapi_route(app, SERVICE, messaging)
    add_metrics_route(app, SERVICE)
    return app

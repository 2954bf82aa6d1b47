"""Composition root of the production service: settings, Redis, broker, relay, kitchen, HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from production import api, customer_data, handlers, service
from production.domain import ProductionFaults
from production.kitchen import KitchenLine
from production.settings import ProductionSettings
from production.store import ProductionStore
from sagakit import telemetry
from sagakit.archive import RedisArchive, archive_router
from sagakit.audit import RedisAuditLog, audit_router
from sagakit.deadletters import dead_letters_router
from sagakit.faults import RedisFaultStore, faults_router
from sagakit.metrics import add_metrics_route
from sagakit.outbox import RedisStreamOutboxRelay
from sagakit.runtime import Messaging, add_asyncapi_route, running
from sagakit.web import create_app

SERVICE = "production"


def build(settings: ProductionSettings | None = None) -> FastAPI:
    """The production service, built from its settings (from the environment when none are
    given). Nothing is built at import time, so a test can build one with settings of its own;
    ``python -m production`` serves ``build()`` (uvicorn's factory mode)."""
    settings = settings or ProductionSettings()
    messaging = Messaging(SERVICE, settings, handlers.QUEUES,
                          service.PUBLISHES + customer_data.PUBLISHES)
    log = logging.getLogger("production.app")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        telemetry.setup(SERVICE)
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        store = ProductionStore(redis, inbox_ttl_seconds=settings.inbox_ttl())
        if seeded := await store.seed_stock(settings.seed_stock):
            log.info("stocked %s", ", ".join(seeded))
        faults = RedisFaultStore(redis, ProductionFaults().model_dump())
        archive = RedisArchive(redis, consumer=SERVICE,
                               retention_days=settings.archive_retention_days)
        app.state.store, app.state.settings = store, settings
        app.state.faults, app.state.archive = faults, archive
        app.state.audit_log = RedisAuditLog(redis, SERVICE)
        # Its inbox is marked by Lua scripts: consumed events are archived after the handler.
        messaging.retries.on_consumed = archive.record_consumed
        relay = RedisStreamOutboxRelay(redis, messaging.publisher, archive=archive)
        kitchen = KitchenLine(
            store, cooks=settings.kitchen_workers, preparation_seconds=settings.preparation_seconds,
            reclaim_seconds=settings.kitchen_reclaim_seconds, faults=faults,
        )
        try:
            # On stop, the cooks finish the ticket in hand if they can before the relay's last
            # flush publishes what they committed (sagakit.runtime.running).
            async with running(messaging, relay, kitchen):
                yield
        finally:
            await redis.aclose()
            telemetry.shutdown()  # last: flush the spans and logs of everything above

    async def _redis_ready() -> bool:
        store: ProductionStore = app.state.store
        return await store.ping()

    app = create_app(
        SERVICE,
        title="saga-shop production service",
        description="The kitchen line: reserves stock for paid orders, queues their tickets and "
        "cooks them, announcing each step as an event. The kitchen view lists the queue.",
        lifespan=lifespan,
        readiness=lambda app: {"redis": _redis_ready, "broker": messaging.ready},
    )
    app.include_router(faults_router(
        "/api/v1/production", ProductionFaults, lambda request: request.app.state.faults,
        "The kitchen's fault switches: `failure_rate` reports that share of paid orders as ones "
        "the kitchen cannot make (reason `fault: failure_rate`: the order is refunded), "
        "`slowness_ms` is added to every ticket's preparation. Off (0) by default; every change "
        "is in /faults/history."))
    app.include_router(api.router)
    app.include_router(dead_letters_router(SERVICE, settings.rabbitmq_dsn))
    app.include_router(audit_router(SERVICE))
    app.include_router(archive_router(SERVICE, lambda request: request.app.state.archive))
    handlers.router.include(messaging, app.state)  # store, faults: set by the lifespan
    add_asyncapi_route(app, SERVICE, messaging)
    add_metrics_route(app, SERVICE)
    return app

"""A service's link to the saga (broker, topology, retries, publisher) and its entry point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitMessage, RabbitQueue
from faststream.rabbit.subscriber import RabbitSubscriber
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from sagakit import logs, metrics, postgres, telemetry
from sagakit.archive import PostgresArchive
from sagakit.audit import PostgresAuditLog
from sagakit.consuming import RetryPolicy, event_meta
from sagakit.docs import asyncapi_html, docs_paths
from sagakit.envelope import EventMeta
from sagakit.events import CustomerDataRequested, CustomerErasureRequested, Event, EventType
from sagakit.outbox import EventPublisher, PostgresOutboxRelay
from sagakit.settings import ServiceSettings
from sagakit.topology import EVENTS, ConsumerQueue, Topology, dead_letter_queue

# How often the depth of the service's dead-letter and consumer queues is sampled for /metrics.
QUEUE_SAMPLE_SECONDS = 5.0


Body = TypeVar("Body", bound=BaseModel)
# A consumer: one coroutine taking the delivery's body, validated into its model (an Event).
Handler: TypeAlias = Callable[[Body], Awaitable[None]]
# Which deliveries a handler takes (:func:`of_type`): awaited with each incoming message.
MessageFilter: TypeAlias = Callable[[RabbitMessage], Awaitable[bool]]


class Registers(Protocol):
    """The decorator ``@subscription(filter=...)`` gives: it registers the handler and returns
    it unchanged, so the handler keeps its own type (``(OrderCreated) -> Awaitable[None]``)."""

    def __call__(self, handler: Handler[Body], /) -> Handler[Body]: ...


class Subscription:
    """The subscriber on one consumer queue: one handler per event type, each chosen by its
    filter. A typed face on FastStream's subscriber, whose decorator mypy cannot see through."""

    def __init__(self, subscriber: RabbitSubscriber) -> None:
        self._subscriber = subscriber

    def __call__(self, *, filter: MessageFilter) -> Registers:
        def register(handler: Handler[Body]) -> Handler[Body]:
            self._subscriber(handler, filter=filter)
            return handler

        return register


class Messaging:
    """Everything a service needs to take part in the saga over RabbitMQ."""

    def __init__(
        self, service: str, settings: ServiceSettings, queues: Sequence[ConsumerQueue],
        publishes: Sequence[type[Event]] = (),
    ) -> None:
        self.service = service
        self.broker = RabbitBroker(
            settings.rabbitmq_dsn,
            app_id=service,
            graceful_timeout=15.0,
            default_channel=Channel(prefetch_count=settings.prefetch),
            logger=logging.getLogger(f"{service}.broker"),
            log_level=logging.DEBUG,
        )
        self.queues = tuple(queues)
        self.topology = Topology(service, queues, settings.retry_delays_ms)
        self.retries = RetryPolicy(self.broker, service, settings.retry_delays_ms,
                                   settings.dead_letter_retention_days * 86_400)
        self.broker.add_middleware(self.retries.middleware())
        self.publisher = EventPublisher(self.broker)
        self._document_publishers(publishes)
        self._sampler: asyncio.Task[None] | None = None

    def _document_publishers(self, publishes: Sequence[type[Event]]) -> None:
        """Put the events this service publishes into its AsyncAPI document.

        They go out through the outbox relay (:class:`EventPublisher`), not through a FastStream
        publisher object, so FastStream cannot see them; a declared publisher per event type
        makes the document show both halves of the service's contract. It publishes nothing:
        at start it only declares ``saga.events`` again, as the topology already did.
        """
        for event in publishes:
            self.broker.publisher(
                exchange=EVENTS, routing_key=str(event.type), schema=event, persist=True,
                title=str(event.type), description=(event.__doc__ or "").strip(),
            )

    def subscriber(self, queue: ConsumerQueue, description: str) -> Subscription:
        """A subscriber on ``queue``; register one handler per event type with
        ``@subscription(filter=of_type(...))``."""
        return Subscription(self.broker.subscriber(
            queue.declaration(),
            ack_policy=AckPolicy.NACK_ON_ERROR,  # ack after commit; nack only if rerouting failed
            description=description,
        ))

    async def start(self) -> None:
        await self.broker.connect()
        await self.topology.declare(self.broker)
        await self.broker.start()
        self._sampler = asyncio.create_task(self._sample_queues(), name="queue-depths")

    async def _depth(self, name: str) -> int:
        """Messages ready in a queue: a passive declare answers with its depth."""
        queue = await self.broker.declare_queue(RabbitQueue(name, declare=False))
        return (await queue.declare()).message_count or 0

    async def _sample_queues(self) -> None:
        """Keep the dead-letter and consumer-lag gauges current.

        Lag is what waits in each consumer queue, not yet delivered: the broker's own count,
        the same for every replica (they share the queue), so no offset bookkeeping is needed.
        """
        while True:
            with contextlib.suppress(Exception):  # the broker is away: keep the last values
                metrics.DEAD_LETTERS.set(await self._depth(dead_letter_queue(self.service).name))
                for consumer in self.queues:
                    metrics.CONSUMER_LAG.labels(consumer.name).set(
                        await self._depth(consumer.name))
            await asyncio.sleep(QUEUE_SAMPLE_SECONDS)

    async def stop_consuming(self) -> None:
        """Take no more deliveries; in-flight handlers get ``graceful_timeout`` to finish.

        The connection stays open, so the outbox relay can still flush what they committed.
        """
        for subscriber in self.broker.subscribers:
            await subscriber.stop()

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await self.broker.stop()

    async def ready(self) -> bool:
        return await self.broker.ping(timeout=1.0)

    def asyncapi(self, title: str) -> dict[str, Any]:
        spec = AsyncAPI(self.broker, title=title, version="1.0.0", schema_version="3.0.0")
        return spec.to_specification().to_jsonable()  # type: ignore[no-any-return]


__all__ = [
    "Handler",
    "MessageFilter",
    "Messaging",
    "Registers",
    "Subscription",
    "add_asyncapi_route",
    "customer_queue",
    "database_ready",
    "event_meta",
    "every",
    "of_type",
    "postgres_archive",
    "postgres_lifespan",
    "serve",
    "subscribe_customer_data",
]


Exports = Callable[[CustomerDataRequested, EventMeta], Awaitable[None]]
Erases = Callable[[CustomerErasureRequested, EventMeta], Awaitable[None]]


def customer_queue(service: str) -> ConsumerQueue:
    """The queue on which ``service`` takes the identity's requests about a customer's data."""
    return ConsumerQueue(service, "identity",
                         (EventType.CUSTOMER_DATA_REQUESTED, EventType.CUSTOMER_ERASURE_REQUESTED))


def subscribe_customer_data(messaging: Messaging, service: str, *, export: Exports,
                            erase: Erases) -> None:
    """Answer the identity's requests: ``export`` announces the service's part of a customer's
    data (``<service>.customer_data``), ``erase`` anonymises it (``<service>.customer_erased``).
    Every service holding data about customers takes part the same way."""
    customers = messaging.subscriber(customer_queue(service),
                                     "A customer's data: export, erasure")

    @customers(filter=of_type(EventType.CUSTOMER_DATA_REQUESTED))
    async def on_data_requested(event: CustomerDataRequested) -> None:
        await export(event, event_meta())

    @customers(filter=of_type(EventType.CUSTOMER_ERASURE_REQUESTED))
    async def on_erasure_requested(event: CustomerErasureRequested) -> None:
        await erase(event, event_meta())


def of_type(event_type: str) -> MessageFilter:
    """A FastStream filter routing a delivery to the handler of its CloudEvents type.

    A coroutine function on purpose: FastStream runs a plain function filter in a worker thread
    (anyio's ``run_in_threadpool``), a thread hop per handler tried for every delivery.
    """

    async def matches(message: RabbitMessage) -> bool:
        return bool(message.headers.get("ce-type") == event_type)

    matches.__name__ = f"of_type_{event_type.replace('.', '_')}"
    return matches


def add_asyncapi_route(app: FastAPI, service: str, messaging: Messaging) -> None:
    paths = docs_paths(service)

    @app.get(paths["asyncapi"], tags=["docs"], summary="AsyncAPI of the events",
             openapi_extra={"security": []})
    async def asyncapi() -> dict[str, Any]:
        return messaging.asyncapi(f"{service} service events")

    @app.get(paths["asyncapi_html"], tags=["docs"], response_class=HTMLResponse,
             summary="The AsyncAPI document as a page: what the service consumes and publishes",
             openapi_extra={"security": []})
    async def asyncapi_page() -> HTMLResponse:
        spec = messaging.asyncapi(f"{service} service events")
        return HTMLResponse(asyncapi_html(spec, paths["asyncapi"]))


def serve(factory: str, settings: ServiceSettings, service: str) -> None:
    """``python -m <service>``: the one entry point, the same in native and compose mode.

    ``factory`` ("<module>:build") is the service's composition root, called by uvicorn once
    the process is configured: nothing is built at import time."""
    logs.configure(service, settings.log_level)
    uvicorn.run(
        factory,
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=20,
        # Longer than nginx keeps an idle upstream connection (60 s): otherwise uvicorn may close
        # one just as nginx sends a POST on it, a 502 nginx must not retry.
        timeout_keep_alive=75,
        proxy_headers=True,
    )


Retention = Callable[[asyncpg.Pool, int], Awaitable[object]]


def retention_sweep(pool: asyncpg.Pool, settings: Any,
                    retention: Retention | None) -> Callable[[], Awaitable[None]]:
    """One run of a PostgreSQL-backed service's retention sweep: its own personal data older
    than ``PERSONAL_DATA_RETENTION_DAYS`` (``retention(pool, days)``), and its event archive
    older than ``ARCHIVE_RETENTION_DAYS``."""
    log = logging.getLogger("sagakit.retention")

    async def sweep() -> None:
        pruned = await PostgresArchive(pool).prune(settings.archive_retention_days)
        if retention is not None:
            await retention(pool, settings.personal_data_retention_days)
        if pruned:
            log.info("pruned %d archived events past the retention", pruned)

    return sweep


def postgres_lifespan(
    service: str, settings: Any, messaging: Messaging, migrations: Path,
    relay_paused: Callable[[], Awaitable[bool]] | None = None,
    retention: Retention | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifecycle of a PostgreSQL-backed service (order, payment), in the order that loses
    nothing: migrate, start consuming and relaying, and the retention sweep; on stop, stop
    consuming (in-flight handlers finish), flush the outbox, then close the connections and
    flush telemetry. ``relay_paused``: see :class:`sagakit.outbox.PostgresOutboxRelay`."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        telemetry.setup(service)
        pool = await postgres.create_pool(settings.database_dsn, max_size=settings.db_pool_size)
        await postgres.migrate(pool, [migrations])
        app.state.pool, app.state.settings = pool, settings
        app.state.audit_log = PostgresAuditLog(pool, service)
        relay = PostgresOutboxRelay(pool, settings.database_dsn, messaging.publisher,
                                    relay_paused)
        await messaging.start()
        await relay.start()
        try:
            async with every(settings.retention_sweep_seconds,
                             retention_sweep(pool, settings, retention), "retention"):
                yield
        finally:
            await messaging.stop_consuming()  # first, letting in-flight handlers finish
            await relay.stop()  # then publish what they committed
            await messaging.close()
            await pool.close()
            telemetry.shutdown()  # last: flush the spans and logs of everything above

    return lifespan


def postgres_archive(request: Request) -> PostgresArchive:
    """A PostgreSQL-backed service's event archive (:func:`sagakit.archive.archive_router`)."""
    return PostgresArchive(request.app.state.pool)


@asynccontextmanager
async def every(seconds: float, work: Callable[[], Awaitable[object]],
                name: str) -> AsyncIterator[None]:
    """Run ``work`` every ``seconds`` while the block runs (a sweeper); a failed run is logged
    and the next one tries again, so a database away for a while stops nothing for good."""
    log = logging.getLogger(f"sagakit.{name}")

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                with telemetry.untraced():
                    await work()
            except Exception as exc:
                log.warning("%s failed: %s; trying again in %.0fs", name, exc, seconds)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def database_ready(app: FastAPI) -> Callable[[], Awaitable[bool]]:
    """A readiness check: the service's own database answers."""

    async def check() -> bool:
        async with app.state.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1"))

    return check

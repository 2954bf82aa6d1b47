"""A service's link to the saga (broker, topology, retries, publisher) and its entry point."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.specification import AsyncAPI
from uvicorn.config import STARTUP_FAILURE

from sagakit import logs, metrics, postgres, telemetry, units
from sagakit.archive import PostgresArchive
from sagakit.audit import PostgresAuditLog
from sagakit.consuming import LOST_ACKS, RetryPolicy, event_meta, is_outage
from sagakit.deadletters import ParkedQueue
from sagakit.docs import asyncapi_html, docs_paths
from sagakit.events import Event
from sagakit.outbox import EventPublisher, PostgresOutboxRelay
from sagakit.routing import Subscription
from sagakit.settings import ServiceSettings
from sagakit.topology import EVENTS, ConsumerQueue, Topology, dead_letter_queue
from sagakit.waits import cancelled
from sagakit.web import JsonErrorsHttpProtocol

# How often the depth of the service's dead-letter and consumer queues is sampled for /metrics.
QUEUE_SAMPLE_SECONDS = 5.0
# How often a replica discards dead letters parked longer than the retention.
DEAD_LETTER_SWEEP_SECONDS = 3600.0


class Messaging:
    """Everything a service needs to take part in the saga over RabbitMQ."""

    def __init__(
        self, service: str, settings: ServiceSettings, queues: Sequence[ConsumerQueue],
        publishes: Sequence[type[Event]] = (),
    ) -> None:
        self.service = service
        broker_log = logging.getLogger(f"{service}.broker")
        broker_log.addFilter(LOST_ACKS)  # once: a logger keeps a filter once
        self.broker = RabbitBroker(
            settings.rabbitmq_dsn,
            app_id=service,
            graceful_timeout=15.0,
            default_channel=Channel(prefetch_count=settings.prefetch),
            logger=broker_log,
            log_level=logging.DEBUG,
        )
        self.queues = tuple(queues)
        self.rabbitmq_url = settings.rabbitmq_dsn
        self.dead_letter_retention_seconds = settings.dead_letter_retention_days * 86_400
        self.topology = Topology(service, queues, settings.retry_delays_ms)
        self.retries = RetryPolicy(self.broker, service, settings.retry_delays_ms,
                                   self.dead_letter_retention_seconds, self.queues)
        self.broker.add_middleware(self.retries.middleware())
        self.publisher = EventPublisher(self.broker)
        self._document_publishers(publishes)
        self._sampling = contextlib.AsyncExitStack()

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
        await self._sampling.enter_async_context(
            every(QUEUE_SAMPLE_SECONDS, self._sample_queues, "queue-depths", at_once=True))
        await self._sampling.enter_async_context(
            every(DEAD_LETTER_SWEEP_SECONDS, self._forget_old_dead_letters,
                  "dead-letter-retention"))

    async def _forget_old_dead_letters(self) -> None:
        """Retention of parked messages (sagakit.deadletters): whatever was parked longer ago
        than ``DEAD_LETTER_RETENTION_DAYS``, the broker's own parkings too, is discarded."""
        parked = ParkedQueue(self.rabbitmq_url, dead_letter_queue(self.service).name)
        if gone := await parked.forget_older_than(self.dead_letter_retention_seconds):
            logging.getLogger("sagakit.retention").info(
                "discarded %d dead letters parked longer than the retention", gone)

    async def _depth(self, name: str) -> int:
        """Messages ready in a queue: a passive declare answers with its depth."""
        queue = await self.broker.declare_queue(RabbitQueue(name, declare=False))
        return (await queue.declare()).message_count or 0

    async def _sample_queues(self) -> None:
        """Keep the dead-letter and consumer-lag gauges current (while the broker is away, they
        keep their last values).

        Lag is what waits in each consumer queue, not yet delivered: the broker's own count,
        the same for every replica (they share the queue), so no offset bookkeeping is needed.
        """
        metrics.DEAD_LETTERS.set(await self._depth(dead_letter_queue(self.service).name))
        for consumer in self.queues:
            metrics.CONSUMER_LAG.labels(consumer.name).set(await self._depth(consumer.name))

    async def stop_consuming(self) -> None:
        """Take no more deliveries; in-flight handlers get ``graceful_timeout`` to finish.

        The connection stays open, so the outbox relay can still flush what they committed.
        """
        for subscriber in self.broker.subscribers:
            await subscriber.stop()

    async def close(self) -> None:
        await self._sampling.aclose()
        await self.broker.stop()

    async def ready(self) -> bool:
        return await self.broker.ping(timeout=1.0)

    def asyncapi(self, title: str) -> dict[str, Any]:
        spec = AsyncAPI(self.broker, title=title, version="1.0.0", schema_version="3.0.0")
        return spec.to_specification().to_jsonable()  # type: ignore[no-any-return]


__all__ = [
    "Messaging",
    "add_asyncapi_route",
    "database_ready",
    "event_meta",
    "every",
    "postgres_archive",
    "postgres_lifespan",
    "running",
    "serve",
]


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


# Python's cyclic garbage collector runs its youngest generation every 700 allocations net of
# frees, and every collection walks all the objects of that generation. An asyncio service
# allocates a future, a task or a frame per message, most of them freed by reference counting
# anyway: at the default thresholds the collector cost ~5 % of the saga's CPU (~9 % of the order
# service's; docs/performance.md, round four). A youngest generation of 50 000 objects makes
# collections rare; what is left at start-up is frozen (:func:`settle_heap`) so no collection
# walks it again. Reference counting still frees everything without a cycle at once; only
# cyclic garbage waits longer (with whatever it holds: an exception and its frames, say).
GC_THRESHOLDS = (50_000, 20, 100)
# Set by serve(): this process is a service's own (not a test's), so its heap is its to settle.
_own_process = False


def settle_heap() -> None:
    """Once a service has started: collect what start-up left, and exempt the rest (modules,
    the app, pools, settings: alive until exit) from every later collection (``gc.freeze``).
    Only in a process :func:`serve` started: a test process starts many services in turn."""
    if _own_process:
        gc.collect()
        gc.freeze()


# The stop's own time limits, one after the other: uvicorn's for open requests (20 s), then in
# the lifespan FastStream's for deliveries in hand (15 s) and the outbox relay's flush (5 s).
# A stop still running past their sum waits on something that has no limit: it logs every task
# and where each waits. compose's stop_grace_period and supervisord's stopwaitsecs are longer.
HTTP_DRAIN_SECONDS = 20
STOP_REPORT_SECONDS = 45.0
_log = logging.getLogger("sagakit.runtime")


class _Server(uvicorn.Server):
    """uvicorn's server, saying when a stop signal arrives and, if the stop then takes too long,
    what it waits on.

    uvicorn logs nothing until its main loop notices the signal, and nothing while the
    lifespan's shutdown runs: a stop that hangs would leave no trace of where. The handler runs
    in the main thread between two bytecodes, possibly inside a logging call: it only queues a
    callback for the event loop (``call_soon_threadsafe`` is safe there), which does the rest."""

    _report: asyncio.TimerHandle | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        with contextlib.suppress(RuntimeError):  # no loop running: nothing left to stop
            asyncio.get_running_loop().call_soon_threadsafe(self._stopping,
                                                            signal.Signals(sig).name)

    def _stopping(self, signal_name: str) -> None:
        if self.force_exit:  # a second Ctrl+C: uvicorn stops waiting for open requests
            _log.info("%s received again: stopping without waiting for open requests",
                      signal_name)
        else:
            _log.info("%s received: stopping (in-flight work finishes first)", signal_name)
        if self._report is None:
            self._report = asyncio.get_running_loop().call_later(STOP_REPORT_SECONDS,
                                                                 _report_slow_stop)


def _report_slow_stop() -> None:
    """Log every task still running, each with where it waits: what keeps the stop from ending."""
    waiting = []
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(file=stack)  # "Stack for <task ...> (most recent call last):", frames
        waiting.append(stack.getvalue())
    _log.warning("still stopping after %.0f s; %d tasks:\n%s", STOP_REPORT_SECONDS,
                 len(waiting), "\n".join(waiting))


def serve(factory: str, settings: ServiceSettings, service: str) -> None:
    """``python -m <service>``: the one entry point, the same in native and compose mode.

    ``factory`` ("<module>:build") is the service's composition root, called by uvicorn once
    the process is configured: nothing is built at import time."""
    global _own_process  # noqa: PLW0603  # one service per process, as logging
    logs.configure(service, settings.log_level)
    gc.set_threshold(*GC_THRESHOLDS)
    _own_process = True
    server = _Server(uvicorn.Config(
        factory,
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=JsonErrorsHttpProtocol,  # httptools, its 400 in JSON
        timeout_graceful_shutdown=HTTP_DRAIN_SECONDS,
        # Longer than nginx keeps an idle upstream connection (60 s): otherwise uvicorn may close
        # one just as nginx sends a POST on it, a 502 nginx must not retry.
        timeout_keep_alive=75,
        proxy_headers=True,
    ))
    # uvicorn raises a Ctrl+C again once it has stopped (SIGINT's default action): done.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run: a start-up that failed exits non-zero
        sys.exit(STARTUP_FAILURE)


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


def unretrieved_outages(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler of errors nothing awaited, as every service runs it.

    When a store or the broker goes away, the clients' own internal futures fail too (asyncpg's
    "unexpected connection_lost() call", redis-py's and uvloop's name lookups of a container
    gone from compose's DNS), and some of them nobody awaits: asyncio then logs "Future
    exception was never retrieved" at ERROR, with a traceback, for an outage the work that
    needed the store already retries (sagakit.consuming.is_outage). Said once, as a warning;
    any other error nothing awaited is logged as asyncio does, a possible bug."""
    error = context.get("exception")
    if error is not None and is_outage(error) and "never retrieved" in context.get("message", ""):
        _log.warning("%s: %r (a store or the broker went away; what needed it retries)",
                     context["message"], error)
        return
    loop.default_exception_handler(context)


class Worker(Protocol):
    """A background part of a service (an outbox relay, the kitchen's cooks, a sender)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@asynccontextmanager
async def running(messaging: Messaging, relay: Worker, *workers: Worker) -> AsyncIterator[None]:
    """Consume, relay the outbox and run ``workers`` while the block runs; stop in the order
    that loses nothing: stop consuming first (in-flight handlers finish), then the workers
    (each finishes what it holds), then the relay (it publishes what all of them committed),
    and close the broker connection last. Every service's lifespan runs its saga in this."""
    settle_heap()  # before the first delivery: nothing in flight gets frozen
    asyncio.get_running_loop().set_exception_handler(unretrieved_outages)
    await messaging.start()
    await relay.start()
    for worker in workers:
        await worker.start()
    try:
        yield
    finally:
        await messaging.stop_consuming()
        for worker in reversed(workers):
            await worker.stop()
        await relay.stop()
        await messaging.close()


def postgres_lifespan(
    service: str, settings: Any, messaging: Messaging, migrations: Path,
    relay_held_while: str | None = None,
    retention: Retention | None = None,
    prepare: Callable[[asyncpg.Pool], Awaitable[None]] | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifecycle of a PostgreSQL-backed service (order, payment, identity): open the pool
    and migrate, ``prepare`` (seed data), then run the saga (:func:`running`) and the retention
    sweep; close the connections and flush telemetry last. ``relay_held_while``: see
    :class:`sagakit.outbox.PostgresOutboxRelay`."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        telemetry.setup(service)
        pool = await postgres.create_pool(settings.database_dsn, max_size=settings.db_pool_size)
        try:
            await postgres.migrate(pool, [migrations])
            if prepare is not None:
                await prepare(pool)
            app.state.pool, app.state.settings = pool, settings
            app.state.audit_log = PostgresAuditLog(pool, service)
            relay = PostgresOutboxRelay(pool, messaging.publisher, relay_held_while)
            relay.sweep_seconds = settings.outbox_sweep_seconds
            async with running(messaging, relay), every(
                settings.retention_sweep_seconds, retention_sweep(pool, settings, retention),
                "retention",
            ):
                yield
        finally:
            await pool.close()
            telemetry.shutdown()  # last: flush the spans and logs of everything above

    return lifespan


def postgres_archive(request: Request) -> PostgresArchive:
    """A PostgreSQL-backed service's event archive (:func:`sagakit.archive.archive_router`)."""
    return PostgresArchive(request.app.state.pool)


@asynccontextmanager
async def every(seconds: float, work: Callable[[], Awaitable[object]],
                name: str, *, at_once: bool = False) -> AsyncIterator[None]:
    """Run ``work`` every ``seconds`` while the block runs (a sweeper); a failed run is logged
    and the next one tries again, so a database away for a while stops nothing for good.
    ``at_once``: the first run as the block starts, not ``seconds`` later (a gauge that a
    restarted process must not leave empty until then)."""
    log = logging.getLogger(f"sagakit.{name}")

    stopping = False

    async def loop() -> None:
        wait = 0.0 if at_once else seconds
        while not stopping:  # not only the cancel: a library may swallow one (sagakit.waits)
            await asyncio.sleep(wait)
            wait = seconds
            try:
                with telemetry.untraced(), units.unit_of_work():  # its events wake the relay
                    await work()
            except Exception as exc:
                log.warning("%s failed: %s; trying again in %.0fs", name, exc, seconds)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        stopping = True
        await cancelled(task)


def database_ready(app: FastAPI) -> Callable[[], Awaitable[bool]]:
    """A readiness check: the service's own database answers."""

    async def check() -> bool:
        async with app.state.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1"))

    return check

"""A service's link to the saga (broker, topology, retries, publisher) and its entry point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.specification import AsyncAPI

from sagakit import logs, metrics, postgres, telemetry
from sagakit.consuming import RetryPolicy, event_meta
from sagakit.outbox import EventPublisher, PostgresOutboxRelay
from sagakit.settings import ServiceSettings
from sagakit.topology import ConsumerQueue, Topology, dead_letter_queue

# How often the depth of the service's dead-letter queue is sampled for /metrics.
DEAD_LETTERS_SAMPLE_SECONDS = 5.0


class Messaging:
    """Everything a service needs to take part in the saga over RabbitMQ."""

    def __init__(
        self, service: str, settings: ServiceSettings, queues: Sequence[ConsumerQueue]
    ) -> None:
        self.service = service
        self.broker = RabbitBroker(
            settings.rabbitmq_url,
            app_id=service,
            graceful_timeout=15.0,
            default_channel=Channel(prefetch_count=settings.prefetch),
            logger=logging.getLogger(f"{service}.broker"),
            log_level=logging.DEBUG,
        )
        self.topology = Topology(service, queues, settings.retry_delays_ms)
        self.retries = RetryPolicy(self.broker, service, settings.retry_delays_ms)
        self.broker.add_middleware(self.retries.middleware())
        self.publisher = EventPublisher(self.broker)
        self._sampler: asyncio.Task[None] | None = None

    def subscriber(self, queue: ConsumerQueue, description: str) -> Any:
        """A subscriber on ``queue``; register one handler per event type with :func:`on`."""
        return self.broker.subscriber(
            queue.declaration(),
            ack_policy=AckPolicy.NACK_ON_ERROR,  # ack after commit; nack only if rerouting failed
            description=description,
        )

    async def start(self) -> None:
        await self.broker.connect()
        await self.topology.declare(self.broker)
        await self.broker.start()
        self._sampler = asyncio.create_task(self._sample_dead_letters(), name="dead-letters")

    async def _sample_dead_letters(self) -> None:
        """Keep the dead-letter gauge current: a passive declare answers with the queue's depth."""
        parked = RabbitQueue(dead_letter_queue(self.service).name, declare=False)  # passive
        while True:
            with contextlib.suppress(Exception):  # the broker is away: keep the last value
                queue = await self.broker.declare_queue(parked)
                metrics.DEAD_LETTERS.set((await queue.declare()).message_count or 0)
            await asyncio.sleep(DEAD_LETTERS_SAMPLE_SECONDS)

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
    "Messaging",
    "add_asyncapi_route",
    "database_ready",
    "event_meta",
    "of_type",
    "postgres_lifespan",
    "serve",
]


def of_type(event_type: str) -> Callable[[Any], Awaitable[bool]]:
    """A FastStream filter routing a delivery to the handler of its CloudEvents type.

    A coroutine function on purpose: FastStream runs a plain function filter in a worker thread
    (anyio's ``run_in_threadpool``), a thread hop per handler tried for every delivery.
    """

    async def matches(message: Any) -> bool:
        return bool(message.headers.get("ce-type") == event_type)

    matches.__name__ = f"of_type_{event_type.replace('.', '_')}"
    return matches


def add_asyncapi_route(app: FastAPI, service: str, messaging: Messaging) -> None:
    @app.get(f"/docs/{service}/asyncapi.json", tags=["docs"], summary="AsyncAPI of the events")
    async def asyncapi() -> dict[str, Any]:
        return messaging.asyncapi(f"{service} service events")


def serve(app_path: str, settings: ServiceSettings, service: str) -> None:
    """``python -m <service>``: the one entry point, the same in native and compose mode."""
    logs.configure(service, settings.log_level)
    uvicorn.run(
        app_path,
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


def postgres_lifespan(
    service: str, settings: Any, messaging: Messaging, migrations: Path,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifecycle of a PostgreSQL-backed service (order, payment), in the order that loses
    nothing: migrate, start consuming and relaying; on stop, stop consuming (in-flight handlers
    finish), flush the outbox, then close the connections and flush telemetry."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        telemetry.setup(service)
        pool = await postgres.create_pool(settings.database_url, max_size=settings.db_pool_size)
        await postgres.migrate(pool, [migrations])
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

    return lifespan


def database_ready(app: FastAPI) -> Callable[[], Awaitable[bool]]:
    """A readiness check: the service's own database answers."""

    async def check() -> bool:
        async with app.state.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1"))

    return check

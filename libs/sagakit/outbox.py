"""Outbox relays: move committed events from a service's database to the broker.

The state change and its event commit together (see :func:`sagakit.postgres.add_to_outbox`
and the production service's Lua scripts); a relay then publishes them with publisher
confirms and forgets them only once the broker has confirmed. A crash in between publishes an
event twice, never zero times; consumers' inboxes make the second copy harmless.

The relays do not poll in a tight loop: a PostgreSQL relay is woken by the unit of work (a
delivery, a request) that wrote events, once it ended (sagakit.units: no NOTIFY, whose commit
lock and cost we measured), a Redis relay by a blocking stream read. A slow periodic sweep
takes what no wake-up announced (a replica that died between commit and publish, say).

Confirmed events are archived in the step that forgets them (:mod:`sagakit.archive`).

Each publish is a PRODUCER span in the trace the event was created in (its stored
``traceparent``), however late it happens; the relays' own reads and deletes are not traced.
Each relay samples its backlog (events committed, not yet published) for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import asyncpg
from faststream.rabbit import RabbitBroker
from redis.asyncio import Redis

from sagakit import metrics, telemetry, topology, units
from sagakit.archive import RedisArchive, published_insert
from sagakit.backoff import Backoff
from sagakit.envelope import OutgoingEvent
from sagakit.postgres import row_to_event
from sagakit.streams import ensure_group
from sagakit.waits import cancelled, woken

log = logging.getLogger("sagakit.outbox")


class EventPublisher:
    """The one publish path: persistent messages to the events exchange, confirmed."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker

    async def publish(self, event: OutgoingEvent) -> None:
        with telemetry.publishing(event, topology.EVENTS.name) as headers:
            await self.broker.publish(
                event.body,
                exchange=topology.EVENTS,
                routing_key=event.type,
                persist=True,
                **event.amqp_properties(headers),
            )
        metrics.EVENTS_PUBLISHED.labels(event.type).inc()

    async def publish_all(self, events: list[OutgoingEvent]) -> None:
        # One channel keeps publish order; confirms are awaited together, not one by one.
        await asyncio.gather(*(self.publish(e) for e in events))


class _Relay:
    """Run loop shared by both relays: drain, wait for a wake-up, back off on errors."""

    sweep_seconds = 1.0

    def __init__(self, publisher: EventPublisher, batch_size: int = 200) -> None:
        self.publisher = publisher
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_sample = 0.0

    async def drain_once(self) -> int:
        raise NotImplementedError

    async def backlog(self) -> int:
        """Events committed and not yet published."""
        raise NotImplementedError

    async def _sample_backlog(self) -> None:
        """Refresh the backlog gauge, at most once per sweep (it grows while the broker is away)."""
        now = asyncio.get_running_loop().time()
        if now < self._next_sample:
            return
        self._next_sample = now + self.sweep_seconds
        with contextlib.suppress(Exception):  # the database is away: keep the last value
            metrics.OUTBOX_BACKLOG.set(await self.backlog())

    async def _wait_for_work(self) -> None:
        await woken(self._wake, self.sweep_seconds)
        self._wake.clear()

    async def _run(self) -> None:
        with telemetry.untraced():
            await self._loop()

    async def _loop(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            await self._sample_backlog()
            try:
                published = await self.drain_once()
                backoff.reset()
                if published < self.batch_size:
                    await self._wait_for_work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database down: keep the events, try again
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff.delay)
                await backoff.pause()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    async def stop(self, flush_seconds: float = 5.0) -> None:
        """Stop, first publishing what is already committed (bounded by ``flush_seconds``)."""
        self._stopping = True
        self._wake.set()
        await cancelled(self._task)
        with contextlib.suppress(Exception), telemetry.untraced():
            async with asyncio.timeout(flush_seconds):
                while await self.drain_once():
                    pass


def _take_batch(held_while: str | None) -> str:
    """Take (delete) the oldest events other relays do not hold, archiving them
    (sagakit.archive); none while ``held_while``, an SQL condition, is true."""
    held = f" WHERE NOT COALESCE(({held_while}), false)" if held_while else ""
    return (
        "WITH sent AS (DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox" + held +
        " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING seq, event_id, event_type, subject, headers, body),"
        f" archived AS ({published_insert('sent')})"
        " SELECT * FROM sent"
    )


class PostgresOutboxRelay(_Relay):
    """``held_while``: an SQL condition; while it is true the relay publishes nothing and the
    events wait in the outbox (the order service's ``relay_paused`` fault switch,
    sagakit.faults). It is part of the statement that takes each batch: no round trip of its
    own, and no batch taken after the switch was committed, in any replica."""

    def __init__(self, pool: asyncpg.Pool, publisher: EventPublisher,
                 held_while: str | None = None) -> None:
        super().__init__(publisher)
        self.pool = pool
        self._take_batch = _take_batch(held_while)

    async def start(self) -> None:
        units.register(self._wake)  # woken by this process's writes (sagakit.units)
        await super().start()

    async def drain_once(self) -> int:
        # Take a batch (rows other relays hold are skipped), publish, and only then commit the
        # delete: if a publish is not confirmed the transaction rolls back and the rows stay.
        # The same statement archives the batch (sagakit.archive), so the archive holds each
        # event once, committed with its confirmed publish.
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(self._take_batch, self.batch_size)
            if not rows:
                return 0
            rows = sorted(rows, key=lambda r: r["seq"])  # RETURNING keeps no order
            await self.publisher.publish_all([row_to_event(r) for r in rows])
        return len(rows)

    async def backlog(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM outbox"))

    async def stop(self, flush_seconds: float = 5.0) -> None:
        units.unregister(self._wake)
        await super().stop(flush_seconds)


class RedisStreamOutboxRelay(_Relay):
    """Relay for an outbox kept as a Redis stream, read through a consumer group.

    Each replica reads as its own consumer; entries a dead replica had read but not confirmed
    are claimed by the others after ``claim_idle_ms``.
    """

    group = "relay"
    claim_idle_ms = 15_000
    # How often to look for what dead replicas left: a round trip per batch would be waste.
    claim_every_seconds = 5.0

    def __init__(self, redis: Redis, publisher: EventPublisher, stream: str = "outbox",
                 archive: RedisArchive | None = None) -> None:
        super().__init__(publisher)
        self.redis = redis
        self.archive = archive
        self.stream = stream
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        # Entries this consumer read and did not confirm exist only after a failed publish, or
        # from an earlier life of a consumer with this name: look for them then, not per batch.
        self._own_pending = True
        self._next_claim = 0.0

    async def start(self) -> None:
        await ensure_group(self.redis, self.stream, self.group)
        await super().start()

    async def _wait_for_work(self) -> None:
        pass  # drain_once blocks on the stream itself

    async def drain_once(self) -> int:
        # First what this relay was handed but never confirmed (a read cut short by a stop, a
        # publish that failed while the broker was away), so it goes out first and in order;
        # then what dead replicas left pending; then new entries.
        entries = await self._read("0", block=None) if self._own_pending else []
        if not entries:
            # From here until the acknowledgement below, entries may be pending on this consumer:
            # a read that Redis served but that failed or was cancelled (a stop) on the way back
            # leaves them there, and the next drain must look at its own pending list first.
            self._own_pending = True
            entries = (
                await self._claim_abandoned()
                or await self._read(">", block=None if self._stopping
                                    else int(self.sweep_seconds * 1000))
            )
            if not entries:
                self._own_pending = False
                return 0
        events = [OutgoingEvent.from_record(_decode(fields)) for _, fields in entries if fields]
        await self.publisher.publish_all(events)
        ids = [entry_id for entry_id, _ in entries]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            pipe.xdel(self.stream, *ids)
            if self.archive is not None:  # archived once, with the entries' removal
                self.archive.add_published(pipe, events)
            await pipe.execute()
        self._own_pending = False
        return len(entries)

    async def backlog(self) -> int:
        return int(await self.redis.xlen(self.stream))

    async def _read(self, start: str, block: int | None) -> list[tuple[Any, dict[Any, Any]]]:
        response: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=self.batch_size, block=block,
        )
        return list(response[0][1]) if response else []

    async def _claim_abandoned(self) -> list[tuple[Any, dict[Any, Any]]]:
        now = asyncio.get_running_loop().time()
        if now < self._next_claim:
            return []
        self._next_claim = now + self.claim_every_seconds
        _, claimed, *_ = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0",
            count=self.batch_size,
        )
        if claimed:
            self._next_claim = 0.0  # there may be more
        return list(claimed)


def _decode(fields: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }

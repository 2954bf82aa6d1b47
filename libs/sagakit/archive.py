"""The event archive: every event a service published or consumed, headers and body, append-only.

Each service keeps the archive of its own side of the conversation, in its own store, written
where the event already passes through a transaction of that store, so archiving costs no
extra round trip on the saga's path:

- **published**, by the outbox relay, in the transaction that deletes the confirmed events
  from the outbox (PostgreSQL: one more CTE of the relay's ``DELETE``; Redis: two more
  commands of the relay's ``MULTI``). An event is archived once however often a crash makes
  the relay publish it again. Its time: Redis, when the broker confirmed it; PostgreSQL, when
  the relay's statement took it from the outbox, just before the publish (the row is written
  by that statement, which commits only once every event of the batch is confirmed).
- **consumed**, with the inbox record (PostgreSQL: a CTE next to the ``INSERT INTO inbox`` of
  the handler's statement, :func:`consumed_insert`), so a redelivery the inbox ignores is not
  archived twice. An event that changed nothing leaves no inbox record, so no archive row
  either: one the order judged stale (a ``payment.processed`` after the customer's cancel),
  or a card token it only notes (``payment.card_tokenized``). The production service keeps its
  inbox in Redis, marked by Lua scripts whose arguments are laid out per script; rather than
  thread the archive through each of them, its
  consumed events are archived by the delivery middleware after the handler returned
  (:meth:`RedisArchive.record_consumed`, one extra round trip per consumed event there): a
  hash field per event (``HSETNX``) is idempotent, so a redelivery writes nothing new, and a
  crash between the handler and this write is redelivered (the delivery is not acked yet) and
  archived then.

Why not an archive service fed from a RabbitMQ stream: it would see what was *published*
(a stream bound to ``saga.events``) but not who *consumed* it or when, and it would be one
more service, store and queue to run; the tables here answer "who published, who consumed,
when" from the transactions that did it.

Personal data: the event contract keeps it out of saga events (an order carries its owner's
id, never a name or email; a card its brand and last four digits, never the holder). The few
events that must carry personal data (a customer's data export) declare ``personal = True``
(:class:`sagakit.events.Event`); their header ``ce-personaldata`` tells every archive to keep
their headers and drop their body. So erasing a customer never has to rewrite the archive.

Append-only: PostgreSQL refuses an ``UPDATE`` of an archived row and a ``DELETE`` of one
younger than the retention (a trigger); Redis writes with ``HSETNX``, never overwriting. Rows
older than ``ARCHIVE_RETENTION_DAYS`` are removed by the retention sweeper (PostgreSQL) or
expire with their key (Redis: the key of an order lives that long after its last event).

Read by operators only at ``GET /api/v1/ops/<service>/archive?order_id=``: each service
answers for its own side, oldest first; together they list every event of an order once per
publisher and once per consumer, with no service asking another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol
from uuid import UUID

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from sagakit.auth import allow
from sagakit.envelope import PERSONAL_DATA, EventMeta, OutgoingEvent, jsonable

Direction = Literal["published", "consumed"]


def archived_body(headers: Any, body: bytes) -> bytes | None:
    """The body as the archive keeps it: None for an event flagged as carrying personal data."""
    return None if str(headers.get(PERSONAL_DATA, "")).lower() == "true" else body


# --- PostgreSQL ---------------------------------------------------------------------------------

_COLUMNS = "direction, publisher, consumer, event_id, event_type, subject, headers, body"


def published_insert(sent: str) -> str:
    """A CTE body archiving the outbox rows the CTE ``sent`` deleted (the relay's batch)."""
    return (
        f"INSERT INTO event_archive ({_COLUMNS})"
        " SELECT 'published', coalesce(headers->>'ce-source', ''), NULL, event_id, event_type,"
        " subject, headers, CASE WHEN headers->>'" + PERSONAL_DATA + "' = 'true' THEN NULL"
        f" ELSE body END FROM {sent} ORDER BY seq ON CONFLICT DO NOTHING"
    )


def consumed_insert(first: int, *, inbox: str) -> str:
    """A CTE body archiving a consumed event when the CTE ``inbox`` inserted its inbox row.

    ``inbox`` must be ``INSERT INTO inbox ... ON CONFLICT DO NOTHING RETURNING event_id,
    event_type``: a redelivery inserts no inbox row, so it archives nothing. The parameters
    ``$first`` .. ``$first+3`` are :func:`consumed_columns`.
    """
    a, b, c, d = range(first, first + 4)
    return (
        f"INSERT INTO event_archive ({_COLUMNS})"
        f" SELECT 'consumed', coalesce(${c}::jsonb->>'ce-source', ''), ${a}::text, i.event_id,"
        f" i.event_type, ${b}::text, ${c}::jsonb, ${d}::bytea FROM {inbox} AS i"
        " ON CONFLICT DO NOTHING"
    )


def consumed_columns(meta: EventMeta | None) -> tuple[object, ...]:
    """The four parameters of :func:`consumed_insert` (all None without an event)."""
    if meta is None:
        return None, None, None, None
    return (meta.consumer, meta.subject, jsonable(dict(meta.headers)),
            archived_body(meta.headers, meta.body))


class ArchivedEvent(BaseModel):
    event_id: UUID
    event_type: str
    subject: str = Field(description="the CloudEvents subject: the order id")
    direction: Direction
    publisher: str = Field(description="who published it (its CloudEvents source)")
    consumer: str | None = Field(description="who consumed it (this service), for direction "
                                             "consumed")
    at: datetime = Field(description="published: when the relay took it from the outbox "
                                     "(PostgreSQL) or the broker confirmed it (Redis); "
                                     "consumed: when its effect committed")
    trace_id: str | None
    headers: dict[str, Any] = Field(description="CloudEvents attributes, traceparent, ...")
    body: Any = Field(description="the event's data; null when withheld (personal data)")
    body_withheld: bool


def _trace_id(headers: dict[str, Any]) -> str | None:
    parts = str(headers.get("traceparent", "")).split("-")
    return parts[1] if len(parts) == 4 else None


def _archived(direction: str, publisher: str, consumer: str | None, event_id: Any,
              event_type: str, subject: str, at: datetime, headers: dict[str, Any],
              body: bytes | str | None) -> ArchivedEvent:
    return ArchivedEvent(
        event_id=event_id, event_type=event_type, subject=subject,
        direction=direction,
        publisher=publisher, consumer=consumer, at=at, trace_id=_trace_id(headers),
        headers=headers, body=None if body is None else orjson.loads(body),
        body_withheld=body is None,
    )


class EventArchive(Protocol):
    async def of_subject(self, subject: str) -> list[ArchivedEvent]: ...


class PostgresArchive:
    """The archive table of a PostgreSQL-backed service (libs/sagakit/sql/000_sagakit_archive)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def of_subject(self, subject: str) -> list[ArchivedEvent]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS}, at FROM event_archive WHERE subject = $1 ORDER BY at, seq",
                subject,
            )
        return [_archived(r["direction"], r["publisher"], r["consumer"], r["event_id"],
                          r["event_type"], r["subject"], r["at"], r["headers"],
                          None if r["body"] is None else bytes(r["body"])) for r in rows]

    async def prune(self, retention_days: int) -> int:
        """Remove what is older than the retention; returns how many rows went."""
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT prune_event_archive($1)", retention_days))


# --- Redis --------------------------------------------------------------------------------------


def _key(subject: str) -> str:
    return f"archive:{subject}"


class RedisArchive:
    """A hash per order, ``archive:<order id>``: one field per event and side, never rewritten
    (``HSETNX``), expiring ``retention_days`` after the order's last archived event."""

    def __init__(self, redis: Redis, *, consumer: str, retention_days: int) -> None:
        self.redis = redis
        self.consumer = consumer
        self.ttl = retention_days * 86_400

    def _add(self, pipe: Pipeline | Redis, field: str, subject: str,
             record: dict[str, Any]) -> None:
        pipe.hsetnx(_key(subject), field, orjson.dumps(record))
        pipe.expire(_key(subject), self.ttl)

    def add_published(self, pipe: Pipeline, events: Sequence[OutgoingEvent]) -> None:
        """Queue the archive writes of confirmed events on the relay's ``MULTI`` pipeline."""
        at = datetime.now(UTC).isoformat()
        for e in events:
            body = archived_body(e.headers, e.body)
            self._add(pipe, f"published:{e.id}", e.subject, {
                "direction": "published", "publisher": e.headers.get("ce-source", ""),
                "consumer": None, "event_id": str(e.id), "event_type": e.type,
                "subject": e.subject, "at": at, "headers": e.headers,
                "body": None if body is None else body.decode(),
            })

    async def record_consumed(self, meta: EventMeta) -> None:
        """Archive an event a handler of this service consumed (idempotent)."""
        headers = jsonable(dict(meta.headers))
        body = archived_body(meta.headers, meta.body)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._add(pipe, f"consumed:{meta.consumer}:{meta.id}", meta.subject, {
                "direction": "consumed", "publisher": headers.get("ce-source", ""),
                "consumer": meta.consumer, "event_id": str(meta.id), "event_type": meta.type,
                "subject": meta.subject, "at": datetime.now(UTC).isoformat(),
                "headers": headers, "body": None if body is None else body.decode(),
            })
            await pipe.execute()

    async def of_subject(self, subject: str) -> list[ArchivedEvent]:
        raw: dict[Any, Any] = await self.redis.hgetall(_key(subject))
        found = [orjson.loads(v) for v in raw.values()]
        found.sort(key=lambda r: (r["at"], r["direction"] != "published"))
        return [_archived(r["direction"], r["publisher"], r["consumer"], r["event_id"],
                          r["event_type"], r["subject"], datetime.fromisoformat(r["at"]),
                          r["headers"], r["body"]) for r in found]


# --- HTTP ---------------------------------------------------------------------------------------


class ArchiveOut(BaseModel):
    service: str
    order_id: UUID
    events: list[ArchivedEvent] = Field(description="oldest first")


def archive_router(service: str, archive: Callable[[Request], EventArchive]) -> APIRouter:
    """``GET /api/v1/ops/<service>/archive?order_id=``: this service's side of an order's events."""
    router = APIRouter(prefix=f"/api/v1/ops/{service}/archive", tags=["operations"])

    @router.get("", response_model=ArchiveOut, **allow("ops"),
                summary="Every event of an order this service published or consumed, oldest "
                        "first: who published it, who consumed it, when, headers and body")
    async def order_archive(
        request: Request,
        order_id: Annotated[UUID, Query(description="the events' subject: an order's id (or a "
                                                   "customer's, for their data's events)")],
    ) -> ArchiveOut:
        events = await archive(request).of_subject(str(order_id))
        return ArchiveOut(service=service, order_id=order_id, events=events)

    return router

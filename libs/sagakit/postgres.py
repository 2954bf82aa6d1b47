"""PostgreSQL plumbing shared by the order and payment services: pool, migrations, outbox, inbox.

A statement that records a consumed event in the inbox archives it too, in a CTE of the same
statement (:func:`sagakit.archive.consumed_insert`); :func:`first_delivery` is the plain case.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import orjson

from sagakit import units
from sagakit.archive import consumed_columns, consumed_insert
from sagakit.envelope import EventMeta, OutgoingEvent

log = logging.getLogger("sagakit.postgres")

_OWN_SQL = Path(__file__).with_name("sql")


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Hand a released connection back as it is.

    asyncpg's default reset runs ``RESET ALL; UNLISTEN *; CLOSE ALL; SELECT
    pg_advisory_unlock_all()`` on every release: a round trip per use that is pure cost here,
    as no code changes session state on a pooled connection (locks are transaction-scoped,
    LISTEN has a connection of its own). An open transaction is still rolled back by asyncpg.
    """


# How long opening one connection may take (asyncpg's default is 60 s): while a database is
# away, a request that needs a new connection answers 503 in seconds, not after a minute.
CONNECT_TIMEOUT_SECONDS = 10.0


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30,
        reset=_keep_session, timeout=CONNECT_TIMEOUT_SECONDS,
    )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, directories: Sequence[Path]) -> list[str]:
    """Apply the ``*.sql`` files not applied yet, in name order; returns what it applied.

    Replicas starting together serialise on an advisory lock, so each file runs once.
    """
    files = sorted(
        [*_OWN_SQL.glob("*.sql"), *(f for d in directories for f in d.glob("*.sql"))],
        key=lambda f: f.name,
    )
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7406180)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for file in files:
            if file.name in done:
                continue
            await conn.execute(file.read_text())
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", file.name)
            applied.append(file.name)
    if applied:
        log.info("applied migrations %s", applied)
    return applied


async def add_to_outbox(conn: asyncpg.Connection, *events: OutgoingEvent) -> None:
    """Record events to publish; call inside the transaction that makes the change they announce."""
    await conn.execute(outbox_insert(1), *outbox_columns(events))


def outbox_insert(first: int, *, when: str | None = None) -> str:
    """The outbox insert, the one SQL every PostgreSQL writer of events uses.

    The events come as five parallel arrays (:func:`outbox_columns`) in the parameters
    ``$first`` to ``$first+4``. As a data-modifying CTE of a larger statement, events commit
    with the change they announce in one round trip (see the order service's transitions):
    ``when`` then names a CTE that returns one row when the change took place and none
    otherwise, so nothing is announced for a change that did not happen.
    """
    a, b, c, d, e = range(first, first + 5)
    rows = f"{when}, " if when else ""
    return (
        "INSERT INTO outbox (event_id, event_type, subject, headers, body)"
        f" SELECT e.* FROM {rows}unnest(${a}::uuid[], ${b}::text[], ${c}::text[],"
        f" ${d}::text[]::jsonb[], ${e}::bytea[]) AS e"
    )


def inbox_insert(event_id: int, event_type: int, *, when: str | None = None) -> str:
    """The inbox insert, the one SQL every PostgreSQL consumer records a delivery with.

    The event's id and type are the parameters ``$event_id`` and ``$event_type``. The statement
    returns the row only for a first delivery (a redelivery conflicts and returns nothing), so
    as a data-modifying CTE its emptiness is the "seen before" test of the rest of the
    statement, and it names ``event_id, event_type`` for the archive's CTE
    (:func:`sagakit.archive.consumed_insert`). With ``when``, the delivery is recorded only if
    that CTE returns a row and a type is given (a step not caused by an event records none).
    """
    if when is None:
        rows = f"VALUES (${event_id}, ${event_type})"
    else:
        rows = (f"SELECT ${event_id}, ${event_type} FROM {when}"
                f" WHERE ${event_type}::text IS NOT NULL")
    return (f"INSERT INTO inbox (event_id, event_type) {rows}"
            " ON CONFLICT DO NOTHING RETURNING event_id, event_type")


def outbox_columns(events: Sequence[OutgoingEvent]) -> tuple[list[object], ...]:
    """Events as the five column arrays :func:`outbox_insert` takes.

    Every write to an outbox passes here, so this is where the current unit of work learns it
    wrote events: its end wakes the relay (sagakit.units), once the write has committed.
    """
    if events:
        units.written()
    return (
        [e.id for e in events], [e.type for e in events], [e.subject for e in events],
        [orjson.dumps(e.headers).decode() for e in events], [e.body for e in events],
    )


async def first_delivery(conn: asyncpg.Connection, meta: EventMeta) -> bool:
    """Record the event in the inbox; False when it was already processed (a redelivery).

    Call inside the transaction that applies the event, so effect and record commit together.
    """
    return bool(await conn.fetchval(_FIRST_DELIVERY, meta.id, meta.type,
                                    *consumed_columns(meta)))


# The inbox record and, for a first delivery only, its archive entry (sagakit.archive).
_FIRST_DELIVERY = (
    f"WITH noted AS ({inbox_insert(1, 2)}),"
    f" archived AS ({consumed_insert(3, inbox='noted')})"
    " SELECT count(*) FROM noted"
)


def row_to_event(row: asyncpg.Record) -> OutgoingEvent:
    return OutgoingEvent(
        id=row["event_id"], type=row["event_type"], subject=row["subject"],
        body=bytes(row["body"]), headers=row["headers"],
    )

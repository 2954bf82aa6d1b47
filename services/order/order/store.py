"""SQL for the order service (asyncpg).

A saga step decides in Python (order.domain) on the order as it was read with :func:`read`, or,
usually, as this process last wrote it (order.service.KnownOrders: no read at all), then
:func:`transition` writes the decision, its timeline entry, the inbox record and the outbox
events in one statement that applies only if the order did not change in between: one round
trip on the usual path, two when the order must be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from order.domain import Line, OrderRef, PricedOrder, Product, Status
from sagakit import units
from sagakit.archive import consumed_columns, consumed_insert
from sagakit.envelope import EventMeta, OutgoingEvent
from sagakit.postgres import inbox_insert, outbox_columns, outbox_insert


async def menu(conn: asyncpg.Connection) -> dict[str, Product]:
    rows = await conn.fetch("SELECT sku, name, price FROM products ORDER BY sku")
    return {r["sku"]: Product(r["sku"], r["name"], r["price"]) for r in rows}


async def products(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT sku, name, description, price FROM products ORDER BY sku")
    return rows


def _lines_json(lines: tuple[Line, ...]) -> list[dict[str, Any]]:
    return [
        {"sku": x.sku, "name": x.name, "quantity": x.quantity, "unit_price": str(x.unit_price)}
        for x in lines
    ]


def _lines(raw: list[dict[str, Any]]) -> tuple[Line, ...]:
    return tuple(
        Line(x["sku"], x["name"], int(x["quantity"]), Decimal(x["unit_price"])) for x in raw
    )


# A webhook delivery per timeline entry of an order that has a callback URL (order.webhooks):
# part of the statement that writes the entry, so both commit or neither does. The unit of work
# that wrote one wakes this process's webhook sender when it ends (sagakit.units).
WEBHOOK_DELIVERIES = "webhook_deliveries"
_HOOK = (" hook AS (INSERT INTO webhook_deliveries (id, order_id, timeline_seq, url)"
         " SELECT gen_random_uuid(), step.order_id, step.seq, {source}.callback_url"
         " FROM step, {source} WHERE {source}.callback_url IS NOT NULL),")

def open_account(owner: str) -> str:
    """SQL: the account ``owner`` (a parameter, e.g. ``$10``) has not asked for erasure
    (migrations/012). A token issued before the erasure is still valid, and must not write the
    customer's data again (an order, a webhook secret: order.webhooks)."""
    return f"NOT EXISTS (SELECT FROM closed_accounts WHERE customer_id = {owner})"


_OPEN_ACCOUNT = open_account("$10")


class AccountClosed(Exception):
    """The caller's account was erased; its token, issued before, is still valid."""


def _place(claim: bool) -> str:
    """The new order, its first timeline entry (and webhook delivery) and its events, unless
    its owner's account is closed; with ``claim``, only if the request's Idempotency-Key ($19,
    with the request's hash $20) is new, claimed by the same statement (a key already taken, or
    a closed account, inserts nothing at all)."""
    claimed = (
        " claim AS (INSERT INTO idempotency_keys (key, request_hash, order_id)"
        f" SELECT $19, $20, $1 WHERE {_OPEN_ACCOUNT}"
        " ON CONFLICT (key) DO NOTHING RETURNING order_id),"
        if claim else "")
    return (
        "WITH" + claimed + " placed AS ("
        " INSERT INTO orders (id, status, customer_name, customer_email, payment_token,"
        " currency, total, lines, trace_id, owner, callback_url, trace_recorded, trace_span_id)"
        " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13"
        + (" WHERE EXISTS (SELECT FROM claim)" if claim else f" WHERE {_OPEN_ACCOUNT}")
        + " RETURNING *),"
        " step AS (INSERT INTO order_timeline (order_id, status, trace_id)"
        " SELECT id, status, trace_id FROM placed RETURNING seq, order_id, at),"
        + _HOOK.format(source="placed") +
        " sent AS (" + outbox_insert(14, when="placed") + ")"
        " SELECT placed.*, step.at AS step_at FROM placed, step"
    )


_PLACE, _PLACE_ONCE = _place(claim=False), _place(claim=True)


async def insert_order(
    conn: asyncpg.Connection, *, order_id: UUID, name: str, email: str, payment_token: str,
    currency: str, priced: PricedOrder, trace_id: str, announce: Sequence[OutgoingEvent],
    owner: str | None, callback_url: str | None = None,
    idempotency_key: tuple[str, str] | None = None, trace_recorded: bool = True,
    trace_span_id: str | None = None,
) -> asyncpg.Record | None:
    """The new order, its first timeline entry and its events, in one statement (so one
    round trip and one commit); returns the order's row (as :func:`fetch` would) plus
    ``step_at``, the time of that first entry.

    None, and nothing written, when the owner's account is closed (migrations/012),
    or, with ``idempotency_key`` (the key, the request's fingerprint), which the same statement
    claims, when the key was claimed already (a retry, or a twin request in flight, whose
    commit the claim waits for): see :func:`idempotency_key`.
    """
    args: list[object] = [
        order_id, Status.PENDING_PAYMENT, name, email, payment_token, currency, priced.total,
        _lines_json(priced.lines), trace_id, owner, callback_url, trace_recorded, trace_span_id,
        *outbox_columns(announce)]
    if idempotency_key is None:
        row = await conn.fetchrow(_PLACE, *args)
    else:
        row = await conn.fetchrow(_PLACE_ONCE, *args, *idempotency_key)
    if row is not None and callback_url is not None:
        units.written(WEBHOOK_DELIVERIES)
    return row


async def read(
    conn: asyncpg.Connection, order_id: UUID, event_id: UUID | None = None,
) -> tuple[OrderRef | None, bool]:
    """The order as it is now (no lock: see :func:`transition`), and whether the event
    ``event_id`` was applied to it already (the inbox)."""
    row = await conn.fetchrow(
        "SELECT id, status, version, total, currency, lines, created_at, cancel_requested_at,"
        " EXISTS (SELECT 1 FROM inbox WHERE event_id = $2) AS seen FROM orders WHERE id = $1",
        order_id, event_id,
    )
    if row is None:
        return None, False
    return order_ref(row), row["seen"]


async def trace_of(conn: asyncpg.Connection, order_id: UUID) -> tuple[str, str, bool] | None:
    """The order's trace id, the id of the span that placed it, and whether its trace is
    recorded; None for an order from before its span was kept (or no order)."""
    row = await conn.fetchrow("SELECT trace_id, trace_span_id, trace_recorded FROM orders"
                              " WHERE id = $1 AND trace_span_id IS NOT NULL", order_id)
    return None if row is None else (row["trace_id"], row["trace_span_id"],
                                     row["trace_recorded"])


def order_ref(row: asyncpg.Record) -> OrderRef:
    """What a saga step decides on, from a row of ``orders`` (as read, or as just inserted)."""
    return OrderRef(row["id"], Status(row["status"]), row["total"], row["currency"],
                    _lines(row["lines"]), row["created_at"], version=row["version"],
                    cancel_requested=row["cancel_requested_at"] is not None)


# One statement, so it commits or not as a whole: the status (only if the order is still at
# the version the caller decided on, and the event causing it was not applied already), its
# timeline entry (and its webhook delivery), the consumed event in the inbox (and the event
# archive) and the events the step announces. Each CTE after ``moved`` inserts nothing when
# ``moved`` is empty, i.e. when another step of the order committed first or the event is a
# redelivery: the caller reads again and decides on what it finds.
_TRANSITION = (
    "WITH moved AS ("
    " UPDATE orders SET status = $3, updated_at = now(),"
    " cancellation_reason = COALESCE(cancellation_reason, $4)"
    " WHERE id = $1 AND version = $2"
    " AND ($6::uuid IS NULL OR NOT EXISTS (SELECT 1 FROM inbox WHERE event_id = $6))"
    " RETURNING id, callback_url),"
    " step AS (INSERT INTO order_timeline (order_id, status, reason, event_id, trace_id)"
    " SELECT id, $3, $5, $6, $7 FROM moved RETURNING seq, order_id),"
    + _HOOK.format(source="moved") +
    " noted AS (" + inbox_insert(6, 8, when="moved") + "),"
    " archived AS (" + consumed_insert(14, inbox="noted") + "),"
    " sent AS (" + outbox_insert(9, when="moved") + ")"
    " SELECT count(*) AS moved, count(callback_url) AS hooked FROM moved"
)


async def transition(
    conn: asyncpg.Connection, order: OrderRef, status: Status, *, reason: str | None,
    event: EventMeta | None, trace_id: str, announce: Sequence[OutgoingEvent] = (),
) -> bool:
    """Move ``order`` to ``status`` if it is still as it was read and ``event`` was not applied
    yet; False otherwise (it changed since, or the event is a redelivery).

    This is optimistic concurrency instead of ``SELECT ... FOR UPDATE``: no transaction held
    open while Python decides, and one round trip per step when the decision was taken on the
    order as this process last wrote it (two with a :func:`read` first). A False means another
    step committed in between: read again and decide again.
    """
    cancelling = status in (Status.CANCELLING, Status.CANCELLED)
    row = await conn.fetchrow(
        _TRANSITION, order.id, order.version, status, reason if cancelling else None, reason,
        event.id if event else None, trace_id, event.type if event else None,
        *outbox_columns(announce), *consumed_columns(event),
    )
    assert row is not None
    if row["hooked"]:
        units.written(WEBHOOK_DELIVERIES)
    return bool(row["moved"])


_REQUEST_CANCEL = (
    "WITH marked AS ("
    " UPDATE orders SET cancel_requested_at = now(), updated_at = now()"
    " WHERE id = $1 AND version = $2 RETURNING id),"
    " sent AS (" + outbox_insert(3, when="marked") + ")"
    " SELECT count(*) FROM marked"
)


async def mark_cancel_requested(
    conn: asyncpg.Connection, order: OrderRef, announce: Sequence[OutgoingEvent],
) -> bool:
    """Note the customer's request (the status stays), as :func:`transition` does a step."""
    return bool(await conn.fetchval(_REQUEST_CANCEL, order.id, order.version,
                                    *outbox_columns(announce)))


async def fetch(conn: asyncpg.Connection, order_id: UUID,
                owner: str | None = None) -> asyncpg.Record | None:
    """The order; with ``owner``, only if that caller owns it (else None, as if it did not
    exist: someone else's order is never confirmed to exist)."""
    if owner is None:
        return await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order_id)
    return await conn.fetchrow("SELECT * FROM orders WHERE id = $1 AND owner = $2",
                               order_id, owner)


async def timeline(conn: asyncpg.Connection, order_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT status, reason, event_id, trace_id, at FROM order_timeline WHERE order_id = $1"
        " ORDER BY seq",
        order_id,
    )
    return rows


# Where a live follower (GET /api/v1/orders/{id}/events) learns of new entries: the trigger of
# migrations/006_timeline_notify.sql, its function as migrations/010_timeline_followers.sql
# redefines it, NOTIFYs it with the order id when one commits, only for an order someone
# follows (:func:`follow`).
TIMELINE_CHANNEL = "order_timeline"


async def follow(conn: asyncpg.Connection, order_id: UUID, seconds: float) -> None:
    """Someone follows ``order_id`` live for the next ``seconds``: its new timeline entries
    NOTIFY until then (call it again to go on). Other followers whose time is up are let go.

    The order's row is share-locked first: a step in flight (which holds it, updated) commits
    before the note does, so the follower's next read sees that step's entry; a step that
    comes later waits for the note, and its trigger sees it. No entry falls between the two.
    Expired notes another follower holds are skipped, never waited for (no deadlock).
    """
    await conn.execute(
        "WITH held AS (SELECT id FROM orders WHERE id = $1 FOR SHARE),"
        " gone AS (DELETE FROM order_followers WHERE order_id IN ("
        "  SELECT order_id FROM order_followers WHERE until < now() AND order_id <> $1"
        "  FOR UPDATE SKIP LOCKED))"
        " INSERT INTO order_followers (order_id, until)"
        " SELECT id, now() + make_interval(secs => $2) FROM held"
        " ON CONFLICT (order_id) DO UPDATE"
        " SET until = GREATEST(order_followers.until, EXCLUDED.until)",
        order_id, seconds,
    )


async def timeline_after(
    conn: asyncpg.Connection, order_id: UUID, after: int
) -> list[asyncpg.Record]:
    """The order's timeline entries after its ``after``-th, each with its position ``n`` in the
    order's timeline (1, 2, ...: its event id in the live stream, so a client resuming with
    Last-Event-ID gets only what it missed).

    The position, not the shop-wide ``seq``: an id that grows with every order anyone places
    would tell each follower how many orders the shop takes. Positions are stable, as entries
    of one order are appended one at a time (each step holds the order's row as it writes).
    An ``after`` past the last entry (an id from before positions, a shop-wide ``seq``) is no
    position at all: every entry is sent again, rather than none ever.
    """
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM (SELECT row_number() OVER (ORDER BY seq) AS n, count(*) OVER () AS total,"
        " status, reason, event_id, trace_id, at FROM order_timeline WHERE order_id = $1)"
        " AS entries WHERE n > $2 OR $2 > total ORDER BY n",
        order_id, after,
    )
    return rows


async def count_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def count_waiting(conn: asyncpg.Connection, statuses: Sequence[str]) -> int:
    """Orders in ``statuses`` (an index scan of orders_status_idx: cheap at any size)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM orders WHERE status = ANY($1::text[])", list(statuses)))


async def recent(
    conn: asyncpg.Connection, statuses: Sequence[str] | None, limit: int,
    owner: str | None = None,
) -> list[asyncpg.Record]:
    """Newest first; with ``owner``, only that caller's orders."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM orders WHERE ($1::text[] IS NULL OR status = ANY($1))"
        " AND ($3::text IS NULL OR owner = $3)"
        " ORDER BY created_at DESC LIMIT $2",
        None if statuses is None else list(statuses), limit, owner,
    )
    return rows


async def idempotency_key(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT request_hash, order_id FROM idempotency_keys WHERE key = $1", key
    )


async def token_known(conn: asyncpg.Connection, token: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM payment_tokens WHERE token = $1", token))


async def remember_token(
    conn: asyncpg.Connection, token: str, brand: str, last4: str, created_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO payment_tokens (token, brand, last4, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (token) DO NOTHING",
        token, brand, last4, created_at,
    )

"""SQL for the payment service (asyncpg). Every function takes the connection of the caller's
transaction, so a use case decides what commits together.

The saga's two handlers run on every order, so their statements are few: each round trip to
PostgreSQL costs both processes CPU. Where one statement does several things it uses
data-modifying CTEs (``WITH x AS (INSERT ... RETURNING ...)``): every part of such a statement sees
the same snapshot, taken when the statement starts, and they pass rows to each other only through
``RETURNING``. That is why the order's lock is always taken by a statement of its own first: in
READ COMMITTED a statement that waited for the lock would still read with the snapshot of its
start, blind to what the lock's previous holder committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

import asyncpg

from payment.domain import Brand, Card, Charge, Outcome
from sagakit.archive import consumed_columns, consumed_insert
from sagakit.envelope import EventMeta, OutgoingEvent
from sagakit.postgres import inbox_insert, outbox_columns, outbox_insert

# The columns of a card, in the order _card reads them.
_CARD_COLUMNS = "token, brand, last4, exp_month, exp_year, holder, decline_reason, owner"
# The columns of a charge and whether it was refunded, in the order _charge reads them.
_CHARGE_COLUMNS = (
    "c.id, c.status, c.amount, c.currency, c.payment_token,"
    " EXISTS (SELECT FROM payments r WHERE r.kind = 'refund' AND r.refund_of = c.id) AS refunded"
)


async def lock_order(conn: asyncpg.Connection, order_id: UUID) -> None:
    """Serialise the work on one order across replicas until the transaction ends.

    An advisory lock, because the first event of an order may find no row to lock.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(order_id))


def _owner_lock(exclusive: bool) -> str:
    """The transaction's lock on an owner's account ($1): card inserts share it, the erasure
    takes it alone, so an insert either commits before the erasure's update or sees the
    account closed (its next statement's snapshot is taken after the wait)."""
    kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    return f"SELECT {kind}(hashtext('account:' || $1::text))"


async def insert_card(conn: asyncpg.Connection, card: Card) -> datetime | None:
    """Keep the card, in the caller's transaction; None (nothing written) when its owner's
    account is closed (migrations/003)."""
    if card.owner is not None:
        await conn.execute(_owner_lock(exclusive=False), card.owner)
    created_at: datetime | None = await conn.fetchval(
        "INSERT INTO cards (token, brand, last4, exp_month, exp_year, holder, decline_reason,"
        " owner) SELECT $1, $2, $3, $4, $5, $6, $7, $8"
        " WHERE NOT EXISTS (SELECT FROM closed_accounts WHERE customer_id = $8)"
        " RETURNING created_at",
        card.token, card.brand, card.last4, card.exp_month, card.exp_year, card.holder,
        card.decline_reason, card.owner,
    )
    return created_at


async def close_account(conn: asyncpg.Connection, owner: str) -> None:
    """Refuse the owner's cards from now on, once the card inserts in flight have committed
    (in the caller's transaction, before it erases what they wrote)."""
    await conn.execute(_owner_lock(exclusive=True), owner)
    await conn.execute(
        "INSERT INTO closed_accounts (customer_id) VALUES ($1) ON CONFLICT DO NOTHING", owner)


def _card(row: asyncpg.Record) -> Card | None:
    if row["token"] is None:
        return None
    return Card(row["token"], Brand(row["brand"]), row["last4"], row["exp_month"],
                row["exp_year"], row["holder"], row["decline_reason"], row["owner"])


def _charge(row: asyncpg.Record) -> Charge | None:
    if row["id"] is None:
        return None
    return Charge(row["id"], Outcome(row["status"]), row["amount"], row["currency"],
                  row["payment_token"], row["refunded"])


async def lock_order_and_find_card(
    conn: asyncpg.Connection, order_id: UUID, token: str,
) -> Card | None:
    """:func:`lock_order`, and the card of ``token`` read in the same round trip.

    Reading the card with the snapshot of a statement that may have waited for the lock is
    safe: a card never changes once tokenized, and it is committed before any order names it
    (the order service accepts only tokens it heard of in payment.card_tokenized).
    """
    row = await conn.fetchrow(
        f"SELECT {_CARD_COLUMNS}"
        " FROM (SELECT pg_advisory_xact_lock(hashtext($1::text))) AS locked"
        " LEFT JOIN cards ON cards.token = $2",
        str(order_id), token,
    )
    return _card(row)


@dataclass(frozen=True)
class NewCharge:
    """A charge to write: the issuer's decision on one order."""

    payment_id: UUID
    order_id: UUID
    outcome: Outcome
    amount: Decimal
    currency: str
    reason: str | None
    payment_token: str
    owner: str | None = None  # the order's owner


class NotCharged(StrEnum):
    """Why :func:`charge_once` charged nothing (checked in this order)."""

    DUPLICATE = "duplicate"  # the event is in the inbox: it was handled before
    CANCELLED = "cancelled"  # the order was cancelled first (and its void announced)
    CHARGED_ALREADY = "charged_already"  # by another order.created of the same order


async def charge_once(
    conn: asyncpg.Connection, meta: EventMeta, charge: NewCharge, announce: OutgoingEvent,
) -> NotCharged | None:
    """Record the delivery in the inbox and, if it is new and the order neither cancelled nor
    charged, insert the charge and ``announce`` it in the outbox; None when it charged.

    One statement instead of five. Call it after the order's lock
    (:func:`lock_order_and_find_card`), in the same transaction: its reads then see every
    cancellation committed before the lock was granted, and the order stays locked until
    commit, so no cancellation can slip in between the check and the charge. (The unique index
    on an order's charge would still refuse a second charge, should a caller forget the lock.)
    """
    row = await conn.fetchrow(
        f"WITH delivery AS ({inbox_insert(1, 2)}"
        f"), archived AS ({consumed_insert(16, inbox='delivery')}"
        "), state AS ("
        "  SELECT EXISTS (SELECT FROM delivery) AS first_delivery,"
        "   EXISTS (SELECT FROM order_cancellations WHERE order_id = $3) AS cancelled,"
        "   EXISTS (SELECT FROM payments WHERE order_id = $3 AND kind = 'charge') AS charged"
        "), charge AS ("
        "  INSERT INTO payments (id, order_id, kind, status, amount, currency, reason,"
        "   payment_token, owner)"
        "  SELECT $4::uuid, $3::uuid, 'charge', $5::text, $6::numeric, $7::text, $8::text,"
        "   $9::text, $10::text FROM state WHERE first_delivery AND NOT cancelled AND NOT charged"
        "  RETURNING id"
        # Only when the charge row was inserted: its RETURNING row is the condition.
        f"), announced AS ({outbox_insert(11, when='charge')})"
        " SELECT first_delivery, cancelled, charged FROM state",
        meta.id, meta.type, charge.order_id, charge.payment_id, charge.outcome, charge.amount,
        charge.currency, charge.reason, charge.payment_token, charge.owner,
        *outbox_columns([announce]), *consumed_columns(meta),
    )
    if not row["first_delivery"]:
        return NotCharged.DUPLICATE
    if row["cancelled"]:
        return NotCharged.CANCELLED
    if row["charged"]:
        return NotCharged.CHARGED_ALREADY
    return None


async def record_cancellation(
    conn: asyncpg.Connection, meta: EventMeta, order_id: UUID, reason: str,
) -> tuple[bool, Charge | None]:
    """Record the delivery in the inbox and, if it is new, the order's cancellation (a tombstone
    that keeps a later order.created from charging); returns whether it was new, and the
    order's charge.

    Call it after :func:`lock_order` in the same transaction, so the charge read is the latest
    committed: a charge committed while this handler waited for the lock is refunded. (The
    read does not see this statement's own tombstone, nor needs to.)
    """
    row = await conn.fetchrow(
        f"WITH delivery AS ({inbox_insert(1, 2)}"
        f"), archived AS ({consumed_insert(5, inbox='delivery')}"
        "), tombstone AS ("
        "  INSERT INTO order_cancellations (order_id, reason)"
        "  SELECT $3::uuid, $4::text FROM delivery"
        "  ON CONFLICT (order_id) DO NOTHING"
        f") SELECT new.first_delivery, {_CHARGE_COLUMNS}"
        " FROM (SELECT EXISTS (SELECT FROM delivery) AS first_delivery) AS new"
        " LEFT JOIN payments c ON c.order_id = $3 AND c.kind = 'charge'",
        meta.id, meta.type, order_id, reason, *consumed_columns(meta),
    )
    return row["first_delivery"], _charge(row)


async def refund(
    conn: asyncpg.Connection, *, refund_id: UUID, order_id: UUID, charge: Charge, reason: str,
    announce: OutgoingEvent,
) -> None:
    """Insert the refund of ``charge`` and ``announce`` it in the outbox, in one statement."""
    await conn.execute(
        "WITH refund AS ("
        "  INSERT INTO payments (id, order_id, kind, status, amount, currency, reason,"
        "   refund_of, payment_token)"
        "  VALUES ($1, $2, 'refund', 'refunded', $3, $4, $5, $6, $7) RETURNING id"
        f") {outbox_insert(8, when='refund')}",
        refund_id, order_id, charge.amount, charge.currency, reason, charge.id,
        charge.payment_token, *outbox_columns([announce]),
    )


async def ledger(conn: asyncpg.Connection, order_id: UUID,
                 owner: str | None = None) -> list[asyncpg.Record]:
    """An order's charge and refund, oldest first; with ``owner``, only if the order's charge
    is that caller's (else nothing, as for an order never charged)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, order_id, kind, status, amount, currency, reason, refund_of, created_at"
        " FROM payments WHERE order_id = $1 AND ($2::text IS NULL OR EXISTS ("
        "  SELECT FROM payments c WHERE c.order_id = $1 AND c.kind = 'charge' AND c.owner = $2))"
        " ORDER BY created_at, kind",
        order_id, owner,
    )
    return rows


async def card_of(conn: asyncpg.Connection, token: str, owner: str | None) -> Card | None:
    """The card of ``token``; with ``owner``, only that caller's card."""
    row = await conn.fetchrow(f"SELECT {_CARD_COLUMNS} FROM cards WHERE token = $1"
                              " AND ($2::text IS NULL OR owner = $2)", token, owner)
    return None if row is None else _card(row)

"""SQL for the payment service (asyncpg). Every function takes the connection of the caller's
transaction, so a use case decides what commits together."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from payment.domain import Brand, Card, Charge, Outcome


async def lock_order(conn: asyncpg.Connection, order_id: UUID) -> None:
    """Serialise the work on one order across replicas until the transaction ends.

    An advisory lock, because the first event of an order may find no row to lock.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(order_id))


async def insert_card(conn: asyncpg.Connection, card: Card) -> datetime:
    created_at: datetime = await conn.fetchval(
        "INSERT INTO cards (token, brand, last4, exp_month, exp_year, holder, decline_reason)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at",
        card.token, card.brand, card.last4, card.exp_month, card.exp_year, card.holder,
        card.decline_reason,
    )
    return created_at


async def card(conn: asyncpg.Connection, token: str) -> Card | None:
    row = await conn.fetchrow(
        "SELECT token, brand, last4, exp_month, exp_year, holder, decline_reason"
        " FROM cards WHERE token = $1",
        token,
    )
    if row is None:
        return None
    return Card(row["token"], Brand(row["brand"]), row["last4"], row["exp_month"],
                row["exp_year"], row["holder"], row["decline_reason"])


async def is_cancelled(conn: asyncpg.Connection, order_id: UUID) -> bool:
    return bool(await conn.fetchval(
        "SELECT 1 FROM order_cancellations WHERE order_id = $1", order_id
    ))


async def record_cancellation(conn: asyncpg.Connection, order_id: UUID, reason: str) -> None:
    await conn.execute(
        "INSERT INTO order_cancellations (order_id, reason) VALUES ($1, $2)"
        " ON CONFLICT (order_id) DO NOTHING",
        order_id, reason,
    )


async def charge(conn: asyncpg.Connection, order_id: UUID) -> Charge | None:
    row = await conn.fetchrow(
        "SELECT c.id, c.status, c.amount, c.currency, c.payment_token,"
        " EXISTS (SELECT 1 FROM payments r WHERE r.kind = 'refund' AND r.refund_of = c.id)"
        " AS refunded"
        " FROM payments c WHERE c.order_id = $1 AND c.kind = 'charge'",
        order_id,
    )
    if row is None:
        return None
    return Charge(row["id"], Outcome(row["status"]), row["amount"], row["currency"],
                  row["payment_token"], row["refunded"])


async def insert_charge(
    conn: asyncpg.Connection, *, payment_id: UUID, order_id: UUID, outcome: Outcome,
    amount: Decimal, currency: str, reason: str | None, payment_token: str,
) -> None:
    await conn.execute(
        "INSERT INTO payments (id, order_id, kind, status, amount, currency, reason,"
        " payment_token) VALUES ($1, $2, 'charge', $3, $4, $5, $6, $7)",
        payment_id, order_id, outcome, amount, currency, reason, payment_token,
    )


async def insert_refund(
    conn: asyncpg.Connection, *, refund_id: UUID, order_id: UUID, charge: Charge, reason: str,
) -> None:
    await conn.execute(
        "INSERT INTO payments (id, order_id, kind, status, amount, currency, reason, refund_of,"
        " payment_token) VALUES ($1, $2, 'refund', 'refunded', $3, $4, $5, $6, $7)",
        refund_id, order_id, charge.amount, charge.currency, reason, charge.id,
        charge.payment_token,
    )


async def ledger(conn: asyncpg.Connection, order_id: UUID) -> list[asyncpg.Record]:
    """An order's charge and refund, oldest first."""
    return await conn.fetch(
        "SELECT id, order_id, kind, status, amount, currency, reason, refund_of, created_at"
        " FROM payments WHERE order_id = $1 ORDER BY created_at, kind",
        order_id,
    )

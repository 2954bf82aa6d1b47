"""SQL for the order service (asyncpg). Every function takes the connection of the caller's
transaction, so a use case decides what commits together."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from order.domain import Line, OrderRef, PricedOrder, Product, Status


async def menu(conn: asyncpg.Connection) -> dict[str, Product]:
    rows = await conn.fetch("SELECT sku, name, price FROM products ORDER BY sku")
    return {r["sku"]: Product(r["sku"], r["name"], r["price"]) for r in rows}


async def products(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT sku, name, description, price FROM products ORDER BY sku")


def _lines_json(lines: tuple[Line, ...]) -> list[dict[str, Any]]:
    return [
        {"sku": x.sku, "name": x.name, "quantity": x.quantity, "unit_price": str(x.unit_price)}
        for x in lines
    ]


def _lines(raw: list[dict[str, Any]]) -> tuple[Line, ...]:
    return tuple(
        Line(x["sku"], x["name"], int(x["quantity"]), Decimal(x["unit_price"])) for x in raw
    )


async def insert_order(
    conn: asyncpg.Connection, *, order_id: UUID, name: str, email: str, payment_token: str,
    currency: str, priced: PricedOrder, trace_id: str,
) -> None:
    await conn.execute(
        "INSERT INTO orders (id, status, customer_name, customer_email, payment_token,"
        " currency, total, lines, trace_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        order_id, Status.PENDING_PAYMENT, name, email, payment_token, currency, priced.total,
        _lines_json(priced.lines), trace_id,
    )
    await append_timeline(conn, order_id, Status.PENDING_PAYMENT, None, None, trace_id)


async def append_timeline(
    conn: asyncpg.Connection, order_id: UUID, status: Status, reason: str | None,
    event_id: UUID | None, trace_id: str,
) -> None:
    await conn.execute(
        "INSERT INTO order_timeline (order_id, status, reason, event_id, trace_id)"
        " VALUES ($1, $2, $3, $4, $5)",
        order_id, status, reason, event_id, trace_id,
    )


async def lock(conn: asyncpg.Connection, order_id: UUID) -> OrderRef | None:
    """The order, locked until the transaction ends (one saga step at a time per order)."""
    row = await conn.fetchrow(
        "SELECT id, status, total, currency, lines, created_at, cancel_requested_at"
        " FROM orders WHERE id = $1 FOR UPDATE",
        order_id,
    )
    if row is None:
        return None
    return OrderRef(row["id"], Status(row["status"]), row["total"], row["currency"],
                    _lines(row["lines"]), row["created_at"],
                    cancel_requested=row["cancel_requested_at"] is not None)


async def mark_cancel_requested(conn: asyncpg.Connection, order_id: UUID) -> None:
    await conn.execute(
        "UPDATE orders SET cancel_requested_at = now(), updated_at = now() WHERE id = $1",
        order_id,
    )


async def set_status(
    conn: asyncpg.Connection, order_id: UUID, status: Status, *, reason: str | None,
    event_id: UUID | None, trace_id: str,
) -> None:
    await conn.execute(
        "UPDATE orders SET status = $2, updated_at = now(),"
        " cancellation_reason = COALESCE(cancellation_reason, $3) WHERE id = $1",
        order_id, status, reason if status in (Status.CANCELLING, Status.CANCELLED) else None,
    )
    await append_timeline(conn, order_id, status, reason, event_id, trace_id)


async def fetch(conn: asyncpg.Connection, order_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order_id)


async def timeline(conn: asyncpg.Connection, order_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT status, reason, event_id, trace_id, at FROM order_timeline WHERE order_id = $1"
        " ORDER BY seq",
        order_id,
    )


async def count_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def recent(
    conn: asyncpg.Connection, status: str | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM orders WHERE ($1::text IS NULL OR status = $1)"
        " ORDER BY created_at DESC LIMIT $2",
        status, limit,
    )


async def claim_idempotency_key(
    conn: asyncpg.Connection, key: str, request_hash: str, order_id: UUID
) -> bool:
    status = await conn.execute(
        "INSERT INTO idempotency_keys (key, request_hash, order_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (key) DO NOTHING",
        key, request_hash, order_id,
    )
    return status == "INSERT 0 1"


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

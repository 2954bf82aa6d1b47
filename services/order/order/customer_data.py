"""The order service's part of a customer's data: export it, and erase it once no saga runs.

Orders, amounts, statuses and timelines stay (bookkeeping); the customer's name and email on
their orders are replaced by :data:`ERASED`. The orders keep their owner, the customer's id: a
pseudonym that names nobody once the identity service has erased the account.

An erasure of a customer with an order in flight waits for its saga to end: the request is
kept in ``pending_erasures`` (with the inbox record, so it survives a crash) and
:func:`erase_pending` erases each customer with no order in flight, from the handler at once and
from a periodic sweep after that, announcing ``order.customer_erased`` in the same transaction.
The request also closes the account (``closed_accounts``): its access tokens, issued before the
erasure, stay valid until they expire, and the order insert refuses an order from it (403).

Retention: :func:`anonymise_older_than` does the same to every ended order older than
``PERSONAL_DATA_RETENTION_DAYS``, from the retention sweep (sagakit.runtime).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import asyncpg

from order.domain import TERMINAL
from sagakit.envelope import EventMeta, EventSource
from sagakit.events import (
    CustomerDataRequested,
    CustomerErasureRequested,
    OrderCustomerData,
    OrderCustomerErased,
)
from sagakit.postgres import add_to_outbox, first_delivery

log = logging.getLogger("order.customer_data")
SOURCE = EventSource("order")
SERVICE = "order"
ERASED = "[erased]"
PUBLISHES = (OrderCustomerData, OrderCustomerErased)


async def export(pool: asyncpg.Pool, event: CustomerDataRequested, meta: EventMeta) -> None:
    """Announce what this service holds about the customer: their orders, as stored."""
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, meta):
            return
        rows = await conn.fetch(
            "SELECT id, status, total, currency, customer_name, customer_email, lines,"
            " created_at, updated_at FROM orders WHERE owner = $1 ORDER BY created_at",
            event.customer_id,
        )
        orders: list[dict[str, Any]] = [
            {**dict(r), "id": str(r["id"]), "total": f"{r['total']:.2f}",
             "created_at": r["created_at"].isoformat(), "updated_at": r["updated_at"].isoformat()}
            for r in rows
        ]
        await add_to_outbox(conn, SOURCE.event(OrderCustomerData(
            export_id=event.export_id, customer_id=event.customer_id, service=SERVICE,
            data={"orders": orders},
        ), event.customer_id))
    log.info("exported %d orders for a data export", len(orders))


async def request_erasure(pool: asyncpg.Pool, event: CustomerErasureRequested,
                          meta: EventMeta) -> None:
    """Note the erasure, and close the account: no new order from it (order.store._place)."""
    async with pool.acquire() as conn, conn.transaction():
        if await first_delivery(conn, meta):
            await conn.execute(
                "INSERT INTO pending_erasures (erasure_id, customer_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING", event.erasure_id, event.customer_id)
            await conn.execute(
                "INSERT INTO closed_accounts (customer_id, erasure_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING", event.customer_id, event.erasure_id)
    await erase_pending(pool)


# An order whose insert began before its account closed and committed after the erasure had
# looked for orders in flight would keep the name: each sweep looks at the accounts closed
# within this window (far longer than an insert takes, or a sweep's period) for a named order,
# and asks for their erasure again, under the same erasure id, which then waits, as any erasure
# does, for that order's saga to end, however long it runs.
_LATE_ORDERS = timedelta(hours=1)
_ERASE_LATE_ORDERS = (
    "INSERT INTO pending_erasures (erasure_id, customer_id)"
    " SELECT c.erasure_id, c.customer_id FROM closed_accounts c"
    " WHERE c.closed_at > now() - $1::interval"
    " AND NOT EXISTS (SELECT FROM pending_erasures p WHERE p.customer_id = c.customer_id)"
    " AND EXISTS (SELECT FROM orders o WHERE o.owner = c.customer_id"
    "             AND (o.customer_name <> $2 OR o.customer_email <> $2))"
    " ON CONFLICT DO NOTHING"
)


async def erase_pending(pool: asyncpg.Pool) -> int:
    """Erase every pending customer with no order in flight; returns how many. A closed
    account's order that slipped in as it closed is pending again first (``_LATE_ORDERS``)."""
    async with pool.acquire() as conn, conn.transaction():
        late = await conn.execute(_ERASE_LATE_ORDERS, _LATE_ORDERS, ERASED)
        if late != "INSERT 0 0":
            log.info("an order slipped in as %s account(s) closed: erasing it too",
                     late.split()[-1])
        ready = await conn.fetch(
            "SELECT erasure_id, customer_id FROM pending_erasures p WHERE NOT EXISTS ("
            " SELECT FROM orders o WHERE o.owner = p.customer_id AND o.status <> ALL($1))"
            " FOR UPDATE SKIP LOCKED",
            [str(s) for s in TERMINAL],
        )
        for row in ready:
            status = await conn.execute(
                "UPDATE orders SET customer_name = $2, customer_email = $2"
                " WHERE owner = $1 AND (customer_name <> $2 OR customer_email <> $2)",
                row["customer_id"], ERASED,
            )
            await conn.execute("DELETE FROM pending_erasures WHERE erasure_id = $1",
                               row["erasure_id"])
            await add_to_outbox(conn, SOURCE.event(OrderCustomerErased(
                erasure_id=row["erasure_id"], customer_id=row["customer_id"], service=SERVICE,
                erased={"orders": int(status.split()[-1])},
            ), row["customer_id"]))
    if ready:
        log.info("erased the personal data of %d customer(s)", len(ready))
    return len(ready)


async def anonymise_older_than(pool: asyncpg.Pool, days: int) -> int:
    """Retention: the name and email of ended orders older than ``days``; returns how many."""
    async with pool.acquire() as conn:
        status = await conn.execute(
            "UPDATE orders SET customer_name = $2, customer_email = $2"
            " WHERE created_at < now() - $1::interval AND status = ANY($3)"
            " AND (customer_name <> $2 OR customer_email <> $2)",
            timedelta(days=days), ERASED, [str(s) for s in TERMINAL])
    count = int(status.split()[-1])
    if count:
        log.info("retention: anonymised %d orders older than %d days", count, days)
    return count

"""A customer's data across the shop: the export (right of access) and the erasure.

The identity service owns customers, so it runs both, by events only (no service calls
another): it announces ``customer.data_requested`` or ``customer.erasure_requested`` through
its outbox, each service answers with its ``<service>.customer_data`` part or its
``<service>.customer_erased`` confirmation, and this module gathers them. A service that is
down when asked answers when it is back: the request waits in its durable queue.

- An export is complete when every service of :data:`SERVICES` has sent its part; the
  account itself (this service's part) is read when the export is shown. Parts hold personal
  data, so exports are deleted by the erasure and by the retention sweep.
- An erasure anonymises the account at once (name, email; the password no longer works) and
  is complete when every service has confirmed. It is asked once per customer: asking again
  returns the same erasure (idempotent).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from identity import throttle
from sagakit.envelope import EventMeta, EventSource
from sagakit.events import (
    CustomerData,
    CustomerDataRequested,
    CustomerErased,
    CustomerErasureRequested,
)
from sagakit.postgres import add_to_outbox, first_delivery

log = logging.getLogger("identity.customer_data")
SOURCE = EventSource("identity")
SERVICES = ("order", "payment", "production")
PUBLISHES = (CustomerDataRequested, CustomerErasureRequested)
ERASED = "[erased]"


class UnknownCustomer(Exception):
    pass


def _status(row: asyncpg.Record) -> dict[str, Any]:
    received = sorted(row["parts"])
    return {"id": row["id"], "customer_id": row["customer_id"],
            "status": "complete" if row["completed_at"] else "pending",
            "requested_at": row["created_at"], "completed_at": row["completed_at"],
            "parts_received": received,
            "parts_missing": [s for s in SERVICES if s not in row["parts"]]}


async def _add_part(conn: asyncpg.Connection, table: str, request_id: UUID, service: str,
                    part: object) -> None:
    """Keep one service's answer; the request is complete once every service has answered.
    A service's first answer stands: ``new || parts`` keeps the value ``parts`` already has (the
    order service may confirm an erasure twice: order.customer_data, late orders)."""
    assert table in ("data_exports", "erasures")
    await conn.execute(
        f"UPDATE {table} SET parts = jsonb_build_object($2::text, $3::jsonb) || parts,"
        " completed_at = CASE WHEN (SELECT count(*) FROM jsonb_object_keys("
        "  parts || jsonb_build_object($2::text, $3::jsonb)) k WHERE k = ANY($4)) = $5"
        "  THEN now() END"
        " WHERE id = $1 AND completed_at IS NULL",
        request_id, service, part, list(SERVICES), len(SERVICES))


async def _customer(conn: asyncpg.Connection, customer_id: UUID) -> asyncpg.Record:
    """The account, its row locked until the transaction ends: an export and an erasure of one
    customer take turns (without it, an export committed while an erasure deleted the
    customer's exports outlived the erasure, with the name and email in its parts)."""
    row = await conn.fetchrow("SELECT id, name, email, lower(email) AS account, created_at,"
                              " erased_at FROM customers WHERE id = $1 FOR UPDATE", customer_id)
    if row is None:
        raise UnknownCustomer(str(customer_id))
    return row


async def export(pool: asyncpg.Pool, customer_id: UUID, requested_by: str,
                 reuse_seconds: int) -> dict[str, Any]:
    """The customer's newest export if pending or recent enough, else a new one (requested)."""
    async with pool.acquire() as conn, conn.transaction():
        account = await _customer(conn, customer_id)  # one export or erasure at a time
        if account["erased_at"] is not None:
            raise UnknownCustomer(str(customer_id))  # nothing to export any more
        row = await conn.fetchrow(
            "SELECT * FROM data_exports WHERE customer_id = $1"
            " AND (completed_at IS NULL OR completed_at > now() - $2::interval)"
            " ORDER BY created_at DESC LIMIT 1", customer_id, timedelta(seconds=reuse_seconds))
        if row is None:
            row = await conn.fetchrow(
                "INSERT INTO data_exports (id, customer_id, requested_by) VALUES ($1, $2, $3)"
                " RETURNING *", uuid4(), customer_id, requested_by)
            await add_to_outbox(conn, SOURCE.event(CustomerDataRequested(
                export_id=row["id"], customer_id=str(customer_id)), customer_id))
            log.info("data export requested")
    shown = _status(row)
    if row["completed_at"] is not None:
        shown["data"] = {"identity": {"account": {
            "id": str(account["id"]), "name": account["name"], "email": account["email"],
            "created_at": account["created_at"].isoformat()}}, **row["parts"]}
    return shown


async def record_part(pool: asyncpg.Pool, event: CustomerData, meta: EventMeta) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, meta):
            return
        await _add_part(conn, "data_exports", event.export_id, event.service, event.data)


async def erase(pool: asyncpg.Pool, customer_id: UUID, requested_by: str) -> dict[str, Any]:
    """Erase the customer (once): the account now, every service's part by events."""
    async with pool.acquire() as conn, conn.transaction():
        account = await _customer(conn, customer_id)
        row = await conn.fetchrow(
            "INSERT INTO erasures (id, customer_id, requested_by) VALUES ($1, $2, $3)"
            " ON CONFLICT (customer_id) DO NOTHING RETURNING *", uuid4(), customer_id,
            requested_by)
        if row is None:  # asked before: the same erasure
            row = await conn.fetchrow("SELECT * FROM erasures WHERE customer_id = $1",
                                      customer_id)
        else:
            await conn.execute(  # its failed log-ins' count (identity.throttle) goes too
                "DELETE FROM login_attempts WHERE account = $1",
                throttle.customer(account["account"]))
            await conn.execute(
                "UPDATE customers SET name = $2, email = 'erased-' || id || '@invalid',"
                " password_hash = $2, erased_at = now() WHERE id = $1", customer_id, ERASED)
            await conn.execute("DELETE FROM data_exports WHERE customer_id = $1", customer_id)
            await add_to_outbox(conn, SOURCE.event(CustomerErasureRequested(
                erasure_id=row["id"], customer_id=str(customer_id)), customer_id))
            log.info("erasure requested")
    return _status(row)


async def erasure_of(pool: asyncpg.Pool, customer_id: UUID) -> dict[str, Any] | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM erasures WHERE customer_id = $1", customer_id)
    return None if row is None else _status(row)


async def record_erased(pool: asyncpg.Pool, event: CustomerErased, meta: EventMeta) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, meta):
            return
        await _add_part(conn, "erasures", event.erasure_id, event.service, event.erased)


async def forget_old_exports(pool: asyncpg.Pool, seconds: int) -> int:
    """Retention: an export holds personal data; it is deleted ``seconds`` after its request."""
    async with pool.acquire() as conn:
        status = await conn.execute(
            "DELETE FROM data_exports WHERE created_at < now() - $1::interval",
            timedelta(seconds=seconds))
    return int(status.split()[-1])

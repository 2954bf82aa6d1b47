"""Retention and the event archive against a real PostgreSQL: old personal data anonymised by
the sweep, the archive append-only and pruned past its retention, a consumed event archived once
however often it is delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import asyncpg
import pytest

from order import customer_data as order_data
from payment import customer_data as payment_data
from sagakit import postgres
from sagakit.archive import PostgresArchive
from sagakit.envelope import PERSONAL_DATA, EventMeta


async def _order(pool: asyncpg.Pool, status: str, age_days: int) -> str:
    order_id = uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO orders (id, status, customer_name, customer_email, payment_token,"
            " currency, total, lines, trace_id, owner, created_at)"
            " VALUES ($1, $2, 'Old Customer', 'old@example.com', 'tok_visa', 'EUR', $3, '[]',"
            " $4, 'someone', now() - $5::interval)",
            order_id, status, Decimal("1.00"), "0" * 32, timedelta(days=age_days))
    return str(order_id)


async def test_ended_orders_past_the_retention_are_anonymised_and_kept(order_db):
    old, young, running = (await _order(order_db, "finished", 800),
                           await _order(order_db, "finished", 10),
                           await _order(order_db, "in_production", 800))
    assert await order_data.anonymise_older_than(order_db, 730) == 1
    async with order_db.acquire() as conn:
        rows = {str(r["id"]): r for r in await conn.fetch(
            "SELECT id, customer_name, customer_email, total, status FROM orders"
            " WHERE id = ANY($1::uuid[])", [old, young, running])}
    assert rows[old]["customer_name"] == rows[old]["customer_email"] == order_data.ERASED
    assert rows[old]["total"] == Decimal("1.00") and rows[old]["status"] == "finished"
    assert rows[young]["customer_email"] == "old@example.com"
    assert rows[running]["customer_email"] == "old@example.com"  # its saga still runs
    assert await order_data.anonymise_older_than(order_db, 730) == 0  # idempotent


async def test_card_holders_past_the_retention_are_anonymised(payment_db):
    async with payment_db.acquire() as conn:
        for token, age in (("tok_old", 800), ("tok_young", 1)):
            await conn.execute(
                "INSERT INTO cards (token, brand, last4, exp_month, exp_year, holder, created_at)"
                " VALUES ($1, 'visa', '4242', 12, 2040, 'Old Holder', now() - $2::interval)",
                token, timedelta(days=age))
    assert await payment_data.anonymise_older_than(payment_db, 730) == 1
    async with payment_db.acquire() as conn:
        holders = dict(await conn.fetch("SELECT token, holder FROM cards"))
    assert holders == {"tok_old": payment_data.ERASED, "tok_young": "Old Holder"}


def _meta(headers: dict[str, str] | None = None) -> EventMeta:
    event_id = uuid4()
    return EventMeta(id=event_id, type="order.created", subject="order-1", attempt=1,
                     consumer="payment", body=b'{"order_id": "order-1"}',
                     headers={"ce-id": str(event_id), "ce-source": "saga-shop/order",
                              "ce-subject": "order-1", **(headers or {})})


async def test_a_consumed_event_is_archived_once_however_often_delivered(payment_db):
    meta = _meta()
    async with payment_db.acquire() as conn:
        assert await postgres.first_delivery(conn, meta)
        assert not await postgres.first_delivery(conn, meta)  # the redelivery
        personal = _meta({PERSONAL_DATA: "true"})
        assert await postgres.first_delivery(conn, personal)
    archived = {str(e.event_id): e for e in await PostgresArchive(payment_db).of_subject("order-1")}
    assert len(archived) == 2
    mine = archived[str(meta.id)]
    assert mine.direction == "consumed" and mine.consumer == "payment"
    assert mine.publisher == "saga-shop/order" and mine.body == {"order_id": "order-1"}
    assert archived[str(personal.id)].body is None and archived[str(personal.id)].body_withheld


async def test_the_archive_is_append_only_and_pruned_past_its_retention(payment_db):
    async with payment_db.acquire() as conn:
        old = await conn.fetchval(
            "INSERT INTO event_archive (direction, publisher, event_id, event_type, subject,"
            " headers, body, at) VALUES ('published', 'saga-shop/payment', $1, 'x', 'old',"
            " '{}', NULL, $2) RETURNING seq", uuid4(), datetime.now(UTC) - timedelta(days=500))
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE event_archive SET subject = 'changed' WHERE seq = $1", old)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM event_archive WHERE subject = 'order-1'")
    assert await PostgresArchive(payment_db).prune(400) == 1
    assert await PostgresArchive(payment_db).of_subject("old") == []
    assert len(await PostgresArchive(payment_db).of_subject("order-1")) == 2  # young: kept

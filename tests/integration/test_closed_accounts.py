"""An erased customer's tokens write nothing personal again, against a real PostgreSQL.

An access token issued before an erasure stays valid until it expires (15 minutes by default).
Once the order and payment services have handled the erasure request, an order or a card from
that account is refused (403 at the API) and nothing is written; a write that was already in
flight when the account closed is erased all the same (payment: its card insert and the erasure
take turns on the owner's lock; order: the erasure sweep erases the late order once it ends).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest

from order import customer_data as order_data
from order import service as orders
from order import webhooks
from order.callbacks import CallbackPolicy
from order.store import AccountClosed
from payment import customer_data as payment_data
from payment import service as payments
from payment import store as payment_store
from payment.domain import Brand, Card
from sagakit.envelope import EventMeta
from sagakit.events import CustomerErasureRequested


def _erasure(customer: str) -> tuple[CustomerErasureRequested, EventMeta]:
    event = CustomerErasureRequested(erasure_id=uuid4(), customer_id=customer)
    return event, EventMeta(id=uuid4(), type="customer.erasure_requested", subject=customer,
                            attempt=1)


async def _place(pool: asyncpg.Pool, owner: str, key: str | None = None) -> UUID:
    order_id, _ = await orders.place_order(
        pool, name="Erin Closed", email="erin@example.com", items=[("fries", 1)],
        payment_token="tok_visa", currency="EUR", owner=owner,
        idempotency_key=f"{owner}:{key}" if key else None, fingerprint="f" if key else "")
    return order_id


async def _orders_of(pool: asyncpg.Pool, owner: str) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch(
            "SELECT id, status, customer_name FROM orders WHERE owner = $1", owner))


async def _outbox_size(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM outbox"))


async def test_an_erased_account_places_no_order_and_nothing_is_written(order_db):
    erin, other = f"erin-{uuid4()}", f"olga-{uuid4()}"
    before = await _place(order_db, erin, key="before")  # a key claimed before the erasure
    async with order_db.acquire() as conn:  # its saga ended, so the erasure is at once
        await conn.execute("UPDATE orders SET status = 'finished' WHERE id = $1", before)
    await order_data.request_erasure(order_db, *_erasure(erin))
    outbox = await _outbox_size(order_db)

    for key in (None, "after"):
        with pytest.raises(orders.AccountClosed):
            await _place(order_db, erin, key=key)
    assert await _place(order_db, erin, key="before") == before  # still its replay
    assert [(r["id"], r["customer_name"]) for r in await _orders_of(order_db, erin)] == [
        (before, order_data.ERASED)]
    async with order_db.acquire() as conn:
        keys = await conn.fetch("SELECT key FROM idempotency_keys WHERE key LIKE $1", f"{erin}:%")
    assert [k["key"] for k in keys] == [f"{erin}:before"]
    assert await _outbox_size(order_db) == outbox  # nothing announced
    await _place(order_db, other)  # nobody else is affected


async def test_an_erased_account_gets_no_webhook_secret_new_or_rotated(order_db):
    erin, other = f"erin-{uuid4()}", f"olga-{uuid4()}"
    async with order_db.acquire() as conn:
        had = await webhooks.secret_of(conn, erin)
    await order_data.request_erasure(order_db, *_erasure(f"{erin}-2"))
    await order_data.request_erasure(order_db, *_erasure(erin))
    async with order_db.acquire() as conn:
        for write in (webhooks.secret_of(conn, erin),
                      webhooks.rotate(conn, erin, timedelta(hours=1)),
                      webhooks.secret_of(conn, f"{erin}-2"),  # none made before
                      webhooks.rotate(conn, f"{erin}-2", timedelta(hours=1))):
            with pytest.raises(AccountClosed):
                await write
        assert await conn.fetchval("SELECT secret FROM webhook_secrets WHERE owner = $1",
                                   erin) == had  # not rotated
        assert await conn.fetchval("SELECT count(*) FROM webhook_secrets WHERE owner = $1",
                                   f"{erin}-2") == 0
        secret, _ = await webhooks.rotate(conn, other, timedelta(hours=1))  # others unaffected
        assert await webhooks.secret_of(conn, other) == secret


async def test_an_order_that_slipped_in_as_the_account_closed_is_erased_when_it_ends(
    order_db,
):
    erin = f"erin-{uuid4()}"
    erasure, meta = _erasure(erin)
    await order_data.request_erasure(order_db, erasure, meta)
    # As if its insert had begun just before the account closed and committed after the
    # erasure looked for orders in flight.
    late = uuid4()
    async with order_db.acquire() as conn:
        await conn.execute(
            "INSERT INTO orders (id, status, customer_name, customer_email, payment_token,"
            " currency, total, lines, trace_id, owner)"
            " VALUES ($1, 'paid', 'Erin Late', 'late@example.com', 'tok_visa', 'EUR', $2, '[]',"
            " $3, $4)", late, Decimal("3.50"), "0" * 32, erin)
    outbox = await _outbox_size(order_db)

    await order_data.erase_pending(order_db)  # the sweep: its erasure is pending again
    assert [r["customer_name"] for r in await _orders_of(order_db, erin)] == ["Erin Late"]
    async with order_db.acquire() as conn:
        assert await conn.fetchval("SELECT erasure_id FROM pending_erasures"
                                   " WHERE customer_id = $1", erin) == erasure.erasure_id
        # However long its saga runs: the window only bounds the look for such orders.
        await conn.execute("UPDATE closed_accounts SET closed_at = now() - interval '1 day'"
                           " WHERE customer_id = $1", erin)
        await conn.execute("UPDATE orders SET status = 'finished' WHERE id = $1", late)
    await order_data.erase_pending(order_db)
    assert [r["customer_name"] for r in await _orders_of(order_db, erin)] == [
        order_data.ERASED]
    assert await _outbox_size(order_db) == outbox + 1  # order.customer_erased, the same erasure
    async with order_db.acquire() as conn:
        confirmed = await conn.fetchval(
            "SELECT body FROM outbox WHERE event_type = 'order.customer_erased'"
            " ORDER BY seq DESC LIMIT 1")
    assert str(erasure.erasure_id) in bytes(confirmed).decode()


async def _tokenize(pool: asyncpg.Pool, owner: str) -> Card:
    return await payments.tokenize_card(
        pool, number="4242 4242 4242 4242", exp_month=12, exp_year=2040, cvc="123",
        holder="Erin Holder", owner=owner)


async def _holders(pool: asyncpg.Pool, owner: str) -> list[str]:
    async with pool.acquire() as conn:
        return [r["holder"] for r in await conn.fetch(
            "SELECT holder FROM cards WHERE owner = $1", owner)]


async def test_an_erased_account_tokenizes_no_card(payment_db):
    erin, other = f"erin-{uuid4()}", f"olga-{uuid4()}"
    await _tokenize(payment_db, erin)
    await payment_data.erase(payment_db, *_erasure(erin))

    with pytest.raises(payments.AccountClosed):
        await _tokenize(payment_db, erin)
    assert await _holders(payment_db, erin) == [payment_data.ERASED]
    await _tokenize(payment_db, other)
    assert await _holders(payment_db, other) == ["Erin Holder"]


async def test_a_card_tokenized_as_the_account_closes_waits_and_is_refused(payment_db):
    erin = f"erin-{uuid4()}"
    async with payment_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await payment_store.close_account(conn, erin)  # the erasure, not committed yet
        tokenizing = asyncio.create_task(_tokenize(payment_db, erin))
        await asyncio.sleep(0.3)
        assert not tokenizing.done()  # it waits for the erasure
        await tx.commit()
    with pytest.raises(payments.AccountClosed):  # and then sees the account closed
        async with asyncio.timeout(5):
            await tokenizing
    assert await _holders(payment_db, erin) == []


async def test_a_card_tokenized_while_the_account_closes_is_erased_with_the_rest(payment_db):
    erin = f"erin-{uuid4()}"
    card = Card(f"tok_{uuid4().hex[:24]}", Brand.VISA, "4242", 12, 2040, "Erin Holder", None,
                owner=erin)
    async with payment_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await payment_store.insert_card(conn, card) is not None  # not committed yet
        erasing = asyncio.create_task(payment_data.erase(payment_db, *_erasure(erin)))
        await asyncio.sleep(0.3)
        assert not erasing.done()  # it waits for the insert in flight
        await tx.commit()
    async with asyncio.timeout(5):
        await erasing
    assert await _holders(payment_db, erin) == [payment_data.ERASED]


async def test_an_erased_owner_without_a_secret_fails_no_webhook_batch(order_db):
    """An order of an erased owner that never had a signing secret (an order from before
    secrets) has no secret to sign with and may not get one: its delivery is parked, and the
    batch it was claimed with goes on (it used to fail, every lease, for every row in it)."""
    erin, olga = f"erin-{uuid4()}", f"olga-{uuid4()}"
    for owner in (erin, olga):
        await orders.place_order(
            order_db, name="Erin Closed", email="erin@example.com", items=[("fries", 1)],
            payment_token="tok_visa", currency="EUR", owner=owner, idempotency_key=None,
            fingerprint="", callback_url="http://127.0.0.1:9/hook")
    async with order_db.acquire() as conn:
        await conn.execute("DELETE FROM webhook_secrets WHERE owner = $1", erin)
        await conn.execute("INSERT INTO closed_accounts (customer_id, erasure_id)"
                           " VALUES ($1, $2)", erin, uuid4())
        secrets = await webhooks.signing_secrets(conn, [erin, olga])
    assert secrets[erin] == [] and len(secrets[olga]) == 1
    sender = webhooks.WebhookSender(
        order_db, CallbackPolicy(()), webhooks.SenderSettings(
            max_attempts=1, backoff_seconds=0.1, backoff_max_seconds=0.1, timeout_seconds=1,
            batch_size=500))
    try:
        assert await sender.deliver_due() >= 2
    finally:
        await sender._http.aclose()
    async with order_db.acquire() as conn:
        rows = {r["owner"]: (r["state"], r["last_error"]) for r in await conn.fetch(
            "SELECT o.owner, d.state, d.last_error FROM webhook_deliveries d"
            " JOIN orders o ON o.id = d.order_id WHERE o.owner = ANY($1)", [erin, olga])}
    assert rows[erin] == ("parked", "refused: the owner's account was erased")
    assert rows[olga][0] == "parked" and "not enabled" in rows[olga][1]  # tried, refused

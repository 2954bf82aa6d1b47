"""The identity's side of a customer's data against a real PostgreSQL: an export asked at the
moment of an erasure never outlives it."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg

from identity import api, customer_data


async def _customer(pool: asyncpg.Pool) -> UUID:
    customer_id = uuid4()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO customers (id, name, email, password_hash)"
                           " VALUES ($1, 'Ana Souza', $2, 'x')", customer_id,
                           f"ana-{customer_id}@example.com")
    return customer_id


async def _export(pool: asyncpg.Pool, customer_id: UUID) -> str:
    try:
        await customer_data.export(pool, customer_id, "test", 300)
    except customer_data.UnknownCustomer:
        return "refused"
    return "requested"


async def test_an_export_asked_with_an_erasure_never_outlives_it(identity_db):
    # Before the row lock, most of these left an export behind (its row committed while the
    # erasure deleted the customer's exports), which the services' parts then filled in.
    for _ in range(20):
        customer_id = await _customer(identity_db)
        await asyncio.gather(
            _export(identity_db, customer_id),
            customer_data.erase(identity_db, customer_id, "test"))
        async with identity_db.acquire() as conn:
            left = await conn.fetchval("SELECT count(*) FROM data_exports WHERE customer_id = $1",
                                       customer_id)
        assert left == 0, "an export outlived the erasure"
        assert await _export(identity_db, customer_id) == "refused"  # and none after it


async def test_a_taken_email_at_sign_up_is_no_error_in_the_database(identity_db):
    """PostgreSQL logs a failed statement with its key (``Key (lower(email))=(...)``): a
    sign-up with a taken email must not fail in the database, or the email lands in its log,
    where no erasure reaches. Six sign-ups racing for one address: one account, no error."""
    email = f"eva-{uuid4().hex[:8]}@example.com"
    async with identity_db.acquire() as conn, conn.transaction():
        assert await api.insert_customer(conn, uuid4(), "Eva", email, "x")
        assert not await api.insert_customer(conn, uuid4(), "Eva", email.upper(), "x")
        # a statement that had failed would have aborted the transaction
        assert await conn.fetchval("SELECT count(*) FROM customers WHERE lower(email) = $1",
                                   email) == 1
    other = f"eva-{uuid4().hex[:8]}@example.com"

    async def sign_up() -> bool:
        async with identity_db.acquire() as conn:
            return await api.insert_customer(conn, uuid4(), "Eva", other, "x")

    assert sorted(await asyncio.gather(*(sign_up() for _ in range(6)))) == [False] * 5 + [True]

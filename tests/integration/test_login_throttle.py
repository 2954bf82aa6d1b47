"""identity.throttle against a real PostgreSQL: attempts on one account are counted however
many arrive at once, a wait is the same for an account that does not exist, a success or an
erasure forgets the count."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import asyncpg

from identity import customer_data
from identity.throttle import LoginThrottle, client_key, customer_key

CUSTOMER, CLIENT = customer_key("{}"), client_key("{}")



async def _attempt(pool: asyncpg.Pool, throttle: LoginThrottle, account: str,
                   key: str = CUSTOMER) -> int:
    async with pool.acquire() as conn:
        return await throttle.attempt(conn, key, account)


async def test_concurrent_guesses_are_each_counted(identity_db):
    throttle = LoginThrottle(free=5, first_wait=60)
    email = f"ana-{uuid4()}@example.com"
    waits = await asyncio.gather(*(_attempt(identity_db, throttle, email) for _ in range(20)))
    assert sorted(waits)[:5] == [0] * 5, waits
    assert all(55 <= w <= 60 for w in sorted(waits)[5:]), waits
    async with identity_db.acquire() as conn:  # the waiting ones were not counted
        assert await conn.fetchval(
            f"SELECT failures FROM login_attempts WHERE account = {CUSTOMER.format('$1')}",
            email) == 5
    # The same email typed otherwise is the same account; a client of that name is not.
    assert await _attempt(identity_db, throttle, f"  {email.upper()} ") >= 55
    assert await _attempt(identity_db, throttle, email, CLIENT) == 0


async def test_a_success_starts_the_count_again(identity_db):
    throttle = LoginThrottle(free=2, first_wait=0.5)
    email = f"bob-{uuid4()}@example.com"
    assert [await _attempt(identity_db, throttle, email) for _ in range(3)] == [0, 0, 1]
    await asyncio.sleep(0.6)
    assert await _attempt(identity_db, throttle, email) == 0  # the third attempt, counted
    assert await _attempt(identity_db, throttle, email) == 1  # now 1 s: it doubled
    async with identity_db.acquire() as conn:
        await throttle.succeeded(conn, CUSTOMER, email)
    assert [await _attempt(identity_db, throttle, email) for _ in range(2)] == [0, 0]


async def test_an_erasure_and_the_retention_forget_counts(identity_db):
    throttle = LoginThrottle(free=1, first_wait=60, forget=60)
    customer_id, email = uuid4(), f"cid-{uuid4()}@example.com"
    async with identity_db.acquire() as conn:
        await conn.execute("INSERT INTO customers (id, name, email, password_hash)"
                           " VALUES ($1, 'Cid', $2, 'x')", customer_id, email)
    assert await _attempt(identity_db, throttle, email) == 0
    assert await _attempt(identity_db, throttle, email) > 0
    await customer_data.erase(identity_db, customer_id, "test")
    assert await _attempt(identity_db, throttle, email) == 0  # nothing of it is left

    idle = f"idle-{uuid4()}@example.com"
    assert await _attempt(identity_db, throttle, idle) == 0
    async with identity_db.acquire() as conn:
        await conn.execute("UPDATE login_attempts SET last_at = now() - interval '2 minutes',"
                           " wait_until = now() - interval '1 minute'"
                           f" WHERE account = {CUSTOMER.format('$1')}", idle)
    assert await throttle.forget_idle(identity_db) >= 1
    async with identity_db.acquire() as conn:
        assert await conn.fetchval(
            f"SELECT count(*) FROM login_attempts WHERE account = {CUSTOMER.format('$1')}",
            idle) == 0

"""identity.throttle against a real PostgreSQL: failures on one account are counted however
many arrive at once, the wait doubles, a success, an erasure or the retention forgets the
count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from uuid import uuid4

import asyncpg

from identity import customer_data
from identity.throttle import LoginThrottle, client, customer


async def _wait(pool: asyncpg.Pool, throttle: LoginThrottle, account: str,
                key: Callable[[str], str] = customer) -> int:
    async with pool.acquire() as conn:
        return await throttle.wait_left(conn, key(account))


async def _fail(pool: asyncpg.Pool, throttle: LoginThrottle, account: str,
                key: Callable[[str], str] = customer) -> None:
    async with pool.acquire() as conn:
        await throttle.failed(conn, key(account))


async def test_concurrent_failures_are_each_counted(identity_db):
    throttle = LoginThrottle(free=5, first_wait=60, longest_wait=60)
    email = f"ana-{uuid4()}@example.com"
    assert await _wait(identity_db, throttle, email) == 0  # never failed: no row, no wait
    await asyncio.gather(*(_fail(identity_db, throttle, email) for _ in range(4)))
    assert await _wait(identity_db, throttle, email) == 0  # four: still free
    await asyncio.gather(*(_fail(identity_db, throttle, email) for _ in range(16)))
    async with identity_db.acquire() as conn:  # no failure lost to a concurrent one
        assert await conn.fetchval(
            "SELECT failures FROM login_attempts WHERE account = $1",
            customer(email)) == 20
    assert 55 <= await _wait(identity_db, throttle, email) <= 60
    # A client of that name is another account. (The same email typed otherwise is the same
    # account by the database's lower(): tests/e2e/test_authz.py, through the token endpoint.)
    assert await _wait(identity_db, throttle, email, client) == 0


async def test_the_wait_doubles_and_a_success_starts_the_count_again(identity_db):
    throttle = LoginThrottle(free=2, first_wait=0.5)
    email = f"bob-{uuid4()}@example.com"
    await _fail(identity_db, throttle, email)
    assert await _wait(identity_db, throttle, email) == 0
    await _fail(identity_db, throttle, email)
    assert await _wait(identity_db, throttle, email) == 1  # 0.5 s, said as 1
    await asyncio.sleep(0.6)
    assert await _wait(identity_db, throttle, email) == 0
    await _fail(identity_db, throttle, email)
    async with identity_db.acquire() as conn:
        left = await conn.fetchval(
            "SELECT extract(epoch FROM wait_until - clock_timestamp()) FROM login_attempts"
            " WHERE account = $1", customer(email))
        assert 0.9 < left <= 1.0  # doubled
        await throttle.succeeded(conn, customer(email))
    assert await _wait(identity_db, throttle, email) == 0
    await _fail(identity_db, throttle, email)
    assert await _wait(identity_db, throttle, email) == 0  # one failure since: free again


async def test_an_erasure_and_the_retention_forget_counts(identity_db):
    throttle = LoginThrottle(free=1, first_wait=60, forget=60)
    # Kept as typed at sign-up, counted (as log-in does) under the database's lower() of it.
    customer_id, email = uuid4(), f"C\u0130d-{uuid4()}@Example.COM"
    async with identity_db.acquire() as conn:
        await conn.execute("INSERT INTO customers (id, name, email, password_hash)"
                           " VALUES ($1, 'Cid', $2, 'x')", customer_id, email)
        account = await conn.fetchval("SELECT lower($1)", email)
    # (where the database folds U+0130 to i, as this machine's does, Python's lower() differs)
    await _fail(identity_db, throttle, account)
    assert await _wait(identity_db, throttle, account) > 0
    await customer_data.erase(identity_db, customer_id, "test")
    assert await _wait(identity_db, throttle, account) == 0  # nothing of it is left

    idle = f"idle-{uuid4()}@example.com"
    await _fail(identity_db, throttle, idle)
    async with identity_db.acquire() as conn:
        await conn.execute("UPDATE login_attempts SET last_at = now() - interval '2 minutes',"
                           " wait_until = now() - interval '1 minute'"
                           " WHERE account = $1", customer(idle))
    assert await throttle.forget_idle(identity_db) >= 1
    async with identity_db.acquire() as conn:
        assert await conn.fetchval(
            "SELECT count(*) FROM login_attempts WHERE account = $1",
            customer(idle)) == 0

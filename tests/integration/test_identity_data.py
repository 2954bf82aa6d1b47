"""The identity's side of a customer's data against a real PostgreSQL: an export asked at the
moment of an erasure never outlives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

from identity import customer_data
from sagakit import postgres
from tests.conftest import Infra

MIGRATIONS = Path(__file__).parents[2] / "services" / "identity" / "identity" / "migrations"


@pytest.fixture(scope="module")
async def identity(infra: Infra, own_name: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await postgres.create_pool(
        infra.fresh_database(f"{own_name}_identity", "identity_svc", "identity_svc"),
        max_size=6)
    await postgres.migrate(pool, [MIGRATIONS])
    yield pool
    await pool.close()


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


async def test_an_export_asked_with_an_erasure_never_outlives_it(identity):
    # Before the row lock, most of these left an export behind (its row committed while the
    # erasure deleted the customer's exports), which the services' parts then filled in.
    for _ in range(20):
        customer_id = await _customer(identity)
        await asyncio.gather(
            _export(identity, customer_id),
            customer_data.erase(identity, customer_id, "test"))
        async with identity.acquire() as conn:
            left = await conn.fetchval("SELECT count(*) FROM data_exports WHERE customer_id = $1",
                                       customer_id)
        assert left == 0, "an export outlived the erasure"
        assert await _export(identity, customer_id) == "refused"  # and none after it

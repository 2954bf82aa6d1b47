"""The order service's writes against a real PostgreSQL: each step applies once, atomically.

A saga step reads the order, decides, and writes only if the order is still at the version it
read (order.store.transition). These tests race two writers on one version, and check what
one statement commits together, and that only writes that announce an event wake the relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

from order import store
from order.domain import Line, OrderFaults, OrderRef, PricedOrder, Status
from sagakit import postgres, units, web
from sagakit.consuming import is_outage
from sagakit.envelope import EventMeta, OutgoingEvent
from sagakit.events import OrderCreated, OrderLine, OrderReceived
from sagakit.faults import PostgresFaultStore
from sagakit.outbox import PostgresOutboxRelay
from tests.conftest import Infra

ROLE = "order_svc"
MIGRATIONS = Path(__file__).parents[2] / "services" / "order" / "order" / "migrations"
LINE = Line("burger-classic", "Classic burger", 2, Decimal("8.50"))


@pytest.fixture(scope="module")
async def pool(infra: Infra, own_name: str) -> AsyncIterator[asyncpg.Pool]:
    url = infra.fresh_database(own_name, ROLE, ROLE)
    created = await postgres.create_pool(url, max_size=4)
    await postgres.migrate(created, [MIGRATIONS])
    try:
        yield created
    finally:
        await created.close()


def _event(event: OrderCreated | OrderReceived) -> OutgoingEvent:
    return OutgoingEvent.build(event, source="test", subject=str(event.order_id))


async def _new_order(pool: asyncpg.Pool) -> OrderRef:
    order_id = uuid4()
    priced = PricedOrder((LINE,))
    created = _event(OrderCreated(
        order_id=order_id, amount=priced.total, currency="EUR", payment_token="tok_visa",
        lines=(OrderLine(sku=LINE.sku, name=LINE.name, quantity=LINE.quantity,
                         unit_price=LINE.unit_price),)))
    async with pool.acquire() as conn:
        row = await store.insert_order(
            conn, order_id=order_id, name="Ana", email="ana@example.com",
            payment_token="tok_visa", currency="EUR", priced=priced, trace_id="0" * 32, owner="ana",
            announce=[created])
        assert row is not None
        assert row["status"] == Status.PENDING_PAYMENT and row["step_at"] is not None
        order, seen = await store.read(conn, order_id)
    assert order is not None and not seen
    return order


def _meta() -> EventMeta:
    return EventMeta(id=uuid4(), type="payment.processed", subject="", attempt=1)


async def test_a_new_order_its_first_step_and_its_event_commit_in_one_statement(pool):
    order = await _new_order(pool)
    async with pool.acquire() as conn:
        steps = await conn.fetch("SELECT status FROM order_timeline WHERE order_id = $1",
                                 order.id)
        events = await conn.fetch("SELECT event_type FROM outbox WHERE subject = $1",
                                  str(order.id))
    assert [s["status"] for s in steps] == ["pending_payment"]
    assert [e["event_type"] for e in events] == ["order.created"]
    assert order.version == 0 and order.lines == (LINE,)


async def test_of_two_steps_decided_on_one_version_only_the_first_applies(pool):
    order = await _new_order(pool)
    first, second = _meta(), _meta()
    received = [_event(OrderReceived(order_id=order.id, lines=()))]

    async def step(meta: EventMeta) -> bool:
        async with pool.acquire() as conn:
            return await store.transition(conn, order, Status.PAID, reason=None, event=meta,
                                          trace_id="0" * 32, announce=received)

    outcomes = await asyncio.gather(step(first), step(second))
    assert sorted(outcomes) == [False, True]
    async with pool.acquire() as conn:
        now, _ = await store.read(conn, order.id)
        steps = await conn.fetchval(
            "SELECT count(*) FROM order_timeline WHERE order_id = $1", order.id)
        sent = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE subject = $1 AND event_type = 'order.received'",
            str(order.id))
        noted = await conn.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = ANY($1::uuid[])", [first.id, second.id])
        _, seen_winner = await store.read(conn, order.id, (first if outcomes[0] else second).id)
    assert now is not None and now.status is Status.PAID and now.version == 1
    assert (steps, sent, noted) == (2, 1, 1)  # the loser left no trace at all
    assert seen_winner  # its redelivery will be recognised


async def test_only_a_unit_of_work_that_announced_an_event_wakes_the_relay(pool):
    """No NOTIFY (it costs every committing transaction a database-wide lock): the delivery or
    request that wrote events wakes this process's relay when it ends (sagakit.units)."""
    order = await _new_order(pool)
    wake = asyncio.Event()
    units.register(wake)
    try:
        with units.unit_of_work() as unit:
            async with pool.acquire() as conn:
                assert await store.transition(
                    conn, order, Status.PAID, reason=None, event=_meta(), trace_id="0" * 32,
                    announce=[_event(OrderReceived(order_id=order.id, lines=()))])
                assert not wake.is_set()  # not before the unit ends (its commit, in general)
                assert unit.wrote == {units.OUTBOX}
                paid, _ = await store.read(conn, order.id)
        assert wake.is_set()
        wake.clear()
        assert paid is not None
        with units.unit_of_work():
            async with pool.acquire() as conn:
                assert await store.transition(conn, paid, Status.RECEIVED, reason=None,
                                              event=_meta(), trace_id="0" * 32)
        assert not wake.is_set()  # announced nothing
        async with pool.acquire() as conn:  # and the database notifies nobody any more
            assert not await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify'")
    finally:
        units.unregister(wake)


async def test_a_unit_of_work_that_wrote_a_webhook_delivery_wakes_the_sender(pool):
    """The webhook sender is woken like the relays: by the unit that wrote a delivery row, for
    an order with a callback URL only (no NOTIFY, no listening connection)."""
    wake = asyncio.Event()
    units.register(wake, store.WEBHOOK_DELIVERIES)
    try:
        order_id, priced = uuid4(), PricedOrder((LINE,))
        with units.unit_of_work() as unit:
            async with pool.acquire() as conn:
                assert await store.insert_order(
                    conn, order_id=order_id, name="Ana", email="ana@example.com",
                    payment_token="tok_visa", currency="EUR", priced=priced,
                    trace_id="0" * 32, owner="ana", announce=[],
                    callback_url="https://hooks.example.com/ana")
                assert unit.wrote == {store.WEBHOOK_DELIVERIES} and not wake.is_set()
        assert wake.is_set()
        wake.clear()
        async with pool.acquire() as conn:
            hooked, _ = await store.read(conn, order_id)
        assert hooked is not None
        with units.unit_of_work() as unit:
            async with pool.acquire() as conn:
                assert await store.transition(conn, hooked, Status.PAID, reason=None,
                                              event=_meta(), trace_id="0" * 32)
        assert unit.wrote == set() and wake.is_set()  # told, and forgotten once told
        wake.clear()

        plain = await _new_order(pool)
        with units.unit_of_work():
            async with pool.acquire() as conn:
                assert await store.transition(conn, plain, Status.PAID, reason=None,
                                              event=_meta(), trace_id="0" * 32)
        assert not wake.is_set()
        async with pool.acquire() as conn:
            deliveries = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE order_id = ANY($1::uuid[])",
                [order_id, plain.id])
            assert deliveries == 2  # the hooked order's two entries; none for the other
            assert not await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'webhook_deliveries_notify'")
    finally:
        units.unregister(wake, store.WEBHOOK_DELIVERIES)


async def test_a_change_by_any_other_writer_bumps_the_version_too(pool):
    """A replica of the previous release (row locks, no version) or an operator's UPDATE."""
    order = await _new_order(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE orders SET status = 'paid' WHERE id = $1", order.id)
        assert not await store.transition(conn, order, Status.CANCELLING, reason="late",
                                          event=None, trace_id="0" * 32)
        now, _ = await store.read(conn, order.id)
    assert now is not None and now.status is Status.PAID and now.version == 1


async def test_an_event_applied_once_never_applies_again_even_on_the_newest_version(pool):
    """The order service decides a step on the state it last wrote (order.service.KnownOrders),
    without reading the inbox first: the write itself refuses an event already applied."""
    order = await _new_order(pool)
    meta = _meta()
    async with pool.acquire() as conn:
        assert await store.transition(conn, order, Status.PAID, reason=None, event=meta,
                                      trace_id="0" * 32)
        paid, _ = await store.read(conn, order.id)
        assert paid is not None
        # What the service remembers after its write is what the database now holds.
        assert (paid.status, paid.version) == (Status.PAID, order.version + 1)
        assert not await store.transition(conn, paid, Status.RECEIVED, reason=None, event=meta,
                                          trace_id="0" * 32)
        now, seen = await store.read(conn, order.id, meta.id)
        steps = await conn.fetchval(
            "SELECT count(*) FROM order_timeline WHERE order_id = $1", order.id)
    assert now is not None and (now.status, now.version, seen) == (Status.PAID, paid.version, True)
    assert steps == 2


class _Recorder:
    """Stands in for the broker: what the relay published."""

    def __init__(self) -> None:
        self.published: list[OutgoingEvent] = []

    async def publish_all(self, events: list[OutgoingEvent]) -> None:
        self.published += events


async def test_the_relay_takes_no_batch_while_the_relay_paused_switch_is_on(pool):
    """The switch is part of the statement that takes a batch: an order placed right after it
    was turned on stays in the outbox, whichever replica's relay looks next."""
    faults = PostgresFaultStore(lambda: pool, OrderFaults().model_dump())
    recorder = _Recorder()
    relay = PostgresOutboxRelay(pool, recorder,  # type: ignore[arg-type]
                                held_while=faults.condition("relay_paused"))
    while await relay.drain_once():  # what earlier tests of this module left
        pass
    recorder.published.clear()
    await faults.change({"relay_paused": True}, who="test", request_id=None)
    try:
        order = await _new_order(pool)
        assert await relay.drain_once() == 0
        async with pool.acquire() as conn:
            waiting = await conn.fetchval("SELECT count(*) FROM outbox WHERE subject = $1",
                                          str(order.id))
        assert waiting == 1 and recorder.published == []
    finally:
        wake = asyncio.Event()
        units.register(wake)
        try:
            await faults.change({"relay_paused": False}, who="test", request_id=None)
        finally:
            units.unregister(wake)
    assert wake.is_set()  # turning the switch off wakes the relays: no wait for a sweep
    assert await relay.drain_once() == 1
    assert [(e.type, e.subject) for e in recorder.published] == [("order.created", str(order.id))]


async def test_an_idempotency_key_is_claimed_by_the_statement_that_places_the_order(pool):
    """Two requests with one key, at once: one order, one event; the other writes nothing and
    finds the key's order (whose commit its claim waited for)."""
    key = f"ana:{uuid4()}"
    priced = PricedOrder((LINE,))

    async def attempt() -> tuple[UUID, asyncpg.Record | None]:
        order_id = uuid4()
        created = _event(OrderCreated(
            order_id=order_id, amount=priced.total, currency="EUR", payment_token="tok_visa",
            lines=(OrderLine(sku=LINE.sku, name=LINE.name, quantity=LINE.quantity,
                             unit_price=LINE.unit_price),)))
        async with pool.acquire() as conn:
            return order_id, await store.insert_order(
                conn, order_id=order_id, name="Ana", email="ana@example.com",
                payment_token="tok_visa", currency="EUR", priced=priced, trace_id="0" * 32,
                owner="ana", announce=[created], idempotency_key=(key, "hash-1"))

    outcomes = await asyncio.gather(*(attempt() for _ in range(4)))
    placed = [order_id for order_id, row in outcomes if row is not None]
    assert len(placed) == 1
    async with pool.acquire() as conn:
        claimed = await store.idempotency_key(conn, key)
        orders = await conn.fetchval("SELECT count(*) FROM orders WHERE id = ANY($1::uuid[])",
                                     [order_id for order_id, _ in outcomes])
        events = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE subject = ANY($1::text[])",
            [str(order_id) for order_id, _ in outcomes])
    assert claimed is not None and claimed["order_id"] == placed[0]
    assert claimed["request_hash"] == "hash-1"
    assert (orders, events) == (1, 1)


async def test_a_statement_the_database_cut_off_is_an_outage_not_a_bug(pool):
    """A PostgreSQL that stops or restarts ends the statements in flight ("terminating
    connection due to administrator command"): a consumer retries the event for as long as
    that lasts, the API answers 503 with Retry-After."""
    async with pool.acquire() as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        running = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(10)"))
        await asyncio.sleep(0.3)
        async with pool.acquire() as other:  # what a database's stop does to its sessions
            assert await other.fetchval("SELECT pg_terminate_backend($1)", backend)
        with pytest.raises(asyncpg.PostgresError) as cut:  # asyncpg says it as either of two
            await running
    assert is_outage(cut.value)
    answer = web._unexpected(cut.value)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"

"""An order's live timeline against a real PostgreSQL: NOTIFY on commit, one listener per process
fanning out by order id, resumption by Last-Event-ID; then the endpoint of ``python -m order``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from order import store
from order.domain import OrderRef, Status
from order.stream_api import RECONNECT_MS, _follow
from sagakit import postgres
from sagakit.envelope import EventMeta
from sagakit.notifications import NotificationFanout, TooManySubscribers
from sagakit.waits import within
from tests.conftest import Infra
from tests.integration.conftest import ServiceProcess
from tests.integration.test_order_store import MIGRATIONS, ROLE, _new_order


@pytest.fixture(scope="module")
def database_url(infra: Infra, own_name: str) -> str:
    return infra.fresh_database(own_name, ROLE, ROLE)


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await postgres.create_pool(database_url, max_size=4)
    await postgres.migrate(created, [MIGRATIONS])
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def feed(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[NotificationFanout]:
    fanout = NotificationFanout(database_url, store.TIMELINE_CHANNEL, max_subscribers=3)
    await fanout.start()
    try:
        yield fanout
    finally:
        await fanout.stop()


async def _step(pool: asyncpg.Pool, order: OrderRef, status: Status) -> OrderRef:
    async with pool.acquire() as conn:
        assert await store.transition(
            conn, order, status, reason=None, trace_id="0" * 32,
            event=EventMeta(id=uuid4(), type="test.step", subject="", attempt=1))
        moved, _ = await store.read(conn, order.id)
    assert moved is not None
    return moved


async def _read(pool: asyncpg.Pool, order: OrderRef) -> OrderRef:
    async with pool.acquire() as conn:
        now, _ = await store.read(conn, order.id)
    assert now is not None
    return now


def _events(chunks: list[bytes]) -> list[dict[str, str]]:
    """The SSE events among ``chunks`` (comments and the ``retry`` field left out)."""
    events = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":") and ": " in line)
        if "data" in fields:
            events.append(fields)
    return events


async def _followed(pool: asyncpg.Pool, *orders: OrderRef, seconds: float = 60) -> None:
    async with pool.acquire() as conn:
        for order in orders:
            await store.follow(conn, order.id, seconds)


async def test_a_committed_entry_wakes_only_the_subscribers_of_its_order(pool, feed):
    mine, theirs = await _new_order(pool), await _new_order(pool)
    await _followed(pool, mine, theirs)
    first, second = feed.subscribe(str(mine.id)), feed.subscribe(str(mine.id))
    other = feed.subscribe(str(theirs.id))
    await asyncio.sleep(0.3)  # the two creations' own notifications may still be on their way
    for subscription in (first, second, other):
        subscription.clear()
    await _step(pool, mine, Status.PAID)
    assert await first.wait(5) and await second.wait(5)
    assert not await other.wait(0.3)


async def test_only_an_order_someone_follows_notifies_and_only_while_followed(
        pool, database_url):
    """A NOTIFY costs every committing transaction a database-wide lock: the timeline sends
    one only for an order a stream follows (store.follow), until its time is up."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(store.TIMELINE_CHANNEL, lambda *a: heard.put_nowait(a[3]))
    # (and no other NOTIFY: the webhook senders' is for an order with a callback URL only)
    await listener.add_listener("webhook_deliveries", lambda *a: heard.put_nowait(a[2]))
    try:
        unfollowed, followed, lapsed = [await _new_order(pool) for _ in range(3)]
        await _followed(pool, lapsed, seconds=0.2)
        await asyncio.sleep(0.4)  # the lapsed follower's time is up
        await _followed(pool, followed)
        for order in (unfollowed, followed, lapsed):
            await _step(pool, order, Status.PAID)
        assert await within(5, heard.get()) == str(followed.id)
        await asyncio.sleep(0.3)
        assert heard.empty()  # nothing for the other two
        async with pool.acquire() as conn:  # and the lapsed one's note is gone
            left = await conn.fetch("SELECT order_id FROM order_followers")
        assert lapsed.id not in {r["order_id"] for r in left}
        # Followed again after its time was up (its own stale note replaced by the new one).
        again = await _new_order(pool)
        await _followed(pool, again, seconds=0.2)
        await asyncio.sleep(0.4)
        await _followed(pool, again)
        await _step(pool, again, Status.PAID)
        assert await within(5, heard.get()) == str(again.id)
    finally:
        await listener.close()


async def test_a_rolled_back_entry_wakes_nobody(pool, feed):
    order = await _new_order(pool)
    await _followed(pool, order)
    subscription = feed.subscribe(str(order.id))
    subscription.clear()
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("INSERT INTO order_timeline (order_id, status, trace_id)"
                           " VALUES ($1, 'paid', $2)", order.id, "0" * 32)
        await transaction.rollback()
    assert not await subscription.wait(0.3)


async def test_many_subscribers_share_one_listening_connection(pool, feed, database_url):
    async def backends() -> int:
        async with pool.acquire() as conn:
            return int(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"))

    before = await backends()
    subscriptions = [feed.subscribe(str(uuid4())) for _ in range(3)]
    assert await backends() == before
    with pytest.raises(TooManySubscribers):
        feed.subscribe(str(uuid4()))
    subscriptions[0].close()
    subscriptions[0].close()  # closing twice frees one slot, not two
    assert feed.subscribers == 2
    feed.subscribe(str(uuid4()))


async def test_the_stream_sends_each_entry_as_it_commits_and_ends_after_the_terminal_one(
        pool, feed):
    order = await _new_order(pool)
    subscription = feed.subscribe(str(order.id))
    chunks: list[bytes] = []
    stream = _follow(pool, order.id, 0, False, subscription, heartbeat=0.2)

    async def read_all() -> None:
        async for chunk in stream:
            chunks.append(chunk)

    reader = asyncio.create_task(read_all())
    await asyncio.sleep(0.5)  # idle: heartbeats only
    assert [e["data"] for e in _events(chunks)] and b": heartbeat\n\n" in chunks
    for status in (Status.PAID, Status.RECEIVED, Status.IN_PRODUCTION, Status.FINISHED):
        order = await _step(pool, order, status)
    await within(5, reader)  # the stream ended by itself
    events = _events(chunks)
    assert [json.loads(e["data"])["status"] for e in events] == [
        "pending_payment", "paid", "received", "in_production", "finished"]
    # Each entry's position in its order's timeline: no shop-wide count shows through.
    assert [int(e["id"]) for e in events] == [1, 2, 3, 4, 5]
    assert {e["event"] for e in events} == {"status"}
    assert chunks[0].startswith(b"retry: ")


async def test_resuming_with_a_last_event_id_sends_only_later_entries(pool, feed):
    order = await _new_order(pool)
    for status in (Status.PAID, Status.RECEIVED):
        order = await _step(pool, order, status)
    async with pool.acquire() as conn:
        seqs = [r["n"] for r in await store.timeline_after(conn, order.id, 0)]
    assert seqs == [1, 2, 3]

    async def resumed(after: int, ended: bool) -> list[dict[str, str]]:
        subscription = feed.subscribe(str(order.id))
        chunks = []
        try:
            async with asyncio.timeout(0.5 if not ended else 5):
                async for chunk in _follow(pool, order.id, after, ended, subscription, 10):
                    chunks.append(chunk)
        except TimeoutError:
            assert not ended, "a finished order's stream must end by itself"
        finally:
            subscription.close()
        return _events(chunks)

    # An id past the last entry (one from before ids were positions) is no position: all again.
    assert [int(e["id"]) for e in await resumed(10_000, ended=False)] == [1, 2, 3]
    later = await resumed(seqs[0], ended=False)
    assert [int(e["id"]) for e in later] == seqs[1:]
    assert [json.loads(e["data"])["status"] for e in later] == ["paid", "received"]
    assert await resumed(seqs[-1], ended=False) == []
    # After the end: resuming past the terminal entry ends at once, with nothing to send.
    for status in (Status.IN_PRODUCTION, Status.FINISHED):
        order = await _step(pool, order, status)
    async with pool.acquire() as conn:
        last = (await store.timeline_after(conn, order.id, 0))[-1]["n"]
    assert await resumed(last, ended=True) == []
    assert [json.loads(e["data"])["status"] for e in await resumed(seqs[-1], ended=True)] == [
        "in_production", "finished"]


async def _step_arrives_at_once(pool: asyncpg.Pool, order: OrderRef,
                                next_chunk: asyncio.Future[bytes]) -> None:
    """Pay ``order``: its stream's next chunk is that entry, long before any heartbeat."""
    await _step(pool, order, Status.PAID)
    paid = await within(2, next_chunk)
    assert json.loads(_events([paid])[0]["data"])["status"] == "paid"


async def test_the_stream_is_woken_by_the_notify_of_its_own_order(pool, feed):
    """The heartbeat is far away: only the NOTIFY for the order the stream follows can bring
    its new entry this soon."""
    order = await _new_order(pool)
    subscription = feed.subscribe(str(order.id))
    stream = _follow(pool, order.id, 0, False, subscription, heartbeat=30)
    try:
        assert await within(5, anext(stream)) == f"retry: {RECONNECT_MS}\n\n".encode()
        assert json.loads(_events([await within(5, anext(stream))])[0]["data"])["status"] == (
            "pending_payment")
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)
        await _step_arrives_at_once(pool, order, waiting)
    finally:
        subscription.close()
        await stream.aclose()


async def test_a_follow_waits_for_a_step_in_flight_so_no_entry_falls_between(pool):
    """A step that updated the order but has not committed holds its row: the note waits for it,
    so the follower's next read sees that step's entry (and later steps see the note)."""
    order = await _new_order(pool)
    async with pool.acquire() as stepping:
        transaction = stepping.transaction()
        await transaction.start()
        assert await store.transition(stepping, order, Status.PAID, reason=None,
                                      trace_id="0" * 32, event=None)
        noting = asyncio.ensure_future(_followed(pool, order))
        await asyncio.sleep(0.3)
        assert not noting.done()  # waiting for the step in flight
        await transaction.commit()
    await within(5, noting)


async def test_a_stream_notes_its_order_again_after_its_listener_reconnected(pool, feed):
    """A restarted database has emptied order_followers (UNLOGGED): each stream notes its order
    again once its listener is back, or its entries would wait for the heartbeat."""
    feed.reconnect_seconds = 0.1
    order = await _new_order(pool)
    subscription = feed.subscribe(str(order.id))
    stream = _follow(pool, order.id, 0, False, subscription, heartbeat=30)
    try:
        await within(5, anext(stream))  # retry:
        await within(5, anext(stream))  # pending_payment
        waiting = asyncio.ensure_future(anext(stream))
        connected = feed.connections
        async with pool.acquire() as conn:  # what a crash does to the table and the listener
            await conn.execute("TRUNCATE order_followers")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'")
        for _ in range(50):
            if feed.connections > connected:
                break
            await asyncio.sleep(0.1)
        assert feed.connections > connected
        await asyncio.sleep(0.3)  # the stream, woken by the reconnection, reads and notes again
        await _step_arrives_at_once(pool, order, waiting)
    finally:
        subscription.close()
        await stream.aclose()


async def test_a_listener_that_lost_its_connection_listens_again_and_wakes_everyone(
        pool, feed):
    order = await _new_order(pool)
    await _followed(pool, order)
    subscription = feed.subscribe(str(order.id))
    subscription.clear()
    feed.reconnect_seconds = 0.1
    async with pool.acquire() as conn:  # what a database restart does to the listener
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'")
    assert await subscription.wait(5)  # woken on reconnecting: entries may have been missed
    subscription.clear()
    await _step(pool, order, Status.PAID)
    assert await subscription.wait(5)


# --- the endpoint, in the service process ------------------------------------------------------


@pytest.fixture(scope="module")
async def service(rabbitmq_url: str, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    env = {
        "ORDER_DATABASE_URL": database_url,
        "RABBITMQ_URL": rabbitmq_url,
        "ORDER_MAX_EVENT_STREAMS": "1",
        "ORDER_EVENT_STREAM_HEARTBEAT_SECONDS": "0.2",
    }
    log_path: Path = tmp_path_factory.mktemp("order-events") / "service.log"
    async with ServiceProcess("order", env, log_path) as running:
        yield running


async def test_the_endpoint_streams_heartbeats_caps_streams_and_answers_bad_input_in_json(
        service, http):
    placed = await http.post("/api/v1/orders", json={
        "customer": {"name": "Ana", "email": "ana@example.com"},
        "items": [{"sku": "fries", "quantity": 1}], "payment_token": "tok_visa"})
    assert placed.status_code == 202, placed.text
    url = f"/api/v1/orders/{placed.json()['id']}/events"
    async with http.stream("GET", url) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-accel-buffering"] == "no"
        # Read through one iterator held to the end of the block: an `async for` left by
        # `break` drops its generator, whose finalizer (whenever the GC runs) closes the
        # response, and with it this stream's slot.
        chunks = stream.aiter_text()
        seen = ""
        async with asyncio.timeout(5):
            while ": heartbeat" not in seen:
                seen += await anext(chunks)
        assert '"status":"pending_payment"' in seen
        # The one slot is taken: a second stream is refused, in JSON, with Retry-After. (Bounded:
        # were it wrongly accepted, the stream of an order that never ends would never end.)
        async with asyncio.timeout(10):
            busy = await http.get(url)
        assert busy.status_code == 503 and busy.headers["retry-after"]
        assert busy.json()["title"] == "Too many event streams"
    # The slot is free again once the first client left.
    async def reopened() -> bool:
        async with asyncio.timeout(10), http.stream("GET", url) as again:
            opened: bool = again.status_code == 200
            return opened
    for _ in range(50):
        if await reopened():
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the stream slot was not released when its client left")

    missing = await http.get(f"/api/v1/orders/{uuid4()}/events")
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "order_id"
    bad = await http.get(url, headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "Last-Event-ID"

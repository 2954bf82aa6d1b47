"""sagakit's consume path against a real RabbitMQ: retry with delay, park poison, park after
the last attempt. On a vhost of its own (``saga_test_messaging``, re-created each run)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel

from sagakit import topology
from sagakit.consuming import RetryLater
from sagakit.deadletters import ParkedQueue, to_where_it_was_sent
from sagakit.errors import ApiError
from sagakit.routing import of_type
from sagakit.runtime import Messaging, event_meta
from sagakit.settings import ServiceSettings
from sagakit.topology import ConsumerQueue
from sagakit.waits import within
from tests.amqp import text_header

SERVICE = f"kit{uuid.uuid4().hex[:6]}"
QUEUE = ConsumerQueue(SERVICE, "probe", ("probe.ping",))


class Ping(BaseModel):
    n: int
    fail_times: int = 0


@pytest.fixture(scope="module")
async def harness(rabbitmq_url: str) -> AsyncIterator[dict[str, Any]]:
    settings = ServiceSettings(RABBITMQ_URL=rabbitmq_url, RETRY_DELAYS_MS=(50, 100, 150))
    messaging = Messaging(SERVICE, settings, [QUEUE])
    seen: dict[int, list[int]] = {}
    done: dict[int, asyncio.Event] = {}
    sub = messaging.subscriber(QUEUE, "test probe")

    @sub(filter=of_type("probe.ping"))
    async def on_ping(body: Ping) -> None:
        meta = event_meta()
        seen.setdefault(body.n, []).append(meta.attempt)
        if len(seen[body.n]) <= body.fail_times:
            raise RetryLater("not yet")
        done.setdefault(body.n, asyncio.Event()).set()

    await messaging.start()
    connection = await aio_pika.connect_robust(rabbitmq_url)
    channel = await connection.channel()
    yield {"channel": channel, "seen": seen, "done": done}
    await messaging.stop_consuming()
    await messaging.close()
    await connection.close()


async def publish(channel: aio_pika.abc.AbstractChannel, body: bytes, ce_type: str) -> str:
    event_id = str(uuid.uuid4())
    exchange = await channel.get_exchange("saga.events")
    await exchange.publish(
        aio_pika.Message(body, message_id=event_id, delivery_mode=2,
                         headers={"ce-id": event_id, "ce-type": ce_type, "ce-subject": "probe"}),
        routing_key=ce_type,
    )
    return event_id


async def parked(channel: aio_pika.abc.AbstractChannel, event_id: str,
                 timeout: float = 10.0) -> aio_pika.abc.AbstractIncomingMessage:
    queue = await channel.get_queue(f"{SERVICE}.dead-letters")
    async with asyncio.timeout(timeout):
        while True:
            message = await queue.get(fail=False, no_ack=True)
            if message is not None and message.message_id == event_id:
                return message
            if message is None:
                await asyncio.sleep(0.05)


async def test_a_handler_that_succeeds_is_called_once(harness):
    await publish(harness["channel"], b'{"n": 1}', "probe.ping")
    await within(5, harness["done"].setdefault(1, asyncio.Event()).wait())
    assert harness["seen"][1] == [1]


async def test_retry_later_comes_back_with_growing_attempts(harness):
    await publish(harness["channel"], b'{"n": 2, "fail_times": 2}', "probe.ping")
    await within(10, harness["done"].setdefault(2, asyncio.Event()).wait())
    assert harness["seen"][2] == [1, 2, 3]


async def test_retries_exhausted_park_the_message_with_reason_and_attempts(harness):
    event_id = await publish(harness["channel"], b'{"n": 3, "fail_times": 99}', "probe.ping")
    message = await parked(harness["channel"], event_id)
    assert harness["seen"][3] == [1, 2, 3, 4]
    assert message.headers["x-attempts"] == 4
    assert "RetryLater" in text_header(message, "x-dead-letter-reason")
    assert message.headers["x-original-queue"] == QUEUE.name
    assert message.headers["ce-type"] == "probe.ping"  # original headers kept


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"not json at all", "JSON"), (b'{"n": "three"}', "ValidationError")],
)
async def test_poison_is_parked_at_once(harness, body, reason):
    event_id = await publish(harness["channel"], body, "probe.ping")
    message = await parked(harness["channel"], event_id)
    assert reason.lower() in text_header(message, "x-dead-letter-reason").lower()
    assert message.headers["x-attempts"] == 1


async def test_unknown_event_type_on_a_bound_queue_is_parked(harness):
    queue = await harness["channel"].get_queue(QUEUE.name)
    exchange = await harness["channel"].get_exchange("saga.events")
    await queue.bind(exchange, routing_key="probe.unknown")
    event_id = await publish(harness["channel"], b'{"n": 9}', "probe.unknown")
    message = await parked(harness["channel"], event_id)
    reason = text_header(message, "x-dead-letter-reason")
    # named by its type, not by FastStream's dump of the whole message (headers, body)
    assert reason == "SubscriberNotFound: no handler here for event type 'probe.unknown'"


async def test_a_message_without_ce_type_is_parked_saying_so(harness):
    """Handlers are chosen by the ce-type header: a message with none, on a key a handler
    takes, is parked naming the missing header, not as a type nobody handles."""
    event_id = str(uuid.uuid4())
    exchange = await harness["channel"].get_exchange("saga.events")
    await exchange.publish(aio_pika.Message(b'{"n": 10}', message_id=event_id, delivery_mode=2,
                                            headers={"ce-id": event_id}),
                           routing_key="probe.ping")
    message = await parked(harness["channel"], event_id)
    assert text_header(message, "x-dead-letter-reason") == (
        "SubscriberNotFound: no ce-type header, so no handler can tell what event this is "
        "(routing key 'probe.ping')")


async def test_replay_all_replays_what_it_can_and_leaves_a_message_whose_queue_is_gone(
        harness, rabbitmq_url):
    dead_letters = topology.dead_letter_queue(SERVICE).name
    first = str(uuid.uuid4())
    await harness["channel"].default_exchange.publish(aio_pika.Message(
        b'{"n": 90}', message_id=first, delivery_mode=2,
        headers={"ce-id": first, "ce-type": "probe.ping", "ce-subject": "probe",
                 "x-original-queue": f"{SERVICE}.gone"}), routing_key=dead_letters)
    replayable = []
    for n in (91, 92):
        event_id = str(uuid.uuid4())
        replayable.append(event_id)
        await harness["channel"].default_exchange.publish(aio_pika.Message(
            f'{{"n": {n}}}'.encode(), message_id=event_id, delivery_mode=2,
            headers={"ce-id": event_id, "ce-type": "probe.ping", "ce-subject": "probe",
                     "x-original-queue": QUEUE.name}), routing_key=dead_letters)

    outcome = await ParkedQueue(rabbitmq_url, dead_letters).replay(None)

    # not stopped by the one before them (another test's leftovers may be replayed too)
    assert [i for i in outcome.replayed if i in replayable] == replayable
    assert first in outcome.skipped and first not in outcome.replayed
    for n in (91, 92):
        await within(10, harness["done"].setdefault(n, asyncio.Event()).wait())
    left = await ParkedQueue(rabbitmq_url, dead_letters).list(10)
    assert first in [m.id for m in left.messages]  # still parked, for an operator to see
    with pytest.raises(ApiError) as refused:  # asked for by its id, it is a 409
        await ParkedQueue(rabbitmq_url, dead_letters).replay(first)
    assert refused.value.status == 409
    await ParkedQueue(rabbitmq_url, dead_letters).discard(first)


async def test_an_unrouted_event_is_replayed_where_it_was_sent_once_a_queue_is_bound(
        harness, rabbitmq_url):
    unrouted = ParkedQueue(rabbitmq_url, topology.UNROUTED_QUEUE.name,
                           route=to_where_it_was_sent)
    event_id = str(uuid.uuid4())
    events = await harness["channel"].get_exchange(topology.EVENTS.name)
    await events.publish(aio_pika.Message(
        b'{"n": 95}', message_id=event_id, delivery_mode=2,
        headers={"ce-id": event_id, "ce-type": "probe.ping", "ce-subject": "probe"}),
        routing_key="probe.late")  # no queue is bound for it yet

    async def kept() -> bool:
        return event_id in [m.id for m in (await unrouted.list(1000)).messages]

    async def until_kept() -> None:
        async with asyncio.timeout(10):
            while True:
                if await kept():
                    return
                await asyncio.sleep(0.05)

    await until_kept()
    assert (await unrouted.replay(event_id)).replayed == [event_id]
    await until_kept()  # still no queue for it: kept again, not lost
    assert 95 not in harness["seen"]

    queue = await harness["channel"].get_queue(QUEUE.name)
    await queue.bind(events, routing_key="probe.late")  # the consumer arrives
    assert (await unrouted.replay(event_id)).replayed == [event_id]
    await within(10, harness["done"].setdefault(95, asyncio.Event()).wait())
    assert not await kept()



async def test_dead_letters_parked_longer_than_the_retention_are_discarded(harness,
                                                                           rabbitmq_url):
    """Retention of parked messages (sagakit.deadletters): the broker's own parkings (past a
    queue's delivery limit) carry no expiry, so the hourly sweep tells their time from the
    broker's x-death; the consumer's from x-parked-at; a message saying neither is kept."""
    channel = harness["channel"]
    crashy = await channel.declare_queue(f"{SERVICE}.crashy", durable=True, arguments={
        "x-queue-type": "quorum", "x-dead-letter-exchange": topology.DEAD_LETTERS.name,
        "x-dead-letter-routing-key": SERVICE, "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish", "x-delivery-limit": 1})
    by_broker, by_consumer, untold = (str(uuid.uuid4()) for _ in range(3))
    await channel.default_exchange.publish(
        aio_pika.Message(b"{}", message_id=by_broker, delivery_mode=2), routing_key=crashy.name)
    async with asyncio.timeout(10):  # a handler that never returns: the broker gives up
        while (await crashy.declare()).message_count or not by_broker_parked(
                await ParkedQueue(rabbitmq_url, f"{SERVICE}.dead-letters").list(100), by_broker):
            message = await crashy.get(no_ack=False, fail=False)
            if message is not None:
                await message.nack(requeue=True)
            await asyncio.sleep(0.05)
    parked_queue = f"{SERVICE}.dead-letters"
    await channel.default_exchange.publish(aio_pika.Message(
        b"{}", message_id=by_consumer, delivery_mode=2,
        headers={"x-parked-at": "2000-01-01T00:00:00+00:00"}), routing_key=parked_queue)
    await channel.default_exchange.publish(
        aio_pika.Message(b"{}", message_id=untold, delivery_mode=2), routing_key=parked_queue)
    parked = ParkedQueue(rabbitmq_url, parked_queue)

    listed = {m.id: m.parked_at for m in (await parked.list(1000)).messages}
    assert listed[by_consumer] == "2000-01-01T00:00:00+00:00" and listed[untold] is None
    assert listed[by_broker] is not None  # the broker's x-death tells it
    assert await parked.forget_older_than(3600) >= 1  # the one parked in 2000
    left = {m.id for m in (await parked.list(1000)).messages}
    assert by_consumer not in left and {by_broker, untold} <= left
    await asyncio.sleep(1.1)  # x-death's time is in whole seconds
    await parked.forget_older_than(0)
    left = {m.id for m in (await parked.list(1000)).messages}
    assert by_broker not in left and untold in left
    await parked.discard(untold)


def by_broker_parked(listed: Any, event_id: str) -> bool:
    return any(m.id == event_id for m in listed.messages)

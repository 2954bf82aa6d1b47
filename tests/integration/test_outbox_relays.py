"""The Redis-stream outbox relay against a real Redis: nothing it was handed is ever dropped.

The relay looks for its own unconfirmed entries only after a failed publish, and for what dead
replicas left only every ``claim_every_seconds``; these tests check both still happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from sagakit.envelope import OutgoingEvent
from sagakit.outbox import RedisStreamOutboxRelay
from tests.conftest import Infra

REDIS_DB = 4  # this module's own (the production service's tests use 3)
STREAM = "outbox-under-test"


class Publisher:
    """Stands in for the broker: records what was published, fails when told to."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.failures = 0

    async def publish_all(self, events: list[OutgoingEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.published += [e.subject for e in events]


@pytest.fixture
async def redis(infra: Infra) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra.redis_db(REDIS_DB))
    await client.delete(STREAM)
    try:
        yield client
    finally:
        await client.delete(STREAM)
        await client.aclose()


async def _append(redis: Redis, *subjects: str) -> None:
    for subject in subjects:
        event = OutgoingEvent(id=uuid4(), type="test.happened", subject=subject, body=b"{}",
                              headers={"ce-type": "test.happened"})
        fields: dict[Any, Any] = event.to_record()
        await redis.xadd(STREAM, fields)


async def _relay(redis: Redis, publisher: Publisher) -> RedisStreamOutboxRelay:
    relay = RedisStreamOutboxRelay(redis, publisher, stream=STREAM)  # type: ignore[arg-type]
    relay.claim_idle_ms, relay.claim_every_seconds, relay.sweep_seconds = 50, 0.05, 0.05
    await redis.xgroup_create(STREAM, relay.group, id="0", mkstream=True)
    return relay


async def test_a_failed_publish_is_retried_first_and_in_order(redis):
    publisher = Publisher()
    relay = await _relay(redis, publisher)
    await _append(redis, "a", "b")
    publisher.failures = 1
    with pytest.raises(ConnectionError):
        await relay.drain_once()
    await _append(redis, "c")
    assert await relay.drain_once() == 2  # what it held, before anything new
    assert await relay.drain_once() == 1
    assert publisher.published == ["a", "b", "c"]
    assert await redis.xlen(STREAM) == 0  # confirmed entries leave the stream


async def test_what_a_dead_replica_read_and_never_confirmed_is_published_by_another(redis):
    publisher = Publisher()
    relay = await _relay(redis, publisher)
    await _append(redis, "x", "y")
    # A replica read both, then died before publishing them.
    await redis.xreadgroup(relay.group, "dead-replica", {STREAM: ">"}, count=10)
    assert await relay.drain_once() == 0  # too fresh to take over yet
    await asyncio.sleep(0.1)  # now idle longer than claim_idle_ms, and a claim is due
    assert await relay.drain_once() == 2
    assert publisher.published == ["x", "y"]
    assert await redis.xlen(STREAM) == 0


async def test_entries_a_failed_read_left_pending_go_out_first(redis, monkeypatch):
    """Redis served the read, but the answer never arrived (a stop cancelled it, the connection
    broke): the entries sit in this consumer's pending list, and the next drain takes them
    before anything newer."""
    publisher = Publisher()
    relay = await _relay(redis, publisher)
    await _append(redis, "lost-1", "lost-2")
    served = relay._read

    async def read_then_fail(start: str, block: int | None) -> list[Any]:
        await served(start, block)
        if start == ">":
            raise ConnectionError("connection lost after Redis served the read")
        return []

    monkeypatch.setattr(relay, "_read", read_then_fail)
    relay._own_pending = False  # as after a drain that acknowledged everything
    with pytest.raises(ConnectionError):
        await relay.drain_once()
    monkeypatch.setattr(relay, "_read", served)
    await _append(redis, "newer")
    assert await relay.drain_once() == 2
    assert await relay.drain_once() == 1
    assert publisher.published == ["lost-1", "lost-2", "newer"]


async def test_the_relay_publishes_a_persistent_message_with_the_envelopes_properties(
    rabbitmq_url: str,
) -> None:
    """What the relays publish (EventPublisher, confirmed): persistent, the CloudEvents id,
    type and subject as AMQP properties, the envelope's headers with the publish span's
    traceparent, the body as it is."""
    import aio_pika
    from faststream.rabbit import RabbitBroker

    from sagakit.events import OrderCancelled
    from sagakit.outbox import EventPublisher
    from sagakit.topology import EVENTS

    connection = await aio_pika.connect(rabbitmq_url)
    broker = RabbitBroker(rabbitmq_url)
    await broker.connect()
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EVENTS.name, aio_pika.ExchangeType.TOPIC,
                                                  durable=True, arguments=EVENTS.arguments)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="order.cancelled")
        order_id = uuid4()
        event = OutgoingEvent.build(OrderCancelled(order_id=order_id, reason="changed my mind",
                                                   requested_by="customer"),
                                    source="saga-shop/order", subject=str(order_id))
        await EventPublisher(broker).publish_all([event])
        message = await queue.get(timeout=5)
        assert message.delivery_mode is aio_pika.DeliveryMode.PERSISTENT
        assert (message.message_id, message.correlation_id, message.type,
                message.content_type) == (str(event.id), str(order_id), "order.cancelled",
                                          "application/json")
        assert message.routing_key == "order.cancelled"
        assert message.body == event.body
        headers = dict(message.headers)
        assert headers["ce-id"] == str(event.id)
        assert str(headers["traceparent"]).startswith("00-")
    finally:
        await broker.stop()
        await connection.close()

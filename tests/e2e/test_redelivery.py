"""A redelivered event (same event id) changes nothing: no second charge, no second step."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from tests.amqp import text_header
from tests.e2e.conftest import TERMINAL, payments_of, place, wait_for


async def _spy(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=False, arguments={"x-expires": 120_000})
        await queue.bind("saga.events", routing_key="#")


async def _captured(url: str, name: str, order_id: str) -> list[AbstractIncomingMessage]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        found = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            if message.headers.get("ce-subject") == order_id:
                found.append(message)
        await queue.delete(if_unused=False, if_empty=False)
        return found


async def _republish(url: str, messages: list[AbstractIncomingMessage]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("saga.events")
        for m in messages:
            await exchange.publish(
                aio_pika.Message(m.body, headers=dict(m.headers), message_id=m.message_id,
                                 correlation_id=m.correlation_id, type=m.type,
                                 content_type=m.content_type, delivery_mode=2),
                routing_key=m.routing_key or "",
            )


async def _drained(url: str, queues: list[str], timeout: float = 10.0) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = [(await channel.declare_queue(q, passive=True)).declaration_result
                      for q in queues]
            if all(c.message_count == 0 for c in counts):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{queues} not drained")


def test_replayed_events_charge_once_and_move_the_order_once(client, stack):
    spy = f"spy-{uuid.uuid4().hex[:8]}"
    asyncio.run(_spy(stack.rabbitmq_url, spy))
    order_id = place(client, [("burger-veggie", 1)]).json()["id"]
    before = wait_for(client, order_id, TERMINAL)
    assert before["status"] == "finished"

    messages = asyncio.run(_captured(stack.rabbitmq_url, spy, order_id))
    # Each event once. Not necessarily in this order: with two replicas of a service, two outbox
    # relays publish, and the order service retries an event that comes before its time.
    types = sorted(text_header(m, "ce-type") for m in messages)
    assert types == sorted(["order.created", "payment.processed", "order.received",
                            "production.queued", "production.started", "order.finished"])
    assert len({m.message_id for m in messages}) == len(messages)  # one id per event

    asyncio.run(_republish(stack.rabbitmq_url, messages))
    asyncio.run(_drained(stack.rabbitmq_url, ["payment.order-events", "order.payment-events",
                                              "order.production-events",
                                              "production.order-events"]))
    time.sleep(0.5)  # let the last deliveries' transactions finish

    assert [(p["kind"], p["status"]) for p in payments_of(client, order_id)] == [
        ("charge", "approved")]
    after = client.get(f"/api/v1/orders/{order_id}").json()
    assert after["timeline"] == before["timeline"]
    tickets = [t for t in client.get("/api/v1/production/queue", params={"limit": 500}).json()
               if t["order_id"] == order_id]
    assert len(tickets) == 1


def test_events_carry_cloudevents_attributes_and_one_trace(client, stack):
    spy = f"spy-{uuid.uuid4().hex[:8]}"
    asyncio.run(_spy(stack.rabbitmq_url, spy))
    order_id = place(client, [("lemonade", 1)]).json()["id"]
    wait_for(client, order_id, TERMINAL)
    messages = asyncio.run(_captured(stack.rabbitmq_url, spy, order_id))
    trace_ids = set()
    for m in messages:
        h = m.headers
        assert h["ce-specversion"] == "1.0"
        assert h["ce-id"] == m.message_id
        assert h["ce-type"] == m.routing_key
        assert h["ce-subject"] == order_id == m.correlation_id
        assert text_header(m, "ce-source").startswith("saga-shop/")
        assert h["ce-datacontenttype"] == "application/json"
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        trace_ids.add(text_header(m, "traceparent").split("-")[1])
    assert len(trace_ids) == 1
    assert client.get(f"/api/v1/orders/{order_id}").json()["trace_id"] in trace_ids

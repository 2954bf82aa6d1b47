"""The operator's dead-letter API through the gateway: list without losing, replay, discard."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import FieldValue

from sagakit.envelope import OutgoingEvent
from sagakit.events import CardTokenized
from tests.e2e.conftest import TERMINAL, place, wait_for

OPS = "/api/v1/ops"


async def _publish(url: str, body: bytes, *, exchange: str, routing_key: str,
                   headers: dict[str, FieldValue], message_id: str | None) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        await target.publish(aio_pika.Message(body, headers=headers, message_id=message_id,
                                              delivery_mode=2), routing_key=routing_key)


def inject_poison(url: str, routing_key: str, body: bytes = b"{not json") -> str:
    event_id = str(uuid.uuid4())
    asyncio.run(_publish(url, body, exchange="saga.events", routing_key=routing_key,
                         headers={"ce-id": event_id, "ce-type": routing_key}, message_id=event_id))
    return event_id


def parked(client, service: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"{OPS}/{service}/dead-letters", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["messages"]}


def wait_parked(client, service: str, event_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (found := parked(client, service).get(event_id)) is None:
        assert time.monotonic() < deadline, f"{event_id} never parked at {service}"
        time.sleep(0.1)
    return found


def test_reading_dead_letters_needs_the_key(anonymous):
    for path in ("/order/dead-letters", "/payment/dead-letters", "/production/dead-letters",
                 "/unrouted"):
        response = anonymous.get(OPS + path)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["status"] == 401
        assert anonymous.post(OPS + "/payment/dead-letters/replay").status_code == 401


def test_poison_is_listed_with_its_story_and_listing_twice_loses_nothing(client, stack):
    event_id = inject_poison(stack.rabbitmq_url, "order.created")
    message = wait_parked(client, "payment", event_id)
    assert message["event_type"] == "order.created"
    assert message["original_queue"] == "payment.order-events"
    assert message["attempts"] == 1
    assert "JSON" in message["reason"] or "json" in message["reason"]
    assert message["parked_at"]
    assert message["body"] == "{not json"
    assert message["headers"]["ce-id"] == event_id
    assert event_id in parked(client, "payment")  # still there after being listed
    assert event_id in parked(client, "payment")

    assert client.delete(f"{OPS}/payment/dead-letters/{event_id}").json() == {
        "discarded": event_id}
    assert event_id not in parked(client, "payment")
    assert client.delete(f"{OPS}/payment/dead-letters/{event_id}").status_code == 404


def test_a_replayed_event_takes_effect_once(client, stack):
    """A card announcement parked after its last attempt: replayed, the order API knows it."""
    token = f"tok_parked{uuid.uuid4().hex[:12]}"
    event = OutgoingEvent.build(
        CardTokenized(token=token, brand="visa", last4="4242", created_at=datetime.now(UTC)),
        source="saga-shop/payment", subject=CardTokenized.subject_of(token))
    headers: dict[str, FieldValue] = {
        **event.headers, "x-dead-letter-reason": "RetryLater: test", "x-attempts": 5,
        "x-attempt": 5, "x-original-queue": "order.payment-events",
        "x-parked-at": datetime.now(UTC).isoformat()}
    asyncio.run(_publish(stack.rabbitmq_url, event.body, exchange="saga.dead-letters",
                         routing_key="order", headers=headers, message_id=str(event.id)))
    message = wait_parked(client, "order", str(event.id))
    assert message["attempts"] == 5 and message["event_type"] == "payment.card_tokenized"

    refused = place(client, [("fries", 1)], token=token, headers={"Idempotency-Key": token})
    assert refused.status_code == 422  # the order service has not heard of the card yet

    replayed = client.post(f"{OPS}/order/dead-letters/{event.id}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed"] == [str(event.id)]
    assert str(event.id) not in parked(client, "order")
    assert client.post(f"{OPS}/order/dead-letters/{event.id}/replay").status_code == 404

    accepted = place(client, [("fries", 1)], token=token)
    assert accepted.status_code == 202, accepted.text
    wait_for(client, accepted.json()["id"], TERMINAL)


def test_replay_all_returns_every_parked_message_to_its_queue(client, stack):
    """Poison replayed comes straight back (it is still poison): replay never drops anything."""
    ids = {inject_poison(stack.rabbitmq_url, "order.cancelled") for _ in range(3)}
    for event_id in ids:
        wait_parked(client, "payment", event_id)
    outcome = client.post(f"{OPS}/payment/dead-letters/replay").json()
    assert ids <= set(outcome["replayed"])
    for event_id in ids:
        assert wait_parked(client, "payment", event_id)["attempts"] == 1
        client.delete(f"{OPS}/payment/dead-letters/{event_id}")


def _unrouted(client) -> dict[str, dict[str, Any]]:
    response = client.get(f"{OPS}/unrouted", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["messages"]}


def test_unrouted_messages_are_visible(client, stack):
    event_id = str(uuid.uuid4())
    asyncio.run(_publish(stack.rabbitmq_url, b"{}", exchange="saga.events",
                         routing_key="nobody.listens", headers={"ce-type": "nobody.listens"},
                         message_id=event_id))
    found = _unrouted(client).get(event_id)
    assert found and found["routing_key"] == "nobody.listens"


def test_an_unrouted_message_is_replayed_where_it_was_sent_or_discarded(client, anonymous,
                                                                        stack):
    kept, dropped = str(uuid.uuid4()), str(uuid.uuid4())
    for event_id in (kept, dropped):
        asyncio.run(_publish(stack.rabbitmq_url, b"{}", exchange="saga.events",
                             routing_key="nobody.listens.yet",
                             headers={"ce-type": "nobody.listens.yet"}, message_id=event_id))
    assert {kept, dropped} <= set(_unrouted(client))
    assert anonymous.post(f"{OPS}/unrouted/{kept}/replay").status_code == 401

    replayed = client.post(f"{OPS}/unrouted/{kept}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed"] == [kept]
    deadline = time.monotonic() + 10  # still nobody bound: kept again, never lost
    while kept not in _unrouted(client):
        assert time.monotonic() < deadline, "a replayed unrouted message was lost"
        time.sleep(0.1)

    assert client.delete(f"{OPS}/unrouted/{dropped}").json() == {"discarded": dropped}
    assert dropped not in _unrouted(client)
    assert client.delete(f"{OPS}/unrouted/{dropped}").status_code == 404
    audit = client.get(f"{OPS}/order/audit", params={"action": "unrouted.discard"}).json()
    assert any(r["target"] == dropped for r in audit["records"]), audit
    client.delete(f"{OPS}/unrouted/{kept}")


def test_two_operators_discarding_two_messages_at_once_both_succeed(client, stack):
    # Each request holds what it read until it is done: without looking again, each could
    # miss the id the other was holding and answer a false 404.
    events = [inject_poison(stack.rabbitmq_url, "order.created") for _ in range(6)]
    for event_id in events:
        wait_parked(client, "payment", event_id)
    for first, second in zip(events[::2], events[1::2], strict=True):
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(
                lambda event_id: client.delete(f"{OPS}/payment/dead-letters/{event_id}"),
                (first, second)))
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert not set(events) & set(parked(client, "payment"))

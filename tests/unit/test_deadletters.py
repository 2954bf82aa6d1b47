"""What an operator sees of a parked message, and what a replay sends: no broker needed."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sagakit.deadletters import (
    _replayed,
    describe,
    message_id,
    original_queue,
    replay_headers,
)


def parked(body: bytes = b'{"order_id": "o-1"}', message_id: str | None = "e-1",
           headers: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(body=body, message_id=message_id, headers=headers or {},
                           type="order.created",
                           correlation_id="o-1", routing_key="payment")


def test_a_parked_message_tells_its_story():
    message = parked(headers={"ce-type": "order.created", "ce-subject": "o-1",
                        "x-dead-letter-reason": "ValidationError: bad", "x-attempts": 3,
                        "x-original-queue": "payment.order-events", "x-parked-at": "2026-01-01",
                        "x-death": [{"queue": "q", "time": datetime(2026, 1, 1, tzinfo=UTC),
                                     "routing-keys": [b"k"]}]})
    seen = describe(message)
    assert (seen.id, seen.event_type, seen.order_id, seen.attempts) == (
        "e-1", "order.created", "o-1", 3)
    assert seen.original_queue == "payment.order-events"
    assert seen.reason == "ValidationError: bad"
    assert seen.headers["x-death"][0]["time"].startswith("2026-01-01")  # JSON-able
    assert seen.body == '{"order_id": "o-1"}'


def test_a_replay_starts_its_attempts_afresh_and_keeps_the_event():
    headers = replay_headers(parked(headers={"ce-id": "e-1", "traceparent": "00-x", "x-attempt": 7,
                                       "x-attempts": 7, "x-dead-letter-reason": "r",
                                       "x-original-queue": "q", "x-parked-at": "t",
                                       "x-last-error": "e", "retry-delay-ms": "100",
                                       "x-death": [], "x-first-death-queue": "q"}))
    assert headers == {"ce-id": "e-1", "traceparent": "00-x"}


def test_a_message_without_an_id_is_named_by_its_body():
    first = message_id(parked(b"garbage", message_id=None))
    assert first.startswith("sha256:") and first == message_id(parked(b"garbage", None))
    assert message_id(parked(b"other", None)) != first


def test_a_replayed_message_without_an_id_keeps_its_name_when_parked_again():
    """An AMQP client publishing a message with no id makes one up (aiormq does): replayed
    as it came, a foreign message parked again showed under a new, random id, and the audit
    named two ids for one message."""
    message = parked(b"garbage", message_id=None)
    message.content_type, message.app_id = "text/plain", None
    assert _replayed(message).message_id == message_id(message)


def test_a_message_the_broker_parked_names_its_queue_in_x_death_headers():
    assert original_queue(parked(headers={"x-first-death-queue": "order.payment-events"})) == \
        "order.payment-events"
    assert original_queue(parked()) is None


def test_a_message_without_a_subject_names_no_order():
    """A foreign or broken message (no ce-subject) names no order, whatever its correlation id."""
    assert describe(parked(b"{not json", headers={"ce-type": "order.created"})).order_id is None

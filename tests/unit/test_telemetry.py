"""One order, one trace: how the trace context rides on events, in-process (no broker).

An event keeps the context it was created in; the relay publishes it in a PRODUCER span that
continues that context and sends its own; the consumer's CONSUMER span is the publish span's
child, and a failed handler marks it. (The whole saga across processes: tests/e2e.)
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import orjson
import pytest
from faststream.rabbit import RabbitBroker, RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from sagakit import telemetry, topology
from sagakit.consuming import RetryPolicy
from sagakit.envelope import OutgoingEvent
from sagakit.events import OrderCancelled
from sagakit.logs import JsonFormatter
from sagakit.metrics import EVENTS_FAILED, EVENTS_PUBLISHED
from sagakit.outbox import EventPublisher


def cancelled() -> OrderCancelled:
    return OrderCancelled(order_id=uuid4(), reason="changed my mind", requested_by="customer")


def build(event: OrderCancelled) -> OutgoingEvent:
    return OutgoingEvent.build(event, source="saga-shop/order", subject=str(event.order_id))


def ids(span: Any) -> tuple[str, str]:
    context = span.get_span_context()
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def named_by(traceparent: str) -> tuple[str, str]:
    """(trace id, span id) a W3C ``traceparent`` header names."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def parent_of(span: ReadableSpan) -> str | None:
    return format_span_id(span.parent.span_id) if span.parent else None


def named(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    [found] = [s for s in spans.get_finished_spans() if s.name == name]
    return found


class RecordingBroker:
    """Stands in for the RabbitBroker: remembers what would have been published."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def publish(self, body: bytes, **kwargs: Any) -> None:
        self.published.append({"body": body, **kwargs})


def test_an_event_keeps_the_context_of_the_span_it_was_created_in(spans):
    with telemetry.span("POST /api/v1/orders") as request:
        event = build(cancelled())
    assert named_by(event.headers["traceparent"]) == ids(request)
    assert telemetry.trace_headers() == {}  # outside any span there is nothing to continue


async def test_the_relay_publishes_in_a_producer_span_that_continues_the_stored_trace(spans):
    with telemetry.span("POST /api/v1/orders") as request:
        event = build(cancelled())
    broker = RecordingBroker()
    before = EVENTS_PUBLISHED.labels("order.cancelled")._value.get()

    await EventPublisher(broker).publish(event)  # type: ignore[arg-type]  # later, from the relay: no span is current

    publish = named(spans, "order.cancelled publish")
    trace_id, request_id = ids(request)
    assert publish.kind is SpanKind.PRODUCER
    assert format_trace_id(publish.context.trace_id) == trace_id
    assert parent_of(publish) == request_id
    assert publish.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "saga.events",
        "messaging.rabbitmq.destination.routing_key": "order.cancelled",
        "messaging.message.id": str(event.id),
        "cloudevents.event_id": str(event.id),
        "cloudevents.event_type": "order.cancelled",
        "cloudevents.event_source": "saga-shop/order",
        "cloudevents.event_subject": event.subject,
    }
    [sent] = broker.published
    publish_id = format_span_id(publish.context.span_id)
    assert named_by(sent["headers"]["traceparent"]) == (trace_id, publish_id)
    assert sent["headers"]["ce-id"] == str(event.id) == sent["message_id"]
    assert named_by(event.headers["traceparent"]) == (trace_id, request_id)  # stored: as was
    assert EVENTS_PUBLISHED.labels("order.cancelled")._value.get() == before + 1


def test_a_delivery_is_processed_in_a_consumer_span_child_of_its_publish_span(spans):
    publish_trace, publish_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    delivery: Any = SimpleNamespace(  # stands in for an aio-pika IncomingMessage
        headers={"ce-type": "order.created", "ce-id": "e1", "ce-subject": "o1",
                 "x-attempt": 2, "traceparent": f"00-{publish_trace}-{publish_span}-01"},
        routing_key="order.created", exchange="saga.requeue", message_id="e1",
    )

    with telemetry.consuming(delivery, "payment.order-events") as current:
        assert telemetry.trace_id() == publish_trace
        assert ids(current)[1] != publish_span

    process = named(spans, "order.created process")
    assert process.kind is SpanKind.CONSUMER
    assert parent_of(process) == publish_span
    assert process.attributes is not None
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.subscription.name"] == (
        "payment.order-events")
    assert process.attributes["messaging.rabbitmq.destination.routing_key"] == "order.created"
    assert process.attributes["cloudevents.event_subject"] == "o1"
    assert process.attributes["saga.attempt"] == 2


def test_what_a_message_causes_is_traced_even_inside_an_untraced_loop(spans):
    with telemetry.span("POST /api/v1/orders"):
        headers = build(cancelled()).headers
    with telemetry.untraced():
        assert not is_instrumentation_enabled()  # the loop's own polling: no client spans
        with telemetry.span("kitchen cook", parent=headers):
            assert is_instrumentation_enabled()  # the ticket's work: traced
        assert not is_instrumentation_enabled()


def test_a_trace_not_recorded_keeps_its_id_and_makes_no_client_spans(spans):
    """A sampled-out order: its work makes no database or Redis spans, and what it publishes
    carries the same trace id, still marked not sampled, so the next service records none."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    unsampled = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-00"}
    with telemetry.span("order.created process", parent=unsampled) as process:
        assert not process.is_recording()
        assert not is_instrumentation_enabled()
        assert telemetry.trace_id() == trace_id
        event = build(cancelled())
    assert named_by(event.headers["traceparent"])[0] == trace_id
    assert event.headers["traceparent"].endswith("-00")
    with telemetry.span("kitchen cook", parent=event.headers):
        assert not is_instrumentation_enabled()
    sampled = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    with telemetry.span("order.created process", parent=sampled) as process:
        assert process.is_recording()
        assert is_instrumentation_enabled()
    assert [s.name for s in spans.get_finished_spans()] == ["order.created process"]


async def test_a_failing_handler_marks_its_span_and_the_parked_copy_stays_in_the_trace(spans):
    broker = RabbitBroker()
    queue = topology.ConsumerQueue("kitchen", "order", ("order.cancelled",))
    broker.add_middleware(RetryPolicy(broker, "kitchen", delays_ms=[],
                                      queues=[queue]).middleware())
    parked: list[dict[str, Any]] = []
    failed_before = EVENTS_FAILED.labels("order.cancelled", "parked")._value.get()

    @broker.subscriber(RabbitQueue("kitchen.order-events", routing_key="order.cancelled"),
                       exchange=topology.EVENTS)
    async def drop_ticket(body: dict[str, Any]) -> None:
        raise RuntimeError("redis is away")

    @broker.subscriber(RabbitQueue("kitchen.dead-letters", routing_key="kitchen"),
                       exchange=topology.DEAD_LETTERS)
    async def operator(body: dict[str, Any], message: RabbitMessage) -> None:
        parked.append(message.headers)

    with telemetry.span("POST /api/v1/orders/{id}/cancel") as request:
        event = build(cancelled())
    async with TestRabbitBroker(broker) as connected:
        await EventPublisher(connected).publish(event)

    publish = named(spans, "order.cancelled publish")
    by_queue = {s.attributes["messaging.destination.subscription.name"]: s
                for s in spans.get_finished_spans() if s.name == "order.cancelled process"}
    failed, parked_copy = by_queue["kitchen.order-events"], by_queue["kitchen.dead-letters"]
    assert failed.status.status_code is StatusCode.ERROR
    assert "RuntimeError: redis is away" in (failed.status.description or "")
    [exception] = failed.events
    assert exception.name == "exception"
    assert exception.attributes["exception.message"] == "redis is away"
    assert failed.attributes["error.type"] == "RuntimeError"
    assert failed.attributes["saga.outcome"] == "parked"
    # Both are children of the one publish span, in the request's trace.
    assert parent_of(failed) == parent_of(parked_copy) == format_span_id(publish.context.span_id)
    assert {format_trace_id(s.context.trace_id) for s in (failed, parked_copy)} == {
        ids(request)[0]}
    assert parked[0]["x-dead-letter-reason"] == "RuntimeError: redis is away"
    assert EVENTS_FAILED.labels("order.cancelled", "parked")._value.get() == failed_before + 1


@pytest.mark.parametrize("in_span", [True, False])
def test_log_lines_carry_the_trace_and_span_of_the_work(spans, in_span):
    formatter = JsonFormatter("order")
    record = logging.LogRecord("order.service", logging.INFO, __file__, 1, "order placed", (),
                               None)
    if in_span:
        with telemetry.span("POST /api/v1/orders") as current:
            line = orjson.loads(formatter.format(record))
        trace_id, span_id = ids(current)
        assert (line["trace_id"], line["span_id"]) == (trace_id, span_id)
    else:
        line = orjson.loads(formatter.format(record))
        assert "trace_id" not in line and "span_id" not in line
    assert line["service"] == "order" and line["message"] == "order placed"


def test_a_request_not_recorded_makes_no_client_spans_and_the_lifespan_is_left_alone(spans):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    seen: dict[str, bool] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        seen["lifespan"] = is_instrumentation_enabled()  # its tasks would inherit a switch
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/probe")
    async def probe(name: str) -> dict[str, bool]:
        seen[name] = is_instrumentation_enabled()
        return {}

    telemetry.instrument_app(app)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with TestClient(app) as client:
        client.get("/probe", params={"name": "unsampled"},
                   headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-00"})
        client.get("/probe", params={"name": "sampled"},
                   headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert seen == {"lifespan": True, "unsampled": False, "sampled": True}

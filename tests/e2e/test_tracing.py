"""One order, one trace: what the three services export while a saga runs through nginx.

The spans and log records come from the services' OTLP exporters (to :mod:`tests.e2e.otlp`);
the metrics from ``/metrics`` of every replica (the gateway's ``/metrics/<service>`` shows one
replica's), summed as Prometheus would. An operator following an order sees:
one trace from the HTTP request to the last event, a publish span per event and a process span
per delivery (its child), the same trace id on every log line, and counters that move.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import FieldValue
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import CUSTOMER, TERMINAL, place, set_stock, wait_for
from tests.e2e.otlp import CONSUMER, ERROR, PRODUCER, SERVER, Receiver, Span
from tests.stacks import Stack

HAPPY = ["order.created", "payment.processed", "order.received", "production.queued",
         "production.started", "order.finished"]
DECLINED = ["order.created", "payment.processed"]
# order.cancelled has two consumers (payment refunds, production drops the ticket).
OUT_OF_STOCK = ["order.created", "payment.processed", "order.received", "production.failed",
                "order.cancelled", "order.cancelled", "payment.refunded"]
# A customer's cancel while the ticket waits: the kitchen drops it, payment refunds.
CANCELLED = ["order.created", "payment.processed", "order.received", "production.queued",
             "order.cancellation_requested", "order.cancelled", "payment.refunded"]


def event_type(span: Span) -> str:
    return str(span.attributes.get("cloudevents.event_type"))


def complete_trace(otlp: Receiver, trace_id: str, processed: list[str]) -> list[Span]:
    """The order's trace once every expected delivery was processed and no span lacks its
    parent (spans arrive in batches, from three processes)."""

    def found() -> list[Span] | None:
        spans = otlp.trace(trace_id)
        done = Counter(event_type(s) for s in spans if s.kind == CONSUMER)
        ids = {s.span_id for s in spans}
        connected = all(s.parent_id in ids for s in spans if s.parent_id)
        return spans if connected and not Counter(processed) - done else None

    return otlp.wait_for(f"the trace {trace_id} with {processed} processed", found)


def assert_one_trace(otlp: Receiver, order: dict[str, Any], spans: list[Span]) -> None:
    """One root (the POST), every delivery a child of its event's publish, nothing elsewhere."""
    [root] = [s for s in spans if not s.parent_id]
    assert (root.service, root.kind, root.name) == ("order", SERVER, "POST /api/v1/orders")
    by_id = {s.span_id: s for s in spans}
    processed = [s for s in spans if s.kind == CONSUMER]
    for process in processed:
        publish = by_id[process.parent_id]
        assert publish.kind == PRODUCER, process
        assert publish.name == f"{event_type(process)} publish"
        assert event_type(publish) == event_type(process)
        assert publish.attributes["messaging.message.id"] == process.attributes[
            "messaging.message.id"]
        assert process.name == f"{event_type(process)} process"
        assert process.attributes["messaging.system"] == "rabbitmq"
    # No span of this order's events ended up in another trace.
    subject = {s.trace_id for s in list(otlp.spans)
               if s.attributes.get("cloudevents.event_subject") == order["id"]}
    assert subject == {order["trace_id"]}
    assert {step["trace_id"] for step in order["timeline"]} == {order["trace_id"]}


def test_the_happy_path_is_one_trace_across_the_three_services(client, otlp):
    set_stock(client, "burger-classic", 100)
    order = wait_for(client, place(client, [("burger-classic", 1)]).json()["id"], TERMINAL)
    assert order["status"] == "finished"

    spans = complete_trace(otlp, order["trace_id"], HAPPY)

    assert_one_trace(otlp, order, spans)
    assert {s.service for s in spans} == {"order", "payment", "production"}
    assert sorted({event_type(s) for s in spans if s.kind == PRODUCER}) == sorted(HAPPY)
    # The kitchen carries the trace from the ticket to production.started and order.finished.
    by_id = {s.span_id: s for s in spans}
    for late in ("production.started", "order.finished"):
        [publish] = [s for s in spans if s.name == f"{late} publish"]
        assert publish.service == "production"
        assert by_id[publish.parent_id].name == "kitchen cook"
    # The databases and Redis show up inside the trace, under the spans that used them.
    assert any(s.service == "payment" and s.attributes.get("db.system") == "postgresql"
               for s in spans)
    assert any(s.service == "production" and s.attributes.get("db.system") == "redis"
               for s in spans)


def test_the_order_links_to_its_trace_and_its_logs(client):
    order = wait_for(client, place(client, [("fries", 1)]).json()["id"], TERMINAL)
    assert order["trace_recorded"] is True  # one order at a person's pace: always recorded
    trace_id = order["trace_id"]
    assert len(trace_id) == 32 and int(trace_id, 16)
    assert order["links"] == {
        "trace": f"http://localhost:16686/trace/{trace_id}",
        "logs": f"http://localhost:5380/#/events?filter=TraceId%3D'{trace_id}'",
    }


def test_a_declined_order_is_one_trace(client, otlp):
    order_id = place(client, [("lemonade", 1)], token="tok_chargeDeclined").json()["id"]
    order = wait_for(client, order_id, TERMINAL)
    assert order["status"] == "cancelled"

    spans = complete_trace(otlp, order["trace_id"], DECLINED)

    assert_one_trace(otlp, order, spans)
    assert {s.service for s in spans} == {"order", "payment"}


def test_an_out_of_stock_order_refunded_is_one_trace(client, otlp):
    set_stock(client, "truffle-risotto", 1)
    order = wait_for(client, place(client, [("truffle-risotto", 2)]).json()["id"], TERMINAL)
    assert order["status"] == "refunded"

    spans = complete_trace(otlp, order["trace_id"], OUT_OF_STOCK)

    assert_one_trace(otlp, order, spans)
    [cancelled] = [s for s in spans if s.name == "order.cancelled publish"]
    consumers = [s for s in spans if s.parent_id == cancelled.span_id]
    assert sorted(s.service for s in consumers) == ["payment", "production"]


def test_a_customer_cancel_and_its_refund_are_in_the_orders_trace(client, otlp):
    """The cancel is a request of its own (its own trace), about an order whose trace began
    with its POST: its steps, events and the refund they cause join the order's trace, under
    the POST's span."""
    assert client.put("/api/v1/production/line", json={"paused": True}).status_code == 200
    try:  # the ticket waits in the queue, where a cancel drops it
        order_id = place(client, [("salad-caesar", 1)]).json()["id"]
        wait_for(client, order_id, {"received"})
        cancel = client.post(f"/api/v1/orders/{order_id}/cancel")
        assert cancel.status_code == 202, cancel.text
    finally:
        assert client.put("/api/v1/production/line", json={"paused": False}).status_code == 200
    order = wait_for(client, order_id, TERMINAL)
    assert order["status"] == "refunded"

    spans = complete_trace(otlp, order["trace_id"], CANCELLED)

    assert_one_trace(otlp, order, spans)  # every timeline entry, every event span, one root
    [root] = [s for s in spans if not s.parent_id]
    [cancelled] = [s for s in spans if s.name == "order cancel"]
    assert (cancelled.service, cancelled.parent_id) == ("order", root.span_id)
    assert {s.service for s in spans} == {"order", "payment", "production"}


def test_log_records_exported_over_otlp_carry_the_orders_trace(client, otlp):
    order = wait_for(client, place(client, [("brownie", 1)]).json()["id"], TERMINAL)

    def logged() -> dict[str, set[str]] | None:
        messages: dict[str, set[str]] = {}
        for record in otlp.logs_of(order["trace_id"]):
            messages.setdefault(record.service, set()).add(record.body)
        expected = {"order": "order placed", "payment": "charge approved",
                    "production": "order.received: queued"}
        return messages if all(m in messages.get(s, ()) for s, m in expected.items()) else None

    otlp.wait_for("the order's log records", logged)
    records = otlp.logs_of(order["trace_id"])
    assert all(r.span_id for r in records)
    assert {r.attributes.get("order_id") for r in records} == {order["id"]}


def test_no_log_line_holds_an_email_or_a_card_number(client, stack, otlp):
    card = client.post("/api/v1/payments/cards", json={
        "number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2040, "cvc": "123",
        "holder": "Ana Souza"}).json()
    order = wait_for(client, place(client, [("fries", 1)], token=card["token"]).json()["id"],
                     TERMINAL)
    otlp.wait_for("the order's log records", lambda: otlp.logs_of(order["trace_id"]))

    secrets = (CUSTOMER["email"], "4242424242424242", "4242 4242 4242 4242")
    for name, text in stack.service_logs().items():
        assert not [s for s in secrets if s in text], name
    exported = repr([(r.body, r.attributes) for r in list(otlp.logs)])
    assert not [s for s in secrets if s in exported]


# --- a failing handler -------------------------------------------------------------------------


async def _publish_poison(url: str, traceparent: str) -> str:
    """An order.created that breaks its schema, as a buggy publisher would send it."""
    event_id = str(uuid.uuid4())
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("saga.events")
        headers: dict[str, FieldValue] = {
            "ce-id": event_id, "ce-type": "order.created", "ce-specversion": "1.0",
            "ce-source": "tests/poison", "ce-subject": str(uuid.uuid4()),
            "traceparent": traceparent}
        await exchange.publish(
            aio_pika.Message(b'{"order_id": "not a uuid"}', headers=headers, message_id=event_id,
                             content_type="application/json", delivery_mode=2),
            routing_key="order.created",
        )
    return event_id


def test_a_failed_handler_is_an_error_span_in_the_publishers_trace(stack, client, otlp):
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    dead_before = metric(stack, "payment", "saga_dead_letters")

    event_id = asyncio.run(_publish_poison(stack.rabbitmq_url, f"00-{trace_id}-{parent_id}-01"))

    [failed] = otlp.wait_for("the poison event's process span", lambda: [
        s for s in otlp.trace(trace_id) if s.name == "order.created process"])
    assert (failed.service, failed.parent_id, failed.status) == ("payment", parent_id, ERROR)
    assert failed.attributes["messaging.message.id"] == event_id
    assert failed.attributes["error.type"] == "ValidationError"
    assert failed.attributes["saga.outcome"] == "parked"
    assert "exception" in failed.events
    # ... and the parked message shows in the dead-letter gauge (sampled every few seconds).
    poll(lambda: metric(stack, "payment", "saga_dead_letters") >= dead_before + 1,
         "payment's dead-letter gauge to count the parked event")


# --- metrics -----------------------------------------------------------------------------------


def samples(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def metric(stack: Stack, service: str, name: str, **labels: str) -> float:
    """A sample summed over the service's replicas, each scraped at its own ``/metrics``."""
    total = 0.0
    for text in stack.metrics(service):
        total += samples(text, name, labels)
    return total


def poll(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# What one finished order adds to: (service, metric, labels).
COUNTED = [
    ("order", "saga_events_published_total", {"type": "order.created"}),
    ("order", "saga_events_published_total", {"type": "order.received"}),
    ("order", "saga_events_consumed_total", {"type": "order.finished"}),
    ("order", "saga_duration_seconds_count", {"outcome": "finished"}),
    ("order", "saga_orders", {"status": "finished"}),
    ("payment", "saga_events_consumed_total", {"type": "order.created"}),
    ("payment", "saga_events_published_total", {"type": "payment.processed"}),
    ("production", "saga_events_consumed_total", {"type": "order.received"}),
    ("production", "saga_events_published_total", {"type": "order.finished"}),
]


def test_metrics_move_when_an_order_flows(client, stack):
    before = [metric(stack, service, name, **labels) for service, name, labels in COUNTED]
    order = wait_for(client, place(client, [("lemonade", 1)]).json()["id"], TERMINAL)
    assert order["status"] == "finished"

    def counted() -> bool:
        after = [metric(stack, service, name, **labels) for service, name, labels in COUNTED]
        return all(a >= b + 1 for a, b in zip(after, before, strict=True))

    poll(counted, f"one more of each of {COUNTED}")


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_the_gateway_serves_each_services_metrics(client, service):
    response = client.get(f"/metrics/{service}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"saga_outbox_backlog", "saga_dead_letters", "saga_events_published"} <= names


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_operators_read_each_services_metrics_through_the_api(client, ana, service):
    """What the operator view charts: the same text, behind the ops scope, with consumer lag."""
    response = client.get(f"/api/v1/ops/{service}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"saga_outbox_backlog", "saga_dead_letters", "saga_consumer_lag"} <= families.keys()
    queues = {s.labels["queue"] for s in families["saga_consumer_lag"].samples}
    assert queues and all(q.startswith(f"{service}.") for q in queues), queues
    assert ana.get(f"/api/v1/ops/{service}/metrics").status_code == 403


def test_an_order_not_sampled_keeps_its_trace_id_and_logs_and_records_no_spans(client, otlp):
    """The caller's ``traceparent`` decides (parent-based sampling): flags 00 is an order whose
    trace is not recorded, yet the trace id is the order's everywhere (its timeline, every log
    record, exported to Seq); flags 01 forces one to be recorded whatever the rate limit says."""
    dropped, forced = uuid.uuid4().hex, uuid.uuid4().hex
    unsampled = place(client, [("fries", 1)],
                      headers={"traceparent": f"00-{dropped}-{uuid.uuid4().hex[:16]}-00"})
    sampled = place(client, [("fries", 1)],
                    headers={"traceparent": f"00-{forced}-{uuid.uuid4().hex[:16]}-01"})
    quiet = wait_for(client, unsampled.json()["id"], TERMINAL)
    recorded = wait_for(client, sampled.json()["id"], TERMINAL)
    assert (quiet["status"], recorded["status"]) == ("finished", "finished")
    assert quiet["trace_id"] == dropped
    assert (quiet["trace_recorded"], recorded["trace_recorded"]) == (False, True)
    assert {step["trace_id"] for step in quiet["timeline"]} == {dropped}
    assert recorded["trace_id"] == forced

    def processed() -> Counter[str] | None:  # the root's parent is the caller's: not exported
        done = Counter(event_type(s) for s in otlp.trace(forced) if s.kind == CONSUMER)
        return done if not Counter(HAPPY) - done else None

    otlp.wait_for("the forced trace, every delivery in it", processed)  # the other's by now too

    def logged() -> set[str] | None:
        services = {record.service for record in otlp.logs_of(dropped)}
        return services if services >= {"order", "payment", "production"} else None

    otlp.wait_for("the unsampled order's log records", logged)
    assert otlp.trace(dropped) == []

"""The order service against a real RabbitMQ and PostgreSQL, run as ``python -m order``.

The tests play its neighbours: a customer placing and cancelling orders over its HTTP API, and
payment and production answering what it announces on ``saga.events``, through the publish path
their relays use. It runs on a vhost and a database of its own (``saga_test_order``, re-created
each run; see tests/integration/conftest.py), with short retry delays so an early event comes
back within a few hundred milliseconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from uuid import UUID, uuid4

import aio_pika
import httpx
import pytest

from sagakit import telemetry
from sagakit.envelope import OutgoingEvent
from sagakit.events import (
    CardTokenized,
    Event,
    EventType,
    OrderFinished,
    PaymentProcessed,
    PaymentRefunded,
    PaymentVoided,
    ProductionFailed,
    ProductionQueued,
    ProductionStarted,
)
from tests.conftest import Infra
from tests.integration.conftest import Announced, EventTap, Publish, ServiceProcess, until

ROLE = "order_svc"
RETRY_DELAYS_MS = [100, 200, 400, 800, 1600]
PAYMENT, PRODUCTION = "saga-shop/payment", "saga-shop/production"
HAPPY_PATH = ["pending_payment", "paid", "received", "in_production", "finished"]
E = EventType


# --- infrastructure -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database_url(infra: Infra, own_name: str) -> str:
    return infra.fresh_database(own_name, ROLE, ROLE)


@pytest.fixture(scope="module")
def tap_keys() -> Sequence[str]:
    return (E.ORDER_CREATED, E.ORDER_RECEIVED, E.ORDER_CANCELLED)  # what order publishes


@pytest.fixture(scope="module")
async def service(rabbitmq_url: str, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    env = {
        "ORDER_DATABASE_URL": database_url,
        "RABBITMQ_URL": rabbitmq_url,
        "RETRY_DELAYS_MS": json.dumps(RETRY_DELAYS_MS),
        "ORDER_TOKEN_WAIT_SECONDS": "0.5",
        # Longer than any wait here: every event must come out through the wake-up of the
        # request or delivery that wrote it (sagakit.units), not the relay's sweep.
        "OUTBOX_SWEEP_SECONDS": "600",
    }
    log_path: Path = tmp_path_factory.mktemp("order") / "service.log"
    async with ServiceProcess("order", env, log_path) as running:
        yield running


# --- the customer's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    """An order as the API accepted it, and its ``order.created`` as payment received it."""

    view: dict[str, Any]
    created: Announced

    @property
    def id(self) -> UUID:
        return UUID(self.view["id"])


def order_body(items: Sequence[tuple[str, int]] = (("burger-classic", 2), ("fries", 1)),
               token: str = "tok_visa") -> dict[str, Any]:
    return {"customer": {"name": "Ana", "email": "ana@example.com"},
            "items": [{"sku": sku, "quantity": quantity} for sku, quantity in items],
            "payment_token": token}


async def place(http: httpx.AsyncClient, tap: EventTap, body: dict[str, Any] | None = None,
                **kwargs: Any) -> Placed:
    response = await http.post("/api/v1/orders", json=body or order_body(), **kwargs)
    assert response.status_code == 202, response.text
    view = response.json()
    return Placed(view, await tap.wait_for(E.ORDER_CREATED, view["id"]))


async def order_in(http: httpx.AsyncClient, order_id: UUID, status: str) -> dict[str, Any]:
    """The order once it is ``status`` (polled: its HTTP view gives no event to wait on)."""
    view: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal view
        view = (await http.get(f"/api/v1/orders/{order_id}")).json()
        return view.get("status") == status

    await until(reached, f"order {order_id} to be {status}", detail=lambda: f"; it is {view}")
    return view


def timeline(order: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Each status the order went through, with the id of the event that moved it there."""
    return [(step["status"], step["event_id"]) for step in order["timeline"]]


async def orders_count(http: httpx.AsyncClient) -> int:
    return len((await http.get("/api/v1/orders", params={"limit": 500})).json())


async def all_published(http: httpx.AsyncClient, tap: EventTap) -> None:
    """Wait until whatever the service committed so far is on the tap: the relay publishes in
    commit order, so once a new order's ``order.created`` is out, all before it is out too."""
    await place(http, tap)


# --- the neighbours' side ------------------------------------------------------------------------


def announce(source: str, event: Event, subject: object,
             traceparent: str | None = None) -> OutgoingEvent:
    """``event`` as its publisher's outbox would hold it, continuing ``traceparent``'s trace."""
    with telemetry.span(f"{event.type} (a neighbour)", parent={"traceparent": traceparent or ""}):
        return OutgoingEvent.build(event, source=source, subject=str(subject))


def reply(source: str, event: Event, order: Placed) -> OutgoingEvent:
    """A neighbour's answer about ``order``: it carries on the order's trace."""
    return announce(source, event, order.id, order.created.headers["traceparent"])


def payment_processed(order: Placed, outcome: Literal["approved", "declined"] = "approved",
                      reason: str | None = None) -> OutgoingEvent:
    created = order.created.body
    return reply(PAYMENT, PaymentProcessed(
        order_id=order.id, payment_id=uuid4(), outcome=outcome,
        amount=Decimal(created["amount"]), currency=created["currency"], reason=reason,
    ), order)


def kitchen(order: Placed) -> list[OutgoingEvent]:
    """production.queued, production.started and order.finished for one ticket of ``order``."""
    ticket_id = uuid4()
    return [reply(PRODUCTION, step(order_id=order.id, ticket_id=ticket_id), order)
            for step in (ProductionQueued, ProductionStarted, OrderFinished)]


async def paid(http: httpx.AsyncClient, tap: EventTap,
               publish: Publish) -> tuple[Placed, OutgoingEvent]:
    """A placed order whose payment was approved: paid, and handed to the kitchen."""
    order = await place(http, tap)
    approved = payment_processed(order)
    await publish(approved)
    await order_in(http, order.id, "paid")
    return order, approved


# --- placing an order ----------------------------------------------------------------------------


async def test_a_placed_order_is_accepted_and_announced_at_menu_prices(
    http: httpx.AsyncClient, tap: EventTap,
) -> None:
    menu = {p["sku"]: p for p in (await http.get("/api/v1/products")).json()}
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    response = await http.post("/api/v1/orders", json=order_body(),
                               headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})

    assert response.status_code == 202, response.text
    order = response.json()
    assert response.headers["Location"] == f"/api/v1/orders/{order['id']}"
    assert (order["status"], order["trace_id"]) == ("pending_payment", trace_id)
    burger, fries = menu["burger-classic"], menu["fries"]
    assert order["total"] == "20.50" == str(2 * Decimal(burger["price"]) + Decimal(fries["price"]))
    created = await tap.wait_for(E.ORDER_CREATED, order["id"])
    assert created.body == {
        "order_id": order["id"], "amount": "20.50", "currency": "EUR", "payment_token": "tok_visa",
        "lines": [
            {"sku": "burger-classic", "name": burger["name"], "quantity": 2,
             "unit_price": burger["price"]},
            {"sku": "fries", "name": fries["name"], "quantity": 1, "unit_price": fries["price"]},
        ],
        "owner": "ops-console",  # the token's sub: who placed it
    }
    headers = created.headers
    assert {k: headers[k] for k in ("ce-specversion", "ce-type", "ce-source", "ce-subject",
                                    "ce-datacontenttype", "ce-dataschema")} == {
        "ce-specversion": "1.0", "ce-type": "order.created", "ce-source": "saga-shop/order",
        "ce-subject": order["id"], "ce-datacontenttype": "application/json",
        "ce-dataschema": "urn:saga-shop:event:order.created:v1"}
    assert datetime.fromisoformat(headers["ce-time"]).tzinfo is not None
    assert created.trace_id == trace_id  # one order, one trace
    message = created.message
    assert (message.message_id, message.correlation_id, message.content_type) == (
        headers["ce-id"], order["id"], "application/json")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_an_announced_card_token_is_accepted_and_an_unknown_one_refused(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish,
) -> None:
    token = f"tok_{uuid4().hex[:24]}"
    card = CardTokenized(token=token, brand="visa", last4="4242", created_at=datetime.now(UTC))

    await publish(announce(PAYMENT, card, CardTokenized.subject_of(token)))
    order = await place(http, tap, order_body(token=token))  # as soon as it is announced

    assert order.created.body["payment_token"] == token
    before = await orders_count(http)
    response = await http.post("/api/v1/orders", json=order_body(token="tok_neverAnnounced"))
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"field": "payment_token", "message": "payment token 'tok_neverAnnounced' is not known"}]
    assert await orders_count(http) == before


async def test_an_idempotency_key_replays_its_order_and_refuses_another_body(
    http: httpx.AsyncClient, tap: EventTap,
) -> None:
    key = {"Idempotency-Key": f"it-{uuid4()}"}
    before = await orders_count(http)

    first = await http.post("/api/v1/orders", json=order_body(), headers=key)
    replay = await http.post("/api/v1/orders", json=order_body(), headers=key)
    other = await http.post("/api/v1/orders", json=order_body([("fries", 3)]), headers=key)

    assert (first.status_code, replay.status_code) == (202, 202), (first.text, replay.text)
    order_id = first.json()["id"]
    assert "Idempotent-Replayed" not in first.headers
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == order_id
    assert replay.headers["Location"] == f"/api/v1/orders/{order_id}"
    assert other.status_code == 409, other.text
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    await all_published(http, tap)
    assert tap.count(E.ORDER_CREATED, order_id) == 1
    assert await orders_count(http) == before + 2  # this one and all_published's


async def test_concurrent_requests_with_one_idempotency_key_make_one_order(
    http: httpx.AsyncClient, tap: EventTap,
) -> None:
    key = {"Idempotency-Key": f"it-{uuid4()}"}

    responses = await asyncio.gather(*(http.post("/api/v1/orders", json=order_body(),
                                                 headers=key) for _ in range(5)))

    assert [r.status_code for r in responses] == [202] * 5
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    order_id = responses[0].json()["id"]
    await all_published(http, tap)
    assert tap.count(E.ORDER_CREATED, order_id) == 1


# --- the saga ---------------------------------------------------------------------------------


async def test_an_approved_payment_makes_the_order_paid_and_sends_it_to_the_kitchen(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish,
) -> None:
    order = await place(http, tap)
    approved = payment_processed(order)

    await publish(approved)

    view = await order_in(http, order.id, "paid")
    assert timeline(view) == [("pending_payment", None), ("paid", str(approved.id))]
    received = await tap.wait_for(E.ORDER_RECEIVED, order.id)
    assert received.body == {"order_id": str(order.id), "lines": order.created.body["lines"]}
    assert received.headers["ce-source"] == "saga-shop/order"
    assert received.trace_id == order.view["trace_id"]


async def test_the_kitchen_takes_a_paid_order_to_finished_through_every_status(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish,
) -> None:
    order, approved = await paid(http, tap, publish)
    steps = kitchen(order)

    for step in steps:  # as a kitchen at full speed sends them: at once
        await publish(step)

    view = await order_in(http, order.id, "finished")
    assert timeline(view) == list(zip(HAPPY_PATH, [None, str(approved.id),
                                                   *(str(s.id) for s in steps)], strict=True))
    times = [step["at"] for step in view["timeline"]]
    assert times == sorted(times)
    assert view["cancellation_reason"] is None
    refused = await http.post(f"/api/v1/orders/{order.id}/cancel")
    assert refused.status_code == 409, refused.text
    assert refused.json()["order_status"] == "finished"
    await all_published(http, tap)
    assert tap.of(E.ORDER_CANCELLED, order.id) == []


async def test_a_declined_payment_cancels_the_order_and_nothing_goes_to_the_kitchen(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish,
) -> None:
    order = await place(http, tap, order_body(token="tok_chargeDeclined"))
    declined = payment_processed(order, "declined", "card_declined")

    await publish(declined)

    view = await order_in(http, order.id, "cancelled")
    assert timeline(view) == [("pending_payment", None), ("cancelled", str(declined.id))]
    assert view["cancellation_reason"] == "payment declined: card_declined"
    await all_published(http, tap)
    assert tap.of(E.ORDER_RECEIVED, order.id) == []
    assert tap.of(E.ORDER_CANCELLED, order.id) == []  # nothing was charged: nothing to undo


async def test_a_kitchen_failure_cancels_the_order_and_the_refund_ends_it(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish,
) -> None:
    order, approved = await paid(http, tap, publish)
    failed = reply(PRODUCTION, ProductionFailed(
        order_id=order.id, reason="out of stock: truffle-risotto",
    ), order)

    await publish(failed)

    await order_in(http, order.id, "cancelling")
    cancelled = await tap.wait_for(E.ORDER_CANCELLED, order.id)
    assert cancelled.body == {"order_id": str(order.id), "requested_by": "production",
                              "reason": "production failed: out of stock: truffle-risotto"}
    assert cancelled.trace_id == order.view["trace_id"]
    refunded = reply(PAYMENT, PaymentRefunded(
        order_id=order.id, payment_id=uuid4(),
        refund_of=json.loads(approved.body)["payment_id"],
        amount=Decimal(order.created.body["amount"]), currency="EUR",
    ), order)
    await publish(refunded)
    view = await order_in(http, order.id, "refunded")
    assert timeline(view) == [("pending_payment", None), ("paid", str(approved.id)),
                              ("cancelling", str(failed.id)), ("refunded", str(refunded.id))]
    assert view["cancellation_reason"] == "production failed: out of stock: truffle-risotto"


async def test_a_customer_cancel_asks_payment_to_undo_and_the_void_ends_it(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish,
) -> None:
    order = await place(http, tap)

    response = await http.post(f"/api/v1/orders/{order.id}/cancel")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelling"
    cancelled = await tap.wait_for(E.ORDER_CANCELLED, order.id)
    assert cancelled.body == {"order_id": str(order.id), "requested_by": "customer",
                              "reason": "cancelled by the customer"}
    voided = reply(PAYMENT, PaymentVoided(order_id=order.id, reason="cancelled_before_charge"),
                   order)
    await publish(voided)
    view = await order_in(http, order.id, "cancelled")
    assert timeline(view) == [("pending_payment", None), ("cancelling", None),
                              ("cancelled", str(voided.id))]
    assert view["cancellation_reason"] == "cancelled by the customer"
    assert (await http.post(f"/api/v1/orders/{order.id}/cancel")).status_code == 409


# --- out of order, twice, or for nobody ----------------------------------------------------------


async def test_an_early_event_is_retried_and_applied_in_its_turn(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish, service: ServiceProcess,
) -> None:
    order, approved = await paid(http, tap, publish)
    queued, started, finished = kitchen(order)

    await publish(started)  # overtook production.queued
    await service.logged(started.id, "retrying")
    assert (await http.get(f"/api/v1/orders/{order.id}")).json()["status"] == "paid"
    await publish(queued)
    await publish(finished)

    view = await order_in(http, order.id, "finished")
    assert timeline(view) == list(zip(HAPPY_PATH, [None, str(approved.id), str(queued.id),
                                                   str(started.id), str(finished.id)],
                                      strict=True))


async def test_a_redelivered_payment_moves_the_order_once(
    http: httpx.AsyncClient, tap: EventTap, publish: Publish, service: ServiceProcess,
) -> None:
    order, approved = await paid(http, tap, publish)
    await tap.wait_for(E.ORDER_RECEIVED, order.id)

    await publish(approved)  # the same event id again, as after a relay crash

    await service.logged(approved.id, "duplicate payment.processed ignored")
    view = (await http.get(f"/api/v1/orders/{order.id}")).json()
    assert timeline(view) == [("pending_payment", None), ("paid", str(approved.id))]
    await all_published(http, tap)
    assert tap.count(E.ORDER_RECEIVED, order.id) == 1


async def test_an_event_for_an_order_it_never_created_is_parked(
    http: httpx.AsyncClient, publish: Publish, service: ServiceProcess,
    dead_letters: aio_pika.abc.AbstractQueue,
) -> None:
    stranger = uuid4()
    event = announce(PAYMENT, PaymentProcessed(
        order_id=stranger, payment_id=uuid4(), outcome="approved", amount=Decimal("9.99"),
        currency="EUR",
    ), stranger)

    await publish(event)

    await service.logged(event.id, "parked")
    parked = await dead_letters.get(timeout=5)
    await parked.ack()
    assert parked.message_id == str(event.id)
    assert parked.headers["x-attempts"] == 1  # poison: never retried
    assert parked.headers["x-original-queue"] == "order.payment-events"
    assert parked.headers["ce-type"] == "payment.processed"
    assert "never created" in str(parked.headers["x-dead-letter-reason"])
    assert (await http.get(f"/api/v1/orders/{stranger}")).status_code == 404

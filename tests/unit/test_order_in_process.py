"""The order service's saga steps in process: its real handlers, middleware and use cases on
FastStream's in-memory broker (TestRabbitBroker), over an in-memory store. Milliseconds each.

What this layer proves: an event published on ``saga.events`` reaches the right handler through
the service's real bindings and filters, which maps it to the right trigger; the use case loads,
lets order.domain decide, and saves what it decided with the events it announces; duplicates,
early, stale and unknown-order events take their paths; a lost race is decided again. What it
leaves to tests/integration: the SQL (order.store), the outbox relay and the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import pytest
from faststream.rabbit import TestRabbitBroker

from order import handlers, metrics, service, store
from order.domain import Line, OrderRef, Status, Trigger
from order.settings import OrderSettings
from sagakit.consuming import Poison, RetryLater
from sagakit.envelope import EventMeta, OutgoingEvent
from sagakit.events import (
    Event,
    OrderCancellationRequested,
    OrderCancelled,
    OrderFinished,
    OrderReceived,
    PaymentProcessed,
    PaymentRefunded,
    ProductionCancelled,
    ProductionFailed,
    ProductionQueued,
    ProductionStarted,
)
from sagakit.runtime import Messaging
from tests.in_process import Bus, FakePool, envelope

S = Status


@dataclass
class Step:
    status: Status
    reason: str | None
    event_type: str | None
    announced: list[OutgoingEvent]


@dataclass
class FakeOrders:
    """order.store's read / transition / mark_cancel_requested, in memory, with the same
    contract: a change applies only to the version it was decided on."""

    orders: dict[UUID, OrderRef] = field(default_factory=dict)
    seen: set[UUID] = field(default_factory=set)
    steps: list[Step] = field(default_factory=list)
    lose_next_race: bool = False  # another replica commits a step just before ours
    reads: int = 0

    def add(self, status: Status) -> OrderRef:
        order = OrderRef(id=uuid4(), status=status, total=Decimal("12.00"), currency="EUR",
                         lines=(Line("burger", "Burger", 1, Decimal("8.50")),
                                Line("fries", "Fries", 1, Decimal("3.50"))),
                         accepted_at=datetime.now(UTC), version=1)
        self.orders[order.id] = order
        return order

    async def read(self, conn: object, order_id: UUID,
                   event_id: UUID | None = None) -> tuple[OrderRef | None, bool]:
        self.reads += 1
        return self.orders.get(order_id), event_id in self.seen

    def _commit(self, order: OrderRef, **changes: Any) -> bool:
        if self.lose_next_race:
            self.lose_next_race = False
            self.orders[order.id] = replace(order, version=order.version + 1)
            return False
        if self.orders[order.id].version != order.version:
            return False
        self.orders[order.id] = replace(order, version=order.version + 1, **changes)
        return True

    async def transition(self, conn: object, order: OrderRef, status: Status, *,
                         reason: str | None, event: EventMeta | None, trace_id: str,
                         announce: Sequence[OutgoingEvent] = ()) -> bool:
        if event is not None and event.id in self.seen:
            return False  # a redelivery: the real statement refuses it too
        if not self._commit(order, status=status):
            return False
        if event is not None:
            self.seen.add(event.id)
        self.steps.append(Step(status, reason, event.type if event else None, list(announce)))
        return True

    async def mark_cancel_requested(self, conn: object, order: OrderRef,
                                    announce: Sequence[OutgoingEvent]) -> bool:
        if not self._commit(order, cancel_requested=True):
            return False
        self.steps.append(Step(order.status, None, None, list(announce)))
        return True

    async def trace_of(self, conn: object, order_id: UUID) -> tuple[str, str, bool] | None:
        """An order placed in a trace: the cancel continues it (order.service.cancel_order)."""
        return ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True) \
            if order_id in self.orders else None


@pytest.fixture
def orders(monkeypatch: pytest.MonkeyPatch) -> FakeOrders:
    fake = FakeOrders()
    for name in ("read", "transition", "mark_cancel_requested", "trace_of"):
        monkeypatch.setattr(store, name, getattr(fake, name))
    monkeypatch.setattr(service.EARLY_EVENTS, "rechecks", (0.0,))
    monkeypatch.setattr(service, "KNOWN_ORDERS", service.KnownOrders())
    monkeypatch.setattr(metrics, "saga_ended", lambda *args: None)
    return fake


@pytest.fixture
async def bus(orders: FakeOrders) -> AsyncIterator[Bus]:
    """The order service's consumers, middleware and handlers on an in-memory broker."""
    messaging = Messaging("order", OrderSettings(), handlers.QUEUES)
    handlers.router.include(messaging, SimpleNamespace(pool=FakePool()))
    async with TestRabbitBroker(messaging.broker) as broker:
        yield Bus(broker, handlers.QUEUES)


def announced(step: Step) -> list[Event | None]:
    kinds: dict[str, type[Event]] = {"order.received": OrderReceived,
                                     "order.cancelled": OrderCancelled,
                                     "order.cancellation_requested": OrderCancellationRequested}
    return [kinds[e.type].model_validate_json(e.body) for e in step.announced]


async def test_an_approved_payment_makes_the_order_paid_and_sends_the_kitchen_its_ticket(
    orders: FakeOrders, bus: Bus,
) -> None:
    order = orders.add(S.PENDING_PAYMENT)
    await bus.publish(envelope(PaymentProcessed(
        order_id=order.id, payment_id=uuid4(), outcome="approved", amount=order.total,
        currency="EUR"), order.id))
    assert orders.orders[order.id].status is S.PAID
    (step,) = orders.steps
    assert step.event_type == "payment.processed"
    (ticket,) = announced(step)
    assert isinstance(ticket, OrderReceived)
    assert [x.sku for x in ticket.lines] == ["burger", "fries"]


async def test_a_declined_payment_cancels_with_its_reason_and_announces_nothing(
    orders: FakeOrders, bus: Bus,
) -> None:
    order = orders.add(S.PENDING_PAYMENT)
    await bus.publish(envelope(PaymentProcessed(
        order_id=order.id, payment_id=uuid4(), outcome="declined", reason="card_declined",
        amount=order.total, currency="EUR"), order.id))
    assert orders.orders[order.id].status is S.CANCELLED
    (step,) = orders.steps
    assert (step.reason, step.announced) == ("payment declined: card_declined", [])


@pytest.mark.parametrize(("event", "requested_by", "reason"), [
    (lambda order_id: ProductionFailed(order_id=order_id, reason="out of stock",
                                       missing=()),
     "production", "production failed: out of stock"),
    (lambda order_id: ProductionCancelled(order_id=order_id), "customer",
     "cancelled by the customer"),
])
async def test_the_kitchen_dropping_a_paid_order_asks_payment_to_compensate(
    orders: FakeOrders, bus: Bus, event: Any, requested_by: str, reason: str,
) -> None:
    order = orders.add(S.RECEIVED)
    await bus.publish(envelope(event(order.id), order.id))
    assert orders.orders[order.id].status is S.CANCELLING
    (step,) = orders.steps
    (cancelled,) = announced(step)
    assert isinstance(cancelled, OrderCancelled)
    assert (cancelled.requested_by, cancelled.reason, step.reason) == (
        requested_by, reason, reason)


async def test_a_redelivered_event_changes_nothing(orders: FakeOrders,
                                                    bus: Bus) -> None:
    order = orders.add(S.CANCELLING)
    refunded = envelope(PaymentRefunded(order_id=order.id, payment_id=uuid4(),
                                        refund_of=uuid4(), amount=order.total, currency="EUR"),
                        order.id)
    await bus.publish(refunded)
    await bus.publish(refunded)
    assert orders.orders[order.id].status is S.REFUNDED
    assert len(orders.steps) == 1


async def test_a_stale_event_is_acknowledged_and_ignored(orders: FakeOrders,
                                                         bus: Bus) -> None:
    order = orders.add(S.CANCELLING)
    await bus.publish(envelope(ProductionStarted(order_id=order.id, ticket_id=uuid4()),
                               order.id))
    assert orders.orders[order.id].status is S.CANCELLING
    assert orders.steps == []


async def test_an_early_event_is_retried_not_applied(orders: FakeOrders) -> None:
    order = orders.add(S.PAID)
    meta = EventMeta(id=uuid4(), type="production.started", subject=str(order.id),
                     attempt=1)
    with pytest.raises(RetryLater):
        await service.advance(FakePool(), order.id,
                              Trigger.PRODUCTION_STARTED, meta)
    assert orders.orders[order.id].status is S.PAID and orders.steps == []


async def test_an_event_for_an_order_never_created_here_is_poison(orders: FakeOrders) -> None:
    meta = EventMeta(id=uuid4(), type="payment.refunded", subject="x", attempt=1)
    with pytest.raises(Poison):
        await service.advance(FakePool(), uuid4(),
                              Trigger.PAYMENT_REFUNDED, meta)


async def test_a_lost_race_is_decided_again_on_the_order_as_it_now_is(
    orders: FakeOrders,
) -> None:
    order = orders.add(S.PENDING_PAYMENT)
    orders.lose_next_race = True
    meta = EventMeta(id=uuid4(), type="payment.processed", subject=str(order.id),
                     attempt=1)
    await service.advance(FakePool(), order.id,
                          Trigger.PAYMENT_APPROVED, meta)
    assert orders.orders[order.id].status is S.PAID
    assert orders.orders[order.id].version == 3  # the other step's, then ours
    assert len(orders.steps) == 1


async def test_a_customer_cancel_before_payment_compensates_at_once(orders: FakeOrders) -> None:
    order = orders.add(S.PENDING_PAYMENT)
    assert await service.cancel_order(FakePool(), order.id) is S.CANCELLING
    (step,) = orders.steps
    (cancelled,) = announced(step)
    assert isinstance(cancelled, OrderCancelled) and cancelled.requested_by == "customer"


async def test_a_customer_cancel_of_a_paid_order_only_asks_the_kitchen(
    orders: FakeOrders,
) -> None:
    order = orders.add(S.RECEIVED)
    assert await service.cancel_order(FakePool(), order.id) is S.RECEIVED
    assert orders.orders[order.id].cancel_requested
    (step,) = orders.steps
    (asked,) = announced(step)
    assert isinstance(asked, OrderCancellationRequested)
    with pytest.raises(service.CannotCancel):  # a second request while the kitchen decides
        await service.cancel_order(FakePool(), order.id)


async def test_the_steps_of_a_saga_this_process_wrote_are_decided_without_reading(
    orders: FakeOrders, bus: Bus,
) -> None:
    order = orders.add(S.PENDING_PAYMENT)
    service.KNOWN_ORDERS.wrote(order)  # as place_order leaves it
    ticket = uuid4()
    for event in (
        PaymentProcessed(order_id=order.id, payment_id=uuid4(), outcome="approved",
                         amount=order.total, currency="EUR"),
        ProductionQueued(order_id=order.id, ticket_id=ticket),
        ProductionStarted(order_id=order.id, ticket_id=ticket),
        OrderFinished(order_id=order.id, ticket_id=ticket),
    ):
        await bus.publish(envelope(event, order.id))
    assert [step.status for step in orders.steps] == [S.PAID, S.RECEIVED, S.IN_PRODUCTION,
                                                      S.FINISHED]
    assert orders.reads == 0
    assert service.KNOWN_ORDERS.get(order.id) is None  # its saga is over: forgotten


async def test_a_known_order_changed_elsewhere_is_read_again_and_decided_on_what_it_is(
    orders: FakeOrders, bus: Bus,
) -> None:
    order = orders.add(S.PAID)
    service.KNOWN_ORDERS.wrote(order)
    # Another replica (or the customer's cancel) moved it on since this process wrote it.
    orders.orders[order.id] = replace(order, status=S.CANCELLING, version=order.version + 1)
    await bus.publish(envelope(ProductionQueued(order_id=order.id, ticket_id=uuid4()),
                               order.id))
    assert orders.orders[order.id].status is S.CANCELLING  # stale for what it is: ignored
    assert orders.steps == [] and orders.reads == 1


async def test_a_refusal_is_never_decided_on_what_this_process_remembers(
    orders: FakeOrders, bus: Bus,
) -> None:
    order = orders.add(S.PENDING_PAYMENT)
    service.KNOWN_ORDERS.wrote(order)
    orders.orders[order.id] = replace(order, status=S.PAID, version=order.version + 1)
    # Early for the remembered state, right for the real one: applied, not retried.
    await bus.publish(envelope(ProductionQueued(order_id=order.id, ticket_id=uuid4()),
                               order.id))
    assert orders.orders[order.id].status is S.RECEIVED and orders.reads == 1

"""The kitchen's saga steps in process: its real handlers, middleware and use cases on
FastStream's in-memory broker (TestRabbitBroker), over an in-memory ProductionStore.
Milliseconds each.

What this layer proves: order.received, order.cancellation_requested and order.cancelled reach
their handlers through the service's real bindings and filters; the use case builds the events
to announce and hands them to the right store step; it reports a shortage (or the failure-rate
switch) as production.failed, and answers a customer's cancel by the store's decision. The fake
keeps the Lua scripts' contract (their outcomes, the inbox, the tombstone, one announcement
per step at most) by production.domain's rules. What it leaves to tests/integration: the
scripts themselves in Redis, the kitchen line's cooks, the outbox relay and the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from uuid import UUID, uuid4

import pytest
from faststream.rabbit import TestRabbitBroker

from production import handlers, service
from production.domain import (
    FAULT_FAILURE,
    CancelAnswer,
    ProductionFaults,
    Step,
    TicketLine,
    TicketStatus,
    answer_cancel_request,
    next_status,
    releases_stock,
)
from production.settings import ProductionSettings
from production.store import ProductionStore, Reservation
from sagakit.envelope import OutgoingEvent
from sagakit.events import (
    EVENT_MODELS,
    CustomerDataRequested,
    Event,
    EventType,
    MissingStock,
    OrderCancellationRequested,
    OrderCancelled,
    OrderLine,
    OrderReceived,
    ProductionCancelled,
    ProductionCancelRefused,
    ProductionCustomerData,
    ProductionFailed,
    ProductionQueued,
)
from sagakit.runtime import Messaging
from tests.in_process import Bus, FakeFaults, envelope

T = TicketStatus


@dataclass
class TicketState:
    """What the scripts keep of a ticket and read back (ticket:<id>, order-ticket:<order id>)."""

    id: UUID
    status: TicketStatus
    lines: tuple[TicketLine, ...]


@dataclass(frozen=True)
class Call:
    """One store step: its outcome, and the event its script appended to the outbox."""

    method: str
    outcome: str
    announced: OutgoingEvent | None = None


class FakeKitchen(ProductionStore):
    """ProductionStore's steps for the saga's events, in memory, with its scripts' contract:
    the inbox marks an event consumed, the tombstone keeps a late order.received out, a step
    announces at most one event. A subclass, so mypy holds each step's signature to the real
    one; a step not faked here fails (there is no Redis)."""

    def __init__(self, stock: Mapping[str, int]) -> None:
        self.stock = dict(stock)
        self.ticket_of_order: dict[UUID, TicketState] = {}
        self.tombstones: set[UUID] = set()
        self.inbox: set[UUID] = set()
        self.calls: list[Call] = []

    def _first(self, event_id: UUID) -> bool:
        first = event_id not in self.inbox
        self.inbox.add(event_id)
        return first

    def _did(self, method: str, outcome: str, announced: OutgoingEvent | None = None) -> str:
        self.calls.append(Call(method, outcome, announced))
        return outcome

    def _release(self, ticket: TicketState) -> None:
        for line in ticket.lines:
            self.stock[line.sku] += line.quantity

    async def reserve(
        self, *, event_id: UUID, order_id: UUID, ticket_id: UUID, lines: Iterable[TicketLine],
        needed: Mapping[str, int], announcement: OutgoingEvent, traceparent: str, at: datetime,
    ) -> Reservation:
        if event_id in self.inbox:
            return self._reserved(Reservation("duplicate"))
        if order_id in self.tombstones:
            self.inbox.add(event_id)
            return self._reserved(Reservation("cancelled"))
        if existing := self.ticket_of_order.get(order_id):
            self.inbox.add(event_id)
            return self._reserved(Reservation("exists", existing.id))
        levels = {sku: self.stock.get(sku) for sku in needed}
        if any(have is None or have < needed[sku] for sku, have in levels.items()):
            return self._reserved(Reservation("short", levels=levels))  # not even the inbox
        for sku, units in needed.items():
            self.stock[sku] -= units
        self.ticket_of_order[order_id] = TicketState(ticket_id, T.QUEUED, tuple(lines))
        self.inbox.add(event_id)
        return self._reserved(Reservation("queued", ticket_id), announcement)

    def _reserved(self, reservation: Reservation,
                  announced: OutgoingEvent | None = None) -> Reservation:
        self._did("reserve", reservation.outcome, announced)
        return reservation

    async def record_failure(self, *, event_id: UUID, order_id: UUID,
                             announcement: OutgoingEvent) -> str:
        if not self._first(event_id):
            return self._did("record_failure", "duplicate")
        if order_id in self.tombstones:
            return self._did("record_failure", "cancelled")
        if order_id in self.ticket_of_order:
            return self._did("record_failure", "exists")
        return self._did("record_failure", "failed", announcement)

    async def cancel(self, *, event_id: UUID, order_id: UUID, at: datetime) -> str:
        if not self._first(event_id):
            return self._did("cancel", "duplicate")
        self.tombstones.add(order_id)
        ticket = self.ticket_of_order.get(order_id)
        if ticket is None:
            return self._did("cancel", "no_ticket")
        if next_status(ticket.status, Step.CANCEL) is None:
            return self._did("cancel", ticket.status)  # done or cancelled: nothing to undo
        released = releases_stock(ticket.status)
        if released:
            self._release(ticket)
        ticket.status = T.CANCELLED
        return self._did("cancel", "released" if released else "stopped")

    async def ticket_of(self, order_id: UUID) -> UUID | None:
        ticket = self.ticket_of_order.get(order_id)
        return None if ticket is None else ticket.id

    async def request_cancel(
        self, *, event_id: UUID, order_id: UUID, ticket_id: UUID | None, at: datetime,
        accepted: OutgoingEvent, refused: OutgoingEvent,
    ) -> str:
        ticket = self.ticket_of_order.get(order_id)
        if (None if ticket is None else ticket.id) != ticket_id:
            return self._did("request_cancel", "moved")
        if not self._first(event_id):
            return self._did("request_cancel", "duplicate")
        answer = answer_cancel_request(None if ticket is None else ticket.status)
        if answer is CancelAnswer.RELEASED:
            assert ticket is not None
            self._release(ticket)
            ticket.status = T.CANCELLED
        if answer in (CancelAnswer.NO_TICKET, CancelAnswer.RELEASED):
            self.tombstones.add(order_id)
        return self._did("request_cancel", answer,
                         refused if answer is CancelAnswer.REFUSED else accepted)

    async def answer_once(self, event_id: UUID, announcement: OutgoingEvent) -> str:
        if not self._first(event_id):
            return self._did("answer_once", "duplicate")
        return self._did("answer_once", "announced", announcement)

    async def start(self, ticket_id: UUID, announcement: OutgoingEvent, at: datetime) -> str:
        """A cook takes the ticket (start.lua; a held line is not modelled)."""
        (ticket,) = [t for t in self.ticket_of_order.values() if t.id == ticket_id]
        if ticket.status is T.IN_PROGRESS:
            return self._did("start", "resumed")
        if next_status(ticket.status, Step.START) is None:
            return self._did("start", "skip")
        ticket.status = T.IN_PROGRESS
        return self._did("start", "started", announcement)

    def steps(self) -> list[tuple[str, str, str | None]]:
        return [(c.method, c.outcome, c.announced.type if c.announced else None)
                for c in self.calls]

    def announced(self) -> list[Event]:
        return [EVENT_MODELS[EventType(c.announced.type)].model_validate_json(c.announced.body)
                for c in self.calls if c.announced is not None]


@pytest.fixture
def kitchen() -> FakeKitchen:
    return FakeKitchen({"burger": 10, "fries": 1})


@pytest.fixture
def faults() -> FakeFaults:
    return FakeFaults(**ProductionFaults().model_dump())  # off, as the service starts


@pytest.fixture
async def bus(kitchen: FakeKitchen, faults: FakeFaults) -> AsyncIterator[Bus]:
    """The production service's consumers, middleware and handlers on an in-memory broker."""
    messaging = Messaging("production", ProductionSettings(), handlers.QUEUES)
    handlers.router.include(messaging, SimpleNamespace(store=kitchen, faults=faults))
    async with TestRabbitBroker(messaging.broker) as broker:
        yield Bus(broker, handlers.QUEUES)


def received(order_id: UUID, *lines: tuple[str, int]) -> OutgoingEvent:
    return envelope(OrderReceived(order_id=order_id, lines=tuple(
        OrderLine(sku=sku, name=sku.title(), quantity=quantity, unit_price=Decimal("1.00"))
        for sku, quantity in lines)), order_id)


def cancelled(order_id: UUID) -> OutgoingEvent:
    return envelope(OrderCancelled(order_id=order_id, reason="payment declined",
                                   requested_by="production"), order_id)


def cancel_requested(order_id: UUID) -> OutgoingEvent:
    return envelope(OrderCancellationRequested(order_id=order_id,
                                               reason="cancelled by the customer"), order_id)


async def test_a_paid_order_reserves_its_stock_and_queues_its_ticket(kitchen: FakeKitchen,
                                                                     bus: Bus) -> None:
    order_id = uuid4()
    await bus.publish(received(order_id, ("burger", 2), ("fries", 1), ("burger", 1)))
    assert kitchen.steps() == [("reserve", "queued", "production.queued")]
    assert kitchen.stock == {"burger": 7, "fries": 0}  # the same SKU on two lines adds up
    ticket = kitchen.ticket_of_order[order_id]
    assert ticket.status is T.QUEUED
    (queued,) = kitchen.announced()
    assert isinstance(queued, ProductionQueued)
    assert (queued.order_id, queued.ticket_id) == (order_id, ticket.id)


async def test_an_order_short_of_stock_fails_with_what_is_missing_and_reserves_nothing(
    kitchen: FakeKitchen, bus: Bus,
) -> None:
    order_id = uuid4()
    await bus.publish(received(order_id, ("burger", 1), ("fries", 2), ("shake", 1)))
    assert kitchen.steps() == [("reserve", "short", None),
                               ("record_failure", "failed", "production.failed")]
    assert kitchen.stock == {"burger": 10, "fries": 1} and kitchen.ticket_of_order == {}
    (failed,) = kitchen.announced()
    assert isinstance(failed, ProductionFailed)
    assert (failed.order_id, failed.reason) == (order_id, "out of stock: fries, shake")
    assert failed.missing == (MissingStock(sku="fries", requested=2, available=1),
                              MissingStock(sku="shake", requested=1, available=0))


async def test_the_failure_rate_switch_fails_an_order_without_reserving(
    kitchen: FakeKitchen, faults: FakeFaults, bus: Bus,
) -> None:
    faults.values["failure_rate"] = 1.0
    await bus.publish(received(uuid4(), ("burger", 1)))
    assert kitchen.steps() == [("record_failure", "failed", "production.failed")]
    (failed,) = kitchen.announced()
    assert isinstance(failed, ProductionFailed) and failed.reason == FAULT_FAILURE
    assert kitchen.stock["burger"] == 10


async def test_a_redelivered_order_is_reserved_once(kitchen: FakeKitchen, bus: Bus) -> None:
    event = received(uuid4(), ("burger", 3))
    await bus.publish(event)
    await bus.publish(event)
    assert kitchen.steps() == [("reserve", "queued", "production.queued"),
                               ("reserve", "duplicate", None)]
    assert kitchen.stock["burger"] == 7


async def test_a_cancelled_order_gives_its_queued_stock_back_and_announces_nothing(
    kitchen: FakeKitchen, bus: Bus,
) -> None:
    order_id = uuid4()
    await bus.publish(received(order_id, ("burger", 4)))
    drop = cancelled(order_id)
    await bus.publish(drop)
    await bus.publish(drop)
    assert kitchen.steps()[1:] == [("cancel", "released", None), ("cancel", "duplicate", None)]
    assert kitchen.stock["burger"] == 10
    assert kitchen.ticket_of_order[order_id].status is T.CANCELLED


async def test_a_cancelled_order_a_cook_has_started_stops_and_keeps_its_stock_used(
    kitchen: FakeKitchen, bus: Bus,
) -> None:
    order_id = uuid4()
    await bus.publish(received(order_id, ("burger", 4)))
    await service.start_cooking(kitchen, kitchen.ticket_of_order[order_id].id, order_id)
    await bus.publish(cancelled(order_id))
    assert kitchen.steps()[1:] == [("start", "started", "production.started"),
                                   ("cancel", "stopped", None)]
    assert kitchen.stock["burger"] == 6


async def test_a_cancellation_that_overtakes_its_order_keeps_the_late_order_out(
    kitchen: FakeKitchen, bus: Bus,
) -> None:
    order_id = uuid4()
    await bus.publish(cancelled(order_id))
    await bus.publish(received(order_id, ("burger", 1)))
    assert kitchen.steps() == [("cancel", "no_ticket", None), ("reserve", "cancelled", None)]
    assert kitchen.ticket_of_order == {} and kitchen.stock["burger"] == 10


async def test_a_customer_cancel_of_a_queued_ticket_is_accepted_and_releases_it(
    kitchen: FakeKitchen, bus: Bus,
) -> None:
    order_id = uuid4()
    await bus.publish(received(order_id, ("burger", 2)))
    ticket_id = kitchen.ticket_of_order[order_id].id
    await bus.publish(cancel_requested(order_id))
    assert kitchen.steps()[1:] == [("request_cancel", "released", "production.cancelled")]
    assert kitchen.stock["burger"] == 10
    _queued, answer = kitchen.announced()
    assert isinstance(answer, ProductionCancelled)
    assert (answer.order_id, answer.ticket_id) == (order_id, ticket_id)


async def test_a_customer_cancel_of_a_started_ticket_is_refused(kitchen: FakeKitchen,
                                                                bus: Bus) -> None:
    order_id = uuid4()
    await bus.publish(received(order_id, ("burger", 2)))
    ticket_id = kitchen.ticket_of_order[order_id].id
    await service.start_cooking(kitchen, ticket_id, order_id)
    await bus.publish(cancel_requested(order_id))
    assert kitchen.steps()[-1] == ("request_cancel", "refused", "production.cancel_refused")
    assert kitchen.ticket_of_order[order_id].status is T.IN_PROGRESS
    answer = kitchen.announced()[-1]
    assert isinstance(answer, ProductionCancelRefused)
    assert (answer.order_id, answer.ticket_id, answer.reason) == (
        order_id, ticket_id, "the kitchen has already started this order")


async def test_a_customer_cancel_before_the_ticket_is_accepted_and_keeps_the_order_out(
    kitchen: FakeKitchen, bus: Bus,
) -> None:
    order_id = uuid4()
    ask = cancel_requested(order_id)
    await bus.publish(ask)
    await bus.publish(ask)
    await bus.publish(received(order_id, ("burger", 1)))
    assert kitchen.steps() == [("request_cancel", "no_ticket", "production.cancelled"),
                               ("request_cancel", "duplicate", None),
                               ("reserve", "cancelled", None)]
    (answer,) = kitchen.announced()
    assert isinstance(answer, ProductionCancelled) and answer.ticket_id is None


async def test_a_customer_cancel_of_a_dropped_ticket_is_accepted_again(kitchen: FakeKitchen,
                                                                       bus: Bus) -> None:
    order_id = uuid4()
    await bus.publish(received(order_id, ("burger", 2)))
    await bus.publish(cancelled(order_id))
    await bus.publish(cancel_requested(order_id))
    assert kitchen.steps()[-1] == ("request_cancel", "already_cancelled",
                                   "production.cancelled")
    assert kitchen.stock["burger"] == 10  # given back once


async def test_a_request_for_a_customers_data_is_answered_once(kitchen: FakeKitchen,
                                                               bus: Bus) -> None:
    request = envelope(CustomerDataRequested(export_id=uuid4(), customer_id="customer-1"),
                       "customer-1")
    await bus.publish(request)
    await bus.publish(request)
    assert kitchen.steps() == [("answer_once", "announced", "production.customer_data"),
                               ("answer_once", "duplicate", None)]
    (answer,) = kitchen.announced()
    assert isinstance(answer, ProductionCustomerData) and answer.data["personal_data"] == []

"""The order and its saga state machine: pure rules, no I/O.

The transition table below *is* the saga as the order service sees it: every step, and every
event a step causes. Each event the order reacts to is a trigger; a trigger either moves the
order (and the table says which events to announce), arrives too early (its precondition is not
met yet: retry it later), or is stale (the order has moved past it: acknowledge and ignore).

:func:`decide` turns an order and a trigger into a :class:`Decision` (the verdict, the status
after, the events to announce); :func:`decide_cancel` does the same for a customer's cancel.
The service layer (order.service) only loads the order, asks, and saves what was decided, in one
transaction with the outbox.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from sagakit.events import (
    Event,
    OrderCancellationRequested,
    OrderCancelled,
    OrderLine,
    OrderReceived,
)


class Status(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    RECEIVED = "received"  # in the kitchen's queue, stock reserved
    IN_PRODUCTION = "in_production"
    FINISHED = "finished"  # terminal: the happy end
    CANCELLING = "cancelling"  # compensating: waiting for payment to refund or void
    CANCELLED = "cancelled"  # terminal: nothing was charged
    REFUNDED = "refunded"  # terminal: charged, then refunded


class Trigger(StrEnum):
    PAYMENT_APPROVED = "payment approved"
    PAYMENT_DECLINED = "payment declined"
    PRODUCTION_QUEUED = "production queued"
    PRODUCTION_STARTED = "production started"
    PRODUCTION_FINISHED = "production finished"
    PRODUCTION_FAILED = "production failed"
    PRODUCTION_CANCELLED = "production cancelled"  # the kitchen dropped the ticket on request
    CUSTOMER_CANCELLED = "customer cancelled"
    PAYMENT_REFUNDED = "payment refunded"
    PAYMENT_VOIDED = "payment voided"


class Emit(StrEnum):
    """What a step announces (the events themselves are built by :func:`decide`)."""

    TICKET = "order.received"  # the kitchen gets the order's ticket
    COMPENSATE_FOR_CUSTOMER = "order.cancelled, requested by the customer"  # refund or void
    COMPENSATE_FOR_KITCHEN = "order.cancelled, requested by production"  # refund or void


@dataclass(frozen=True)
class Step:
    to: Status
    emits: tuple[Emit, ...] = ()


S, T, E = Status, Trigger, Emit
TRANSITIONS: Mapping[tuple[Status, Trigger], Step] = {
    (S.PENDING_PAYMENT, T.PAYMENT_APPROVED): Step(S.PAID, (E.TICKET,)),
    (S.PENDING_PAYMENT, T.PAYMENT_DECLINED): Step(S.CANCELLED),  # nothing was charged
    (S.PENDING_PAYMENT, T.CUSTOMER_CANCELLED): Step(S.CANCELLING, (E.COMPENSATE_FOR_CUSTOMER,)),
    (S.PAID, T.PRODUCTION_QUEUED): Step(S.RECEIVED),
    (S.PAID, T.PRODUCTION_FAILED): Step(S.CANCELLING, (E.COMPENSATE_FOR_KITCHEN,)),
    (S.PAID, T.PRODUCTION_CANCELLED): Step(S.CANCELLING, (E.COMPENSATE_FOR_CUSTOMER,)),
    (S.RECEIVED, T.PRODUCTION_STARTED): Step(S.IN_PRODUCTION),
    (S.RECEIVED, T.PRODUCTION_FAILED): Step(S.CANCELLING, (E.COMPENSATE_FOR_KITCHEN,)),
    (S.RECEIVED, T.PRODUCTION_CANCELLED): Step(S.CANCELLING, (E.COMPENSATE_FOR_CUSTOMER,)),
    (S.IN_PRODUCTION, T.PRODUCTION_FINISHED): Step(S.FINISHED),
    (S.CANCELLING, T.PAYMENT_REFUNDED): Step(S.REFUNDED),
    (S.CANCELLING, T.PAYMENT_VOIDED): Step(S.CANCELLED),
}
TERMINAL = frozenset({S.FINISHED, S.CANCELLED, S.REFUNDED})
# Orders accepted and not started yet: waiting on the payment, the kitchen's intake or a free
# cook. What admission control counts (order.app, sagakit.admission): each is work the shop
# still owes, and a queue that only grows is a lag wherever it is. Orders being cooked are not
# counted: they end within a preparation time.
WAITING_TO_START = (S.PENDING_PAYMENT, S.PAID, S.RECEIVED)
# The happy path in order; an event meant for a later step than the order has reached is early.
HAPPY_PATH = (S.PENDING_PAYMENT, S.PAID, S.RECEIVED, S.IN_PRODUCTION, S.FINISHED)


class Verdict(StrEnum):
    APPLY = "apply"
    EARLY = "early"  # precondition not met yet: retry later
    STALE = "stale"  # the order moved past this: ignore


def judge(status: Status, trigger: Trigger) -> Verdict:
    if (status, trigger) in TRANSITIONS:
        return Verdict.APPLY
    sources = [s for (s, t) in TRANSITIONS if t is trigger and s in HAPPY_PATH]
    if status in HAPPY_PATH and sources and HAPPY_PATH.index(status) < min(
        HAPPY_PATH.index(s) for s in sources
    ):
        return Verdict.EARLY
    return Verdict.STALE


class CancelRoute(StrEnum):
    NOW = "now"  # nothing reached the kitchen: cancel, payment refunds or voids
    ASK_KITCHEN = "ask kitchen"  # the kitchen may have started: it decides (then we compensate)
    REFUSE = "refuse"


def cancel_route(status: Status, *, already_requested: bool = False) -> CancelRoute:
    """How a customer's cancel proceeds. A paid order is never compensated before the kitchen
    confirms it dropped the ticket: refunding first would refund food already being made."""
    if (status, T.CUSTOMER_CANCELLED) in TRANSITIONS:
        return CancelRoute.NOW
    if (status, T.PRODUCTION_CANCELLED) in TRANSITIONS and not already_requested:
        return CancelRoute.ASK_KITCHEN
    return CancelRoute.REFUSE


CUSTOMER_REASON = "cancelled by the customer"
# The reason a step records (timeline, order.cancelled) when its event brings none of its own.
REASONS: Mapping[Trigger, str] = {
    T.CUSTOMER_CANCELLED: CUSTOMER_REASON,
    T.PRODUCTION_CANCELLED: CUSTOMER_REASON,  # the kitchen dropped it on the customer's request
}


@dataclass(frozen=True)
class Decision:
    """What a trigger does to an order: the verdict, the status after, the events to announce
    and the reason recorded with the step.

    Only an ``APPLY`` decision changes anything; its events are written to the outbox in the
    same transaction as the status (order.store.transition).
    """

    verdict: Verdict
    status: Status
    events: tuple[Event, ...] = ()
    reason: str | None = None


def decide(order: OrderRef, trigger: Trigger, reason: str | None = None) -> Decision:
    """The saga's rule for one event: judge it against the order, and if it applies, the next
    status and the events the table says the step announces."""
    verdict = judge(order.status, trigger)
    if verdict is not Verdict.APPLY:
        return Decision(verdict, order.status)
    step = TRANSITIONS[(order.status, trigger)]
    reason = reason or REASONS.get(trigger)
    return Decision(verdict, step.to,
                    tuple(_announce(emit, order, trigger, reason) for emit in step.emits), reason)


def _announce(emit: Emit, order: OrderRef, trigger: Trigger, reason: str | None) -> Event:
    if emit is Emit.TICKET:
        return OrderReceived(order_id=order.id, lines=order_lines(order.lines))
    return OrderCancelled(
        order_id=order.id, reason=reason or str(trigger),
        requested_by="customer" if emit is Emit.COMPENSATE_FOR_CUSTOMER else "production",
    )


@dataclass(frozen=True)
class CancelDecision:
    """A customer's cancel: its route, the order's status after, the events to announce."""

    route: CancelRoute
    status: Status
    events: tuple[Event, ...] = ()


def decide_cancel(order: OrderRef) -> CancelDecision:
    """Before payment the cancel takes effect at once (and compensation is asked for); once
    paid, the kitchen is asked first (order.cancellation_requested) and the order stays as it
    is until it answers; a second request, or a later status, is refused."""
    route = cancel_route(order.status, already_requested=order.cancel_requested)
    if route is CancelRoute.NOW:
        now = decide(order, Trigger.CUSTOMER_CANCELLED)
        return CancelDecision(route, now.status, now.events)
    if route is CancelRoute.ASK_KITCHEN:
        return CancelDecision(route, order.status, (
            OrderCancellationRequested(order_id=order.id, reason=CUSTOMER_REASON),))
    return CancelDecision(route, order.status)


# --- pricing: the menu sets prices, never the client ---------------------------------------

MAX_QUANTITY = 9_999
MAX_LINES = 50


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price: Decimal


@dataclass(frozen=True)
class Line:
    sku: str
    name: str
    quantity: int
    unit_price: Decimal

    @property
    def total(self) -> Decimal:
        return self.unit_price * self.quantity


def order_lines(lines: Iterable[Line]) -> tuple[OrderLine, ...]:
    """An order's lines as the event contract carries them."""
    return tuple(OrderLine(sku=x.sku, name=x.name, quantity=x.quantity, unit_price=x.unit_price)
                 for x in lines)


@dataclass(frozen=True)
class PricedOrder:
    lines: tuple[Line, ...]
    total: Decimal = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum((line.total for line in self.lines), Decimal("0")))


class UnknownSku(Exception):
    def __init__(self, sku: str, index: int) -> None:
        super().__init__(f"unknown sku '{sku}'")
        self.sku, self.index = sku, index


class QuantityTooLarge(Exception):
    def __init__(self, sku: str, quantity: int) -> None:
        super().__init__(f"at most {MAX_QUANTITY} of '{sku}' per order, asked for {quantity}")
        self.sku, self.quantity = sku, quantity


def price(menu: Mapping[str, Product], requested: Iterable[tuple[str, int]]) -> PricedOrder:
    """Price the requested (sku, quantity) pairs from the menu; the same sku twice adds up."""
    quantities: dict[str, int] = {}
    for index, (sku, quantity) in enumerate(requested):
        if sku not in menu:
            raise UnknownSku(sku, index)
        quantities[sku] = quantities.get(sku, 0) + quantity
        if quantities[sku] > MAX_QUANTITY:
            raise QuantityTooLarge(sku, quantities[sku])
    return PricedOrder(
        tuple(
            Line(sku, menu[sku].name, quantity, menu[sku].price)
            for sku, quantity in quantities.items()
        )
    )


@dataclass(frozen=True)
class OrderRef:
    """The little the saga handlers need to know about an order to decide (and to time it)."""

    id: UUID
    status: Status
    total: Decimal
    currency: str
    lines: tuple[Line, ...]
    accepted_at: datetime
    version: int  # bumped by every change: a change applies only to the version it read
    cancel_requested: bool = False


class OrderFaults(BaseModel):
    """The order service's fault switch (sagakit.faults); the default is "off"."""

    model_config = ConfigDict(extra="forbid", strict=True)  # true is no rate, "7" no ms
    relay_paused: bool = Field(False, description="the outbox relay publishes nothing: new "
                               "orders wait in pending_payment, their events in the outbox")

"""The order and its saga state machine: pure rules, no I/O.

The transition table below *is* the saga as the order service sees it. Each event the order
reacts to is a trigger; a trigger either moves the order (and says which events to announce),
arrives too early (its precondition is not met yet: retry it later), or is stale (the order has
moved past it: acknowledge and ignore).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


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


S, T = Status, Trigger
TRANSITIONS: Mapping[tuple[Status, Trigger], Status] = {
    (S.PENDING_PAYMENT, T.PAYMENT_APPROVED): S.PAID,
    (S.PENDING_PAYMENT, T.PAYMENT_DECLINED): S.CANCELLED,
    (S.PENDING_PAYMENT, T.CUSTOMER_CANCELLED): S.CANCELLING,
    (S.PAID, T.PRODUCTION_QUEUED): S.RECEIVED,
    (S.PAID, T.PRODUCTION_FAILED): S.CANCELLING,
    (S.PAID, T.PRODUCTION_CANCELLED): S.CANCELLING,
    (S.RECEIVED, T.PRODUCTION_STARTED): S.IN_PRODUCTION,
    (S.RECEIVED, T.PRODUCTION_FAILED): S.CANCELLING,
    (S.RECEIVED, T.PRODUCTION_CANCELLED): S.CANCELLING,
    (S.IN_PRODUCTION, T.PRODUCTION_FINISHED): S.FINISHED,
    (S.CANCELLING, T.PAYMENT_REFUNDED): S.REFUNDED,
    (S.CANCELLING, T.PAYMENT_VOIDED): S.CANCELLED,
}
TERMINAL = frozenset({S.FINISHED, S.CANCELLED, S.REFUNDED})
# Orders waiting on a machine step (the payment, the kitchen's intake), not on a cook: what
# admission control counts (order.app, sagakit.admission).
WAITING_ON_A_STEP = (S.PENDING_PAYMENT, S.PAID)
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


class IllegalTransition(Exception):
    def __init__(self, status: Status, trigger: Trigger) -> None:
        super().__init__(f"an order that is {status} cannot take '{trigger}'")
        self.status, self.trigger = status, trigger


def next_status(status: Status, trigger: Trigger) -> Status:
    try:
        return TRANSITIONS[(status, trigger)]
    except KeyError:
        raise IllegalTransition(status, trigger) from None


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


def can_customer_cancel(status: Status) -> bool:
    return cancel_route(status) is not CancelRoute.REFUSE


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

    model_config = ConfigDict(extra="forbid")
    relay_paused: bool = Field(False, description="the outbox relay publishes nothing: new "
                               "orders wait in pending_payment, their events in the outbox")

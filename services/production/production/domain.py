"""The kitchen's rules: what a ticket needs from stock, what is short, and a ticket's states.

Pure, no I/O. The Lua scripts next to this module apply the same rules inside Redis, where a
check and the change it allows happen in one atomic step (two orders for the last units cannot
both see them available).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class TicketStatus(StrEnum):
    QUEUED = "queued"  # stock reserved, waiting for a cook
    IN_PROGRESS = "in_progress"  # a cook has it: its stock is being used
    DONE = "done"  # terminal: handed over
    CANCELLED = "cancelled"  # terminal: the order was cancelled


class Step(StrEnum):
    START = "start"  # a cook picks the ticket up
    FINISH = "finish"  # the cook hands it over
    CANCEL = "cancel"  # the order was cancelled


S = TicketStatus
TRANSITIONS: Mapping[tuple[TicketStatus, Step], TicketStatus] = {
    (S.QUEUED, Step.START): S.IN_PROGRESS,
    (S.IN_PROGRESS, Step.FINISH): S.DONE,
    (S.QUEUED, Step.CANCEL): S.CANCELLED,
    (S.IN_PROGRESS, Step.CANCEL): S.CANCELLED,
}
TERMINAL = frozenset({S.DONE, S.CANCELLED})


def next_status(status: TicketStatus, step: Step) -> TicketStatus | None:
    """Where ``step`` takes a ticket that is ``status``; None when it does not apply."""
    return TRANSITIONS.get((status, step))


def releases_stock(status: TicketStatus) -> bool:
    """Cancelling gives the reserved stock back only while no cook has touched it."""
    return status is S.QUEUED


class CancelAnswer(StrEnum):
    """The kitchen's answer when the customer asks to cancel a paid order
    (order.cancellation_requested; request_cancel.lua applies it atomically with the kitchen's
    own steps). Every answer but ``REFUSED`` is announced as production.cancelled."""

    NO_TICKET = "no_ticket"  # not arrived yet: a tombstone keeps a late order.received out
    RELEASED = "released"  # queued, no cook has it: dropped, its stock given back
    ALREADY_CANCELLED = "already_cancelled"
    REFUSED = "refused"  # a cook has it, or it is done: the order goes on to finished


def answer_cancel_request(status: TicketStatus | None) -> CancelAnswer:
    """A customer's cancel is granted only while no cook has touched the ticket (``status`` is
    None when the order has no ticket yet): refunding food being made would give it away."""
    if status is None:
        return CancelAnswer.NO_TICKET
    if status is S.CANCELLED:
        return CancelAnswer.ALREADY_CANCELLED
    if releases_stock(status) and next_status(status, Step.CANCEL) is S.CANCELLED:
        return CancelAnswer.RELEASED
    return CancelAnswer.REFUSED


@dataclass(frozen=True)
class TicketLine:
    sku: str
    name: str
    quantity: int


@dataclass(frozen=True)
class Ticket:
    id: UUID
    order_id: UUID
    status: TicketStatus
    lines: tuple[TicketLine, ...]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancelled_at: datetime | None = None


def demand(lines: Iterable[TicketLine]) -> dict[str, int]:
    """Units of each SKU a ticket takes from stock; the same SKU on two lines adds up."""
    needed: dict[str, int] = {}
    for line in lines:
        needed[line.sku] = needed.get(line.sku, 0) + line.quantity
    return needed


@dataclass(frozen=True)
class Shortage:
    sku: str
    requested: int
    available: int  # 0 for a SKU the kitchen does not stock at all


def shortages(
    needed: Mapping[str, int], available: Mapping[str, int | None]
) -> tuple[Shortage, ...]:
    """The SKUs stock cannot cover; ``available`` maps a SKU the kitchen does not know to None."""
    short = []
    for sku, requested in needed.items():
        have = available.get(sku)
        if have is None or have < requested:
            short.append(Shortage(sku, requested, max(have or 0, 0)))
    return tuple(short)


def failure_reason(short: Iterable[Shortage]) -> str:
    return "out of stock: " + ", ".join(s.sku for s in short)


MAX_FAULT_SLOWNESS_MS = 10_000
FAULT_FAILURE = "fault: failure_rate"


class ProductionFaults(BaseModel):
    """The kitchen's fault switches (sagakit.faults); the defaults are "off"."""

    model_config = ConfigDict(extra="forbid", strict=True)  # true is no rate, "7" no ms
    failure_rate: float = Field(0.0, ge=0, le=1, description="share of paid orders the kitchen "
                                "cannot make (reason `fault: failure_rate`: refunded), 0..1")
    slowness_ms: int = Field(0, ge=0, le=MAX_FAULT_SLOWNESS_MS,
                             description="added to the preparation of every ticket, in ms")


def fails_by_fault(roll: float, failure_rate: float) -> bool:
    """The failure-rate switch: with probability ``failure_rate`` (``roll`` uniform in [0, 1))
    the kitchen reports an order it cannot make, the ordinary production.failed that the saga
    compensates with a refund; nothing is reserved for it."""
    return roll < failure_rate

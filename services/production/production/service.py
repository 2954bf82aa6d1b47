"""The production service's use cases: take a paid order, drop a cancelled one, cook a ticket.

Each change is one Lua script in which stock and the ticket change, the consumed event is
marked in the inbox and the events it causes are appended to the outbox; nothing is published
directly. Events are built here, before the script runs, and simply dropped when the script
decides there is nothing to announce.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from uuid import UUID, uuid4

from production.domain import (
    FAULT_FAILURE,
    TicketLine,
    demand,
    fails_by_fault,
    failure_reason,
    shortages,
)
from production.store import KitchenEntry, ProductionStore
from sagakit import telemetry
from sagakit.consuming import RetryLater
from sagakit.envelope import EventMeta, EventSource
from sagakit.events import (
    MissingStock,
    OrderCancellationRequested,
    OrderCancelled,
    OrderFinished,
    OrderReceived,
    ProductionCancelled,
    ProductionCancelRefused,
    ProductionFailed,
    ProductionQueued,
    ProductionStarted,
)
from sagakit.faults import FaultStore

log = logging.getLogger("production.service")
SOURCE = EventSource("production")
# The events this service publishes (its AsyncAPI document lists them; see sagakit.runtime).
PUBLISHES = (ProductionQueued, ProductionStarted, OrderFinished, ProductionFailed,
             ProductionCancelled, ProductionCancelRefused)


class UnknownSku(Exception):
    def __init__(self, sku: str) -> None:
        super().__init__(f"the kitchen does not stock '{sku}'")
        self.sku = sku


def _now() -> datetime:
    return datetime.now(UTC)


def _traceparent() -> str:
    """The current span's context, kept with a ticket so the kitchen continues the trace."""
    return telemetry.trace_headers().get("traceparent", "")


async def receive_order(store: ProductionStore, event: OrderReceived, meta: EventMeta,
                        faults: FaultStore) -> str:
    """Reserve the order's stock and queue its ticket, or announce why the kitchen cannot."""
    if fails_by_fault(random.random(), (await faults.read()).values["failure_rate"]):
        return await _fail(store, event, meta, FAULT_FAILURE)
    lines = tuple(TicketLine(x.sku, x.name, x.quantity) for x in event.lines)
    needed = demand(lines)
    ticket_id = uuid4()
    queued = SOURCE.event(ProductionQueued(order_id=event.order_id, ticket_id=ticket_id),
                          event.order_id)
    reservation = await store.reserve(
        event_id=meta.id, order_id=event.order_id, ticket_id=ticket_id, lines=lines,
        needed=needed, announcement=queued, traceparent=_traceparent(), at=_now(),
    )
    if reservation.outcome != "short":
        ticket = reservation.ticket_id
        log.info("order.received: %s", reservation.outcome,
                 extra={"ticket_id": str(ticket) if ticket else None})
        return reservation.outcome

    missing = shortages(needed, reservation.levels)
    return await _fail(store, event, meta, failure_reason(missing), tuple(
        MissingStock(sku=s.sku, requested=s.requested, available=s.available) for s in missing))


async def _fail(store: ProductionStore, event: OrderReceived, meta: EventMeta, reason: str,
                missing: tuple[MissingStock, ...] = ()) -> str:
    """Announce that the kitchen cannot make the order (once: the inbox records the event)."""
    failed = SOURCE.event(ProductionFailed(order_id=event.order_id, reason=reason, missing=missing),
                          event.order_id)
    outcome = await store.record_failure(event_id=meta.id, order_id=event.order_id,
                                         announcement=failed)
    log.info("order.received: %s", outcome, extra={"reason": reason})
    return outcome


async def cancel_order(store: ProductionStore, event: OrderCancelled, meta: EventMeta) -> str:
    """Drop the order's ticket; a ticket no cook has touched gives its stock back."""
    outcome = await store.cancel(event_id=meta.id, order_id=event.order_id, at=_now())
    log.info("order.cancelled: %s", outcome)
    return outcome


async def request_cancel(
    store: ProductionStore, event: OrderCancellationRequested, meta: EventMeta
) -> str:
    """Drop the ticket if no cook has started it, else refuse; answer the order either way.

    The answers name the order's ticket, read first; the script does nothing if the order got
    one in between (its order.received applied meanwhile: ``"moved"``), and it is read again.
    An order's ticket is set once, so a second try finds it unchanged; a third "moved" is
    retried later by the broker (:class:`RetryLater`)."""
    for _ in range(3):
        ticket_id = await store.ticket_of(event.order_id)
        accepted = SOURCE.event(ProductionCancelled(order_id=event.order_id, ticket_id=ticket_id),
                                event.order_id)
        refused = SOURCE.event(ProductionCancelRefused(
            order_id=event.order_id, ticket_id=ticket_id,
            reason="the kitchen has already started this order",
        ), event.order_id)
        outcome = await store.request_cancel(
            event_id=meta.id, order_id=event.order_id, ticket_id=ticket_id, at=_now(),
            accepted=accepted, refused=refused)
        if outcome != "moved":
            log.info("order.cancellation_requested: %s", outcome)
            return outcome
    raise RetryLater(f"the ticket of order {event.order_id} keeps changing")


async def start_cooking(store: ProductionStore, ticket_id: UUID, order_id: UUID) -> str:
    """Take the ticket to the stove: "started" or "resumed" when it is to be made now,
    "paused" while the line is held, else "skip"."""
    started = SOURCE.event(ProductionStarted(order_id=order_id, ticket_id=ticket_id), order_id)
    outcome = await store.start(ticket_id, started, _now())
    if outcome != "paused":
        log.info("ticket %s: %s", ticket_id, outcome)
    return outcome


async def finish_cooking(
    store: ProductionStore, entry: KitchenEntry, ticket_id: UUID, order_id: UUID
) -> str:
    """Hand the ticket over ("finished"; "skip" if it was cancelled meanwhile) and be done with
    its kitchen entry."""
    finished = SOURCE.event(OrderFinished(order_id=order_id, ticket_id=ticket_id), order_id)
    outcome = await store.finish(entry, ticket_id, finished, _now())
    log.info("ticket %s: %s", ticket_id, outcome)
    return outcome


async def cook_at_once(
    store: ProductionStore, entry: KitchenEntry, ticket_id: UUID, order_id: UUID
) -> str:
    """Start and finish the ticket in one step, for a kitchen with no preparation time:
    "finished" (its kitchen entry done with too), else "paused" or "skip" as start_cooking."""
    started = SOURCE.event(ProductionStarted(order_id=order_id, ticket_id=ticket_id), order_id)
    finished = SOURCE.event(OrderFinished(order_id=order_id, ticket_id=ticket_id), order_id)
    outcome = await store.start_and_finish(entry, ticket_id, started, finished, _now())
    if outcome != "paused":
        log.info("ticket %s: %s at once", ticket_id, outcome)
    return outcome


async def pause_line(store: ProductionStore, paused: bool) -> None:
    """Hold the line (cooks start no new ticket; one in the pan is finished) or let it go."""
    await store.pause_line(paused)
    log.info("kitchen line %s", "paused" if paused else "running")


async def restock(store: ProductionStore, sku: str, available: int) -> None:
    if not await store.restock(sku, available):
        raise UnknownSku(sku)
    log.info("restocked %s: %d available", sku, available)

"""The order service's use cases: place and cancel an order, and move it along the saga.

Each change is one atomic write in which the order changes, its timeline grows and the events
it causes are written to the outbox; nothing is published directly. A saga step reads the order,
lets order.domain decide (the next status and the events to announce), and writes the decision
only if the order is still as it was read (optimistic concurrency, see order.store.transition);
otherwise it reads and decides again. Nothing here chooses a status or an event.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from dataclasses import replace
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson

from order import metrics, store, webhooks
from order.domain import (
    CUSTOMER_REASON,
    TERMINAL,
    CancelRoute,
    OrderRef,
    Product,
    Status,
    Trigger,
    Verdict,
    decide,
    decide_cancel,
    order_lines,
    price,
)
from order.store import AccountClosed as AccountClosed  # the API maps it to a 403
from sagakit import logs, telemetry
from sagakit.consuming import Poison, RetryLater
from sagakit.envelope import EventMeta, EventSource, OutgoingEvent
from sagakit.events import (
    TEST_CARD_TOKENS,
    Event,
    OrderCancellationRequested,
    OrderCancelled,
    OrderCreated,
    OrderReceived,
)
from sagakit.ordering import EarlyEvents
from sagakit.postgres import first_delivery

log = logging.getLogger("order.service")
SOURCE = EventSource("order")
# The events this service publishes (its AsyncAPI document lists them; see sagakit.runtime).
PUBLISHES = (OrderCreated, OrderReceived, OrderCancellationRequested, OrderCancelled)


class OrderNotFound(Exception):
    pass


class CannotCancel(Exception):
    def __init__(self, status: Status, *, already_requested: bool = False) -> None:
        super().__init__(
            "a cancellation was already requested for this order" if already_requested
            else f"an order that is {status} can no longer be cancelled")
        self.status = status


class IdempotencyConflict(Exception):
    pass


class UnknownPaymentToken(Exception):
    pass


def _outgoing(events: tuple[Event, ...], order_id: UUID) -> list[OutgoingEvent]:
    """What the domain decided to announce, as envelopes for the outbox."""
    return [SOURCE.event(event, order_id) for event in events]


async def ensure_token_known(pool: asyncpg.Pool, token: str, wait_seconds: float) -> None:
    """Accept test tokens and tokens payment announced; bridge the announcement's short lag."""
    if token in TEST_CARD_TOKENS:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        async with pool.acquire() as conn:
            if await store.token_known(conn, token):
                return
        if loop.time() >= deadline:
            raise UnknownPaymentToken(token)
        await asyncio.sleep(0.05)


def request_fingerprint(payload: dict[str, object]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Menu:
    """The menu, read from the database at most every ``ttl`` seconds per process.

    Every order is priced from it, so reading it per request was a query per order for a table
    that changes only when an operator edits prices; a change shows within ``ttl``.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._products: dict[str, Product] = {}
        self._expires = 0.0

    async def get(self, pool: asyncpg.Pool) -> dict[str, Product]:
        now = time.monotonic()
        if now >= self._expires:
            async with pool.acquire() as conn:
                self._products = await store.menu(conn)
            self._expires = now + self.ttl
        return self._products


MENU = Menu()


async def place_order(
    pool: asyncpg.Pool, *, name: str, email: str, items: list[tuple[str, int]],
    payment_token: str, currency: str, idempotency_key: str | None, fingerprint: str,
    owner: str | None = None, callback_url: str | None = None,
) -> tuple[UUID, asyncpg.Record | None]:
    """Create the order and its ``order.created`` event in one statement.

    Returns the order id and the new order's row, or no row when an earlier request with the
    same ``Idempotency-Key`` created it (a replay). Raises :class:`AccountClosed` for an owner
    whose erasure was asked for (customer_data.request_erasure), and writes nothing.
    """
    priced = price(await MENU.get(pool), items)  # unknown skus fail before anything is written
    order_id = uuid4()
    logs.order_id_var.set(str(order_id))
    created = SOURCE.event(OrderCreated(
        order_id=order_id, amount=priced.total, currency=currency, payment_token=payment_token,
        owner=owner, lines=order_lines(priced.lines),
    ), order_id)
    new_order = functools.partial(
        store.insert_order, order_id=order_id, name=name, email=email,
        payment_token=payment_token, currency=currency, priced=priced,
        trace_id=telemetry.trace_id(), trace_recorded=telemetry.recorded(),
        trace_span_id=telemetry.span_id(),
        announce=[created], owner=owner, callback_url=callback_url,
    )
    async with pool.acquire() as conn:
        if callback_url:  # its deliveries are signed with the owner's secret: make it now
            await webhooks.secret_of(conn, owner or "")
        row = await new_order(conn, idempotency_key=(idempotency_key, fingerprint)
                              if idempotency_key else None)
        if row is None:  # the key was claimed before (or by a twin just now): its order
            existing = await store.idempotency_key(conn, idempotency_key) \
                if idempotency_key else None
            if existing is None:  # the one other way to insert nothing: a closed account
                raise AccountClosed
            return _replay(existing, fingerprint), None
    KNOWN_ORDERS.wrote(store.order_ref(row))
    log.info("order placed", extra={"total": str(priced.total), "lines": len(priced.lines)})
    return order_id, row


def _replay(existing: asyncpg.Record, fingerprint: str) -> UUID:
    if existing["request_hash"] != fingerprint:
        raise IdempotencyConflict
    order_id: UUID = existing["order_id"]
    return order_id


async def cancel_order(pool: asyncpg.Pool, order_id: UUID) -> Status:
    """The customer's cancel. Before payment it takes effect at once; once paid, the kitchen is
    asked first and compensation (the refund) follows only if it drops the ticket. Returns the
    order's status after the request.

    One order is one trace: the cancel continues the order's trace, under the span that
    placed it, so its timeline entries and events (and the refund they cause) are there too;
    the cancel's own request is linked."""
    logs.order_id_var.set(str(order_id))
    async with pool.acquire() as conn:
        traced = await store.trace_of(conn, order_id)
    if traced is None:  # an order from before the span was kept: the request's trace
        return await _cancel(pool, order_id)
    with telemetry.joining("order cancel", *traced):
        return await _cancel(pool, order_id)


async def _cancel(pool: asyncpg.Pool, order_id: UUID) -> Status:
    async with pool.acquire() as conn:
        while True:  # ends: each lost race is a step of the order, and an order has few
            order, _ = await store.read(conn, order_id)
            if order is None:
                raise OrderNotFound(order_id)
            decision = decide_cancel(order)
            if decision.route is CancelRoute.REFUSE:
                raise CannotCancel(order.status, already_requested=order.cancel_requested)
            announce = _outgoing(decision.events, order.id)
            if decision.route is CancelRoute.NOW:
                if await store.transition(conn, order, decision.status, reason=CUSTOMER_REASON,
                                          event=None, trace_id=telemetry.trace_id(),
                                          announce=announce):
                    KNOWN_ORDERS.changed(order, status=decision.status)
                    log.info("order %s -> %s (%s)", order.status, decision.status,
                             Trigger.CUSTOMER_CANCELLED)
                    return decision.status
            elif await store.mark_cancel_requested(conn, order, announce):
                KNOWN_ORDERS.changed(order, cancel_requested=True)
                log.info("cancellation requested from the kitchen")
                return decision.status


async def note_cancel_refused(pool: asyncpg.Pool, order_id: UUID, reason: str,
                              meta: EventMeta) -> None:
    """The kitchen had started: the order goes on to finished and nothing is refunded."""
    async with pool.acquire() as conn, conn.transaction():
        if await first_delivery(conn, meta):
            log.warning("the kitchen refused the cancellation: %s", reason)


# Events of one order reaching this process are applied in the order they arrived; an early
# one is looked at again briefly before the broker's retry queue takes it (sagakit.ordering).
EARLY_EVENTS = EarlyEvents()


class KnownOrders:
    """The orders of sagas in flight as this process last wrote them, so a step can decide
    without reading the order first (one round trip instead of two).

    Only a hint: the write still applies only to the version decided on and only to an event
    not applied yet (store.transition), so a stale entry (another replica, the API or an
    operator changed the order since) costs a failed write and a read, never a wrong step.
    Only a decision to apply is taken on a known state: any other verdict is checked against
    the database first. At most ``size`` orders, the least recently written dropped first; an
    order leaves when its saga ends.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._orders: dict[UUID, OrderRef] = {}

    def get(self, order_id: UUID) -> OrderRef | None:
        return self._orders.get(order_id)

    def wrote(self, order: OrderRef) -> None:
        """``order`` is as this process just committed it."""
        self._orders.pop(order.id, None)
        if order.status in TERMINAL or self.size == 0:
            return
        self._orders[order.id] = order  # dicts keep insertion order: the oldest write is first
        if len(self._orders) > self.size:
            del self._orders[next(iter(self._orders))]

    def changed(self, order: OrderRef, **changes: Any) -> None:
        """``order``, as read or known, was just updated with ``changes`` by this process (the
        update bumped its version: orders_bump_version)."""
        self.wrote(replace(order, version=order.version + 1, **changes))


KNOWN_ORDERS = KnownOrders()


async def advance(
    pool: asyncpg.Pool, order_id: UUID, trigger: Trigger, meta: EventMeta,
    reason: str | None = None,
) -> None:
    """Apply one saga event to its order, exactly once in effect."""
    await EARLY_EVENTS.apply(order_id,
                             lambda: _advance_once(pool, order_id, trigger, meta, reason))


async def _advance_once(
    pool: asyncpg.Pool, order_id: UUID, trigger: Trigger, meta: EventMeta, reason: str | None,
) -> None:
    known = KNOWN_ORDERS.get(order_id)
    async with pool.acquire() as conn:
        while True:  # ends: each lost race is a step of the order, and an order has few
            order: OrderRef | None
            order, seen = (known, False) if known else await store.read(conn, order_id, meta.id)
            if order is None:
                raise Poison(f"{meta.type} for an order this service never created: {order_id}")
            if seen:
                log.info("duplicate %s ignored", meta.type)
                return
            decision = decide(order, trigger, reason)
            if known is not None and decision.verdict is not Verdict.APPLY:
                known = None  # the database's word, not the hint's, before refusing an event
                continue
            if decision.verdict is Verdict.EARLY:
                raise RetryLater(f"'{trigger}' arrived while the order is {order.status}")
            if decision.verdict is Verdict.STALE:
                log.info("'%s' ignored: the order is already %s", trigger, order.status)
                return
            if await store.transition(
                conn, order, decision.status, reason=decision.reason, event=meta,
                trace_id=telemetry.trace_id(), announce=_outgoing(decision.events, order.id),
            ):
                break
            known = None  # changed since, or a redelivery: read it
    KNOWN_ORDERS.changed(order, status=decision.status)
    log.info("order %s -> %s (%s)", order.status, decision.status, trigger)
    if decision.status in TERMINAL:  # committed: this order's saga is over
        metrics.saga_ended(decision.status, order.accepted_at)

"""The order service's use cases: place and cancel an order, and move it along the saga.

Each use case is one database transaction in which the order changes, its timeline grows and
the events it causes are written to the outbox; nothing is published directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from uuid import UUID, uuid4

import asyncpg
import orjson

from order import metrics, store
from order.domain import (
    TERMINAL,
    CancelRoute,
    OrderRef,
    Status,
    Trigger,
    Verdict,
    cancel_route,
    judge,
    next_status,
    price,
)
from sagakit import logs, telemetry
from sagakit.consuming import Poison, RetryLater
from sagakit.envelope import EventMeta, OutgoingEvent
from sagakit.events import (
    TEST_CARD_TOKENS,
    Event,
    OrderCancellationRequested,
    OrderCancelled,
    OrderCreated,
    OrderLine,
)
from sagakit.events import OrderReceived as OrderReceivedEvent
from sagakit.postgres import add_to_outbox, first_delivery

log = logging.getLogger("order.service")
SOURCE = "saga-shop/order"


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


def _event(event: Event, order_id: UUID) -> OutgoingEvent:
    return OutgoingEvent.build(event, source=SOURCE, subject=str(order_id))


def _lines(order: OrderRef) -> tuple[OrderLine, ...]:
    return tuple(OrderLine(sku=x.sku, name=x.name, quantity=x.quantity, unit_price=x.unit_price)
                 for x in order.lines)


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


async def place_order(
    pool: asyncpg.Pool, *, name: str, email: str, items: list[tuple[str, int]],
    payment_token: str, currency: str, idempotency_key: str | None, fingerprint: str,
) -> tuple[UUID, bool]:
    """Create the order and its ``order.created`` event; returns (order id, newly created)."""
    async with pool.acquire() as conn:
        if idempotency_key:
            existing = await store.idempotency_key(conn, idempotency_key)
            if existing is not None:
                return _replay(existing, fingerprint), False
        order_id = uuid4()
        logs.order_id_var.set(str(order_id))
        try:
            async with conn.transaction():
                priced = price(await store.menu(conn), items)
                await store.insert_order(
                    conn, order_id=order_id, name=name, email=email,
                    payment_token=payment_token, currency=currency, priced=priced,
                    trace_id=telemetry.trace_id(),
                )
                if idempotency_key and not await store.claim_idempotency_key(
                    conn, idempotency_key, fingerprint, order_id
                ):
                    raise _LostRace
                created = OrderCreated(
                    order_id=order_id, amount=priced.total, currency=currency,
                    payment_token=payment_token,
                    lines=tuple(OrderLine(sku=x.sku, name=x.name, quantity=x.quantity,
                                          unit_price=x.unit_price) for x in priced.lines),
                )
                await add_to_outbox(conn, _event(created, order_id))
        except _LostRace:
            # A concurrent request with the same key committed first: answer with its order.
            existing = await store.idempotency_key(conn, idempotency_key or "")
            assert existing is not None
            return _replay(existing, fingerprint), False
    log.info("order placed", extra={"total": str(priced.total), "lines": len(priced.lines)})
    return order_id, True


class _LostRace(Exception):
    pass


def _replay(existing: asyncpg.Record, fingerprint: str) -> UUID:
    if existing["request_hash"] != fingerprint:
        raise IdempotencyConflict
    order_id: UUID = existing["order_id"]
    return order_id


async def _move(
    conn: asyncpg.Connection, order: OrderRef, trigger: Trigger, *, reason: str | None,
    event_id: UUID | None,
) -> Status:
    """Apply a legal transition: new status, timeline entry, and the events it announces."""
    new = next_status(order.status, trigger)
    await store.set_status(conn, order.id, new, reason=reason, event_id=event_id,
                           trace_id=telemetry.trace_id())
    if new is Status.PAID:
        await add_to_outbox(conn, _event(OrderReceivedEvent(order_id=order.id,
                                                            lines=_lines(order)), order.id))
    elif new is Status.CANCELLING:
        by_customer = trigger in (Trigger.CUSTOMER_CANCELLED, Trigger.PRODUCTION_CANCELLED)
        requested_by = "customer" if by_customer else "production"
        await add_to_outbox(conn, _event(OrderCancelled(
            order_id=order.id, reason=reason or str(trigger), requested_by=requested_by,
        ), order.id))
    log.info("order %s -> %s (%s)", order.status, new, trigger)
    return new


CUSTOMER_REASON = "cancelled by the customer"


async def cancel_order(pool: asyncpg.Pool, order_id: UUID) -> Status:
    """The customer's cancel. Before payment it takes effect at once; once paid, the kitchen is
    asked first and compensation (the refund) follows only if it drops the ticket. Returns the
    order's status after the request."""
    logs.order_id_var.set(str(order_id))
    async with pool.acquire() as conn, conn.transaction():
        order = await store.lock(conn, order_id)
        if order is None:
            raise OrderNotFound(order_id)
        route = cancel_route(order.status, already_requested=order.cancel_requested)
        if route is CancelRoute.NOW:
            return await _move(conn, order, Trigger.CUSTOMER_CANCELLED,
                               reason=CUSTOMER_REASON, event_id=None)
        if route is CancelRoute.ASK_KITCHEN:
            await store.mark_cancel_requested(conn, order.id)
            await add_to_outbox(conn, _event(OrderCancellationRequested(
                order_id=order.id, reason=CUSTOMER_REASON), order.id))
            log.info("cancellation requested from the kitchen")
            return order.status
        raise CannotCancel(order.status, already_requested=order.cancel_requested)


async def note_cancel_refused(pool: asyncpg.Pool, order_id: UUID, reason: str,
                              meta: EventMeta) -> None:
    """The kitchen had started: the order goes on to finished and nothing is refunded."""
    async with pool.acquire() as conn, conn.transaction():
        if await first_delivery(conn, meta):
            log.warning("the kitchen refused the cancellation: %s", reason)


# An event that overtook its predecessor (they travel concurrently) usually finds it applied a
# few milliseconds later: look again briefly in-process before handing it to the broker's
# slower retry queue, which stays the backstop.
EARLY_RECHECKS_S = (0.005, 0.02, 0.05)


async def advance(
    pool: asyncpg.Pool, order_id: UUID, trigger: Trigger, meta: EventMeta,
    reason: str | None = None,
) -> None:
    """Apply one saga event to its order, exactly once in effect."""
    for pause in (*EARLY_RECHECKS_S, None):
        try:
            await _advance_once(pool, order_id, trigger, meta, reason)
            return
        except RetryLater:
            if pause is None:
                raise
            await asyncio.sleep(pause)


async def _advance_once(
    pool: asyncpg.Pool, order_id: UUID, trigger: Trigger, meta: EventMeta, reason: str | None,
) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            if not await first_delivery(conn, meta):
                log.info("duplicate %s ignored", meta.type)
                return
            order = await store.lock(conn, order_id)
            if order is None:
                raise Poison(f"{meta.type} for an order this service never created: {order_id}")
            verdict = judge(order.status, trigger)
            if verdict is Verdict.EARLY:
                raise RetryLater(f"'{trigger}' arrived while the order is {order.status}")
            if verdict is Verdict.STALE:
                log.info("'%s' ignored: the order is already %s", trigger, order.status)
                return
            new = await _move(conn, order, trigger, reason=reason, event_id=meta.id)
        if new in TERMINAL:  # committed: this order's saga is over
            metrics.saga_ended(new, order.accepted_at)

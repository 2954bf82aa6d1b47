"""The payment service's use cases: tokenize a card, charge an order, compensate a cancelled one.

Each use case is one database transaction in which the ledger changes and the events it causes
are written to the outbox; nothing is published directly. The saga handlers also take the
order's advisory lock and record the event in the inbox within that transaction, so that the
created and cancelled events of one order apply one at a time and each exactly once in effect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
from datetime import UTC, datetime
from uuid import uuid4

import asyncpg

from payment import store
from payment.domain import (
    Card,
    Compensation,
    compensation_for,
    decide_charge,
    is_chargeable,
    tokenize,
    void_reason,
    with_decline_fault,
)
from sagakit.consuming import Poison
from sagakit.envelope import EventMeta, EventSource
from sagakit.events import (
    CardTokenized,
    OrderCancelled,
    OrderCreated,
    PaymentProcessed,
    PaymentRefunded,
    PaymentVoided,
)
from sagakit.faults import FaultStore
from sagakit.postgres import add_to_outbox

log = logging.getLogger("payment.service")
SOURCE = EventSource("payment")
# The events this service publishes (its AsyncAPI document lists them; see sagakit.runtime).
PUBLISHES = (PaymentProcessed, PaymentRefunded, PaymentVoided, CardTokenized)


class AccountClosed(Exception):
    """The caller's account was erased; its token, issued before, is still valid."""


def new_token() -> str:
    return f"tok_{secrets.token_hex(12)}"


async def tokenize_card(
    pool: asyncpg.Pool, *, number: str, exp_month: int, exp_year: int, cvc: str, holder: str,
    owner: str | None = None,
) -> Card:
    """Check and keep a card, and announce its token (the order API accepts only known tokens).

    Raises :class:`payment.domain.InvalidCard` before anything is written, and
    :class:`AccountClosed`, writing nothing, for an owner whose erasure was asked for.
    """
    card = tokenize(new_token(), number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc,
                    holder=holder, today=datetime.now(UTC).date())
    card = dataclasses.replace(card, owner=owner)
    async with pool.acquire() as conn, conn.transaction():
        created_at = await store.insert_card(conn, card)
        if created_at is None:
            raise AccountClosed
        await add_to_outbox(conn, SOURCE.event(CardTokenized(
            token=card.token, brand=card.brand, last4=card.last4, created_at=created_at,
        ), CardTokenized.subject_of(card.token)))
    # Token and brand only: no part of the card number goes into a log line.
    # The token is a credential that can pay: log only enough of it to tell cards apart.
    log.info("card tokenized", extra={"token_end": card.token[-4:], "brand": str(card.brand)})
    return card


async def charge_order(pool: asyncpg.Pool, order: OrderCreated, meta: EventMeta,
                       faults: FaultStore) -> None:
    """Charge a new order once, unless it was cancelled first; announce the decision.

    The fault switches (a slow or declining bank) act here, before the decision is written,
    so what they cause is an ordinary slow answer or an ordinary decline."""
    if not is_chargeable(order.amount):
        raise Poison(f"order.created with an amount that cannot be charged: {order.amount}")
    switches = (await faults.read()).values
    if switches["latency_ms"]:
        await asyncio.sleep(switches["latency_ms"] / 1000)  # holding no lock or connection
    async with pool.acquire() as conn, conn.transaction():
        card = await store.lock_order_and_find_card(conn, order.order_id, order.payment_token)
        decision = with_decline_fault(decide_charge(order.payment_token, card, order.owner),
                                      random.random(), switches["decline_rate"])
        charge = store.NewCharge(
            payment_id=uuid4(), order_id=order.order_id, outcome=decision.outcome,
            amount=order.amount, currency=order.currency, reason=decision.reason,
            payment_token=order.payment_token, owner=order.owner,
        )
        # Built before we know whether this delivery charges, so that the charge and its event
        # are written by one statement; it is simply not written if nothing is charged.
        processed = SOURCE.event(PaymentProcessed(
            order_id=order.order_id, payment_id=charge.payment_id, outcome=decision.outcome,
            amount=order.amount, currency=order.currency, reason=decision.reason,
        ), order.order_id)
        not_charged = await store.charge_once(conn, meta, charge, processed)
    if not_charged is store.NotCharged.DUPLICATE:
        log.info("duplicate %s ignored", meta.type)
    elif not_charged is store.NotCharged.CANCELLED:
        log.info("%s ignored: the order was cancelled before it was charged", meta.type)
    elif not_charged is store.NotCharged.CHARGED_ALREADY:
        log.info("%s ignored: the order is charged already", meta.type)
    else:
        log.info("charge %s", decision.outcome,
                 extra={"amount": str(order.amount), "currency": order.currency,
                        "reason": decision.reason})


async def refund_or_void(pool: asyncpg.Pool, order: OrderCancelled, meta: EventMeta) -> None:
    """Compensate a cancelled order: refund its charge, or say that nothing was (or will be)
    charged, once. (A charge already refunded announces nothing again: the order service
    cancels an order once, so that answer went with the first ``order.cancelled``.)"""
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_order(conn, order.order_id)
        first, charge = await store.record_cancellation(conn, meta, order.order_id, order.reason)
        if not first:
            log.info("duplicate %s ignored", meta.type)
            return
        compensation = compensation_for(charge)
        if compensation is Compensation.REFUND:
            assert charge is not None
            refund_id = uuid4()
            refunded = SOURCE.event(PaymentRefunded(
                order_id=order.order_id, payment_id=refund_id, refund_of=charge.id,
                amount=charge.amount, currency=charge.currency,
            ), order.order_id)
            await store.refund(conn, refund_id=refund_id, order_id=order.order_id,
                               charge=charge, reason=order.reason, announce=refunded)
        elif compensation is Compensation.VOID:
            await add_to_outbox(conn, SOURCE.event(PaymentVoided(
                order_id=order.order_id, reason=void_reason(charge),
            ), order.order_id))
    log.info("order cancelled: %s", compensation, extra={"reason": order.reason})


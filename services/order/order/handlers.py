"""What the order service does with each event it consumes: one small function per event type.

Payment's and production's events arrive on two queues, one per source (and the identity's
requests about a customer's data on a third). Deliveries are handled
concurrently and replicas compete, so events of one order may arrive out of order: the state
machine's verdict (apply, early = retry later, stale = ignore) is what keeps the saga right.
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from order import customer_data, service, store
from order.domain import Trigger
from sagakit.events import (
    CardTokenized,
    CustomerDataRequested,
    CustomerErasureRequested,
    EventType,
    OrderFinished,
    PaymentProcessed,
    PaymentRefunded,
    PaymentVoided,
    ProductionCancelled,
    ProductionCancelRefused,
    ProductionFailed,
    ProductionQueued,
    ProductionStarted,
)
from sagakit.routing import Router, customer_queue
from sagakit.runtime import event_meta
from sagakit.topology import ConsumerQueue


class Needs(Protocol):
    """What the handlers use: the service's connection pool (``app.state`` once the lifespan
    has opened it; in a test, any object with a ``pool``)."""

    @property
    def pool(self) -> asyncpg.Pool: ...


E = EventType
router: Router[Needs] = Router()
PAYMENT_EVENTS = router.queue(ConsumerQueue(
    "order", "payment",
    (E.PAYMENT_PROCESSED, E.PAYMENT_REFUNDED, E.PAYMENT_VOIDED, E.CARD_TOKENIZED),
), "Payment outcomes for orders")
PRODUCTION_EVENTS = router.queue(ConsumerQueue(
    "order", "production",
    (E.PRODUCTION_QUEUED, E.PRODUCTION_STARTED, E.PRODUCTION_FAILED, E.ORDER_FINISHED,
     E.PRODUCTION_CANCELLED, E.PRODUCTION_CANCEL_REFUSED),
), "Kitchen progress of paid orders")
# The identity's requests about a customer's data.
CUSTOMER_EVENTS = router.queue(customer_queue("order"), "A customer's data: export, erasure")
QUEUES = router.queues


@router.on(PAYMENT_EVENTS, E.PAYMENT_PROCESSED)
async def on_payment_processed(event: PaymentProcessed, needs: Needs) -> None:
    """Approved: the order is paid and goes to the kitchen. Declined: it is cancelled."""
    approved = event.outcome == "approved"
    trigger = Trigger.PAYMENT_APPROVED if approved else Trigger.PAYMENT_DECLINED
    reason = None if approved else f"payment declined: {event.reason or 'declined'}"
    await service.advance(needs.pool, event.order_id, trigger, event_meta(), reason)


@router.on(PAYMENT_EVENTS, E.PAYMENT_REFUNDED)
async def on_payment_refunded(event: PaymentRefunded, needs: Needs) -> None:
    await service.advance(needs.pool, event.order_id, Trigger.PAYMENT_REFUNDED, event_meta())


@router.on(PAYMENT_EVENTS, E.PAYMENT_VOIDED)
async def on_payment_voided(event: PaymentVoided, needs: Needs) -> None:
    await service.advance(needs.pool, event.order_id, Trigger.PAYMENT_VOIDED, event_meta())


@router.on(PAYMENT_EVENTS, E.CARD_TOKENIZED)
async def on_card_tokenized(event: CardTokenized, needs: Needs) -> None:
    """Keep a local list of valid tokens so the order API can check one without HTTP."""
    async with needs.pool.acquire() as conn:
        await store.remember_token(conn, event.token, event.brand, event.last4, event.created_at)


@router.on(PRODUCTION_EVENTS, E.PRODUCTION_QUEUED)
async def on_production_queued(event: ProductionQueued, needs: Needs) -> None:
    await service.advance(needs.pool, event.order_id, Trigger.PRODUCTION_QUEUED, event_meta())


@router.on(PRODUCTION_EVENTS, E.PRODUCTION_STARTED)
async def on_production_started(event: ProductionStarted, needs: Needs) -> None:
    await service.advance(needs.pool, event.order_id, Trigger.PRODUCTION_STARTED, event_meta())


@router.on(PRODUCTION_EVENTS, E.ORDER_FINISHED)
async def on_order_finished(event: OrderFinished, needs: Needs) -> None:
    await service.advance(needs.pool, event.order_id, Trigger.PRODUCTION_FINISHED, event_meta())


@router.on(PRODUCTION_EVENTS, E.PRODUCTION_FAILED)
async def on_production_failed(event: ProductionFailed, needs: Needs) -> None:
    """The kitchen cannot make it: cancel, which makes payment refund the charge."""
    reason = f"production failed: {event.reason}"
    await service.advance(needs.pool, event.order_id, Trigger.PRODUCTION_FAILED, event_meta(),
                          reason)


@router.on(PRODUCTION_EVENTS, E.PRODUCTION_CANCELLED)
async def on_production_cancelled(event: ProductionCancelled, needs: Needs) -> None:
    """The kitchen dropped the ticket the customer asked to cancel: now compensate."""
    await service.advance(needs.pool, event.order_id, Trigger.PRODUCTION_CANCELLED, event_meta())


@router.on(PRODUCTION_EVENTS, E.PRODUCTION_CANCEL_REFUSED)
async def on_cancel_refused(event: ProductionCancelRefused, needs: Needs) -> None:
    await service.note_cancel_refused(needs.pool, event.order_id, event.reason, event_meta())


@router.on(CUSTOMER_EVENTS, E.CUSTOMER_DATA_REQUESTED)
async def on_customer_data_requested(event: CustomerDataRequested, needs: Needs) -> None:
    """Announce this service's part of the customer's data (order.customer_data)."""
    await customer_data.export(needs.pool, event, event_meta())


@router.on(CUSTOMER_EVENTS, E.CUSTOMER_ERASURE_REQUESTED)
async def on_customer_erasure_requested(event: CustomerErasureRequested, needs: Needs) -> None:
    """Erase the customer once their last saga has ended (order.customer_data)."""
    await customer_data.request_erasure(needs.pool, event, event_meta())

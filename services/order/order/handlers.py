"""What the order service does with each event it consumes: one small function per event type.

Payment's and production's events arrive on two queues, one per source. Deliveries are handled
concurrently and replicas compete, so events of one order may arrive out of order: the state
machine's verdict (apply, early = retry later, stale = ignore) is what keeps the saga right.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from order import customer_data, service, store
from order.domain import Trigger
from sagakit.events import (
    CardTokenized,
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
from sagakit.runtime import (
    Messaging,
    customer_queue,
    event_meta,
    of_type,
    subscribe_customer_data,
)
from sagakit.topology import ConsumerQueue

E = EventType
PAYMENT_EVENTS = ConsumerQueue(
    "order", "payment",
    (E.PAYMENT_PROCESSED, E.PAYMENT_REFUNDED, E.PAYMENT_VOIDED, E.CARD_TOKENIZED),
)
PRODUCTION_EVENTS = ConsumerQueue(
    "order", "production",
    (E.PRODUCTION_QUEUED, E.PRODUCTION_STARTED, E.PRODUCTION_FAILED, E.ORDER_FINISHED,
     E.PRODUCTION_CANCELLED, E.PRODUCTION_CANCEL_REFUSED),
)
CUSTOMER_EVENTS = customer_queue("order")  # the identity's requests about a customer's data
QUEUES = (PAYMENT_EVENTS, PRODUCTION_EVENTS, CUSTOMER_EVENTS)


def register(messaging: Messaging, pool: Callable[[], asyncpg.Pool]) -> None:
    payments = messaging.subscriber(PAYMENT_EVENTS, "Payment outcomes for orders")
    kitchen = messaging.subscriber(PRODUCTION_EVENTS, "Kitchen progress of paid orders")
    subscribe_customer_data(
        messaging, "order", export=lambda event, meta: customer_data.export(pool(), event, meta),
        erase=lambda event, meta: customer_data.request_erasure(pool(), event, meta),
    )

    @payments(filter=of_type(E.PAYMENT_PROCESSED))
    async def on_payment_processed(event: PaymentProcessed) -> None:
        """Approved: the order is paid and goes to the kitchen. Declined: it is cancelled."""
        approved = event.outcome == "approved"
        trigger = Trigger.PAYMENT_APPROVED if approved else Trigger.PAYMENT_DECLINED
        reason = None if approved else f"payment declined: {event.reason or 'declined'}"
        await service.advance(pool(), event.order_id, trigger, event_meta(), reason)

    @payments(filter=of_type(E.PAYMENT_REFUNDED))
    async def on_payment_refunded(event: PaymentRefunded) -> None:
        await service.advance(pool(), event.order_id, Trigger.PAYMENT_REFUNDED,
                              event_meta())

    @payments(filter=of_type(E.PAYMENT_VOIDED))
    async def on_payment_voided(event: PaymentVoided) -> None:
        await service.advance(pool(), event.order_id, Trigger.PAYMENT_VOIDED,
                              event_meta())

    @payments(filter=of_type(E.CARD_TOKENIZED))
    async def on_card_tokenized(event: CardTokenized) -> None:
        """Keep a local list of valid tokens so the order API can check one without HTTP."""
        async with pool().acquire() as conn:
            await store.remember_token(conn, event.token, event.brand, event.last4,
                                       event.created_at)

    @kitchen(filter=of_type(E.PRODUCTION_QUEUED))
    async def on_production_queued(event: ProductionQueued) -> None:
        await service.advance(pool(), event.order_id, Trigger.PRODUCTION_QUEUED,
                              event_meta())

    @kitchen(filter=of_type(E.PRODUCTION_STARTED))
    async def on_production_started(event: ProductionStarted) -> None:
        await service.advance(pool(), event.order_id, Trigger.PRODUCTION_STARTED,
                              event_meta())

    @kitchen(filter=of_type(E.ORDER_FINISHED))
    async def on_order_finished(event: OrderFinished) -> None:
        await service.advance(pool(), event.order_id, Trigger.PRODUCTION_FINISHED,
                              event_meta())

    @kitchen(filter=of_type(E.PRODUCTION_FAILED))
    async def on_production_failed(event: ProductionFailed) -> None:
        """The kitchen cannot make it: cancel, which makes payment refund the charge."""
        reason = f"production failed: {event.reason}"
        await service.advance(pool(), event.order_id, Trigger.PRODUCTION_FAILED,
                              event_meta(), reason)

    @kitchen(filter=of_type(E.PRODUCTION_CANCELLED))
    async def on_production_cancelled(event: ProductionCancelled) -> None:
        """The kitchen dropped the ticket the customer asked to cancel: now compensate."""
        await service.advance(pool(), event.order_id, Trigger.PRODUCTION_CANCELLED,
                              event_meta())

    @kitchen(filter=of_type(E.PRODUCTION_CANCEL_REFUSED))
    async def on_cancel_refused(event: ProductionCancelRefused) -> None:
        await service.note_cancel_refused(pool(), event.order_id, event.reason,
                                          event_meta())

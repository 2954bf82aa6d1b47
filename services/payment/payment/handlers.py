"""What the payment service does with each event it consumes: one small function per event type.

Both of the order service's events for payment arrive on one queue, so that an order's
cancellation normally follows its creation; when they still cross (a retry, two replicas), the
order's advisory lock and the cancellation tombstone keep the outcome right.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from payment import service
from sagakit.events import EventType, OrderCancelled, OrderCreated
from sagakit.runtime import Messaging, event_meta, of_type
from sagakit.topology import ConsumerQueue

E = EventType
ORDER_EVENTS = ConsumerQueue("payment", "order", (E.ORDER_CREATED, E.ORDER_CANCELLED))
QUEUES = (ORDER_EVENTS,)


def register(messaging: Messaging, pool: Callable[[], asyncpg.Pool]) -> None:
    orders = messaging.subscriber(ORDER_EVENTS, "Orders to charge, and cancelled orders to "
                                                "refund or void")

    @orders(filter=of_type(E.ORDER_CREATED))
    async def on_order_created(event: OrderCreated) -> None:
        """Charge the order once and announce payment.processed (approved or declined)."""
        await service.charge_order(pool(), event, event_meta())

    @orders(filter=of_type(E.ORDER_CANCELLED))
    async def on_order_cancelled(event: OrderCancelled) -> None:
        """Announce payment.refunded if the order was charged, else payment.voided."""
        await service.refund_or_void(pool(), event, event_meta())

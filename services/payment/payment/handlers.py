"""What the payment service does with each event it consumes: one small function per event type.

Both of the order service's events for payment arrive on one queue, so that an order's
cancellation normally follows its creation; when they still cross (a retry, two replicas), the
order's advisory lock and the cancellation tombstone keep the outcome right.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from payment import customer_data, service
from sagakit.events import EventType, OrderCancelled, OrderCreated
from sagakit.faults import FaultStore
from sagakit.runtime import (
    Messaging,
    customer_queue,
    event_meta,
    of_type,
    subscribe_customer_data,
)
from sagakit.topology import ConsumerQueue

E = EventType
ORDER_EVENTS = ConsumerQueue("payment", "order", (E.ORDER_CREATED, E.ORDER_CANCELLED))
CUSTOMER_EVENTS = customer_queue("payment")  # the identity's requests about a customer's data
QUEUES = (ORDER_EVENTS, CUSTOMER_EVENTS)


def register(messaging: Messaging, pool: Callable[[], asyncpg.Pool], faults: FaultStore) -> None:
    orders = messaging.subscriber(ORDER_EVENTS, "Orders to charge, and cancelled orders to "
                                                "refund or void")

    @orders(filter=of_type(E.ORDER_CREATED))
    async def on_order_created(event: OrderCreated) -> None:
        """Charge the order once and announce payment.processed (approved or declined)."""
        await service.charge_order(pool(), event, event_meta(), faults)

    @orders(filter=of_type(E.ORDER_CANCELLED))
    async def on_order_cancelled(event: OrderCancelled) -> None:
        """Announce payment.refunded if the order was charged, else payment.voided."""
        await service.refund_or_void(pool(), event, event_meta())

    subscribe_customer_data(
        messaging, "payment", export=lambda event, meta: customer_data.export(pool(), event, meta),
        erase=lambda event, meta: customer_data.erase(pool(), event, meta),
    )

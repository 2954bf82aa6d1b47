"""What the production service does with each event it consumes: one small function per type.

The order service is the only source: paid orders to make and orders to drop. Both arrive on
one queue, so a cancellation never overtakes the order it cancels.
"""

from __future__ import annotations

from collections.abc import Callable

from faststream.rabbit.annotations import RabbitMessage

from production import service
from production.store import ProductionStore
from sagakit.events import EventType, OrderCancelled, OrderReceived
from sagakit.runtime import Messaging, event_meta, of_type
from sagakit.topology import ConsumerQueue

E = EventType
ORDER_EVENTS = ConsumerQueue("production", "order", (E.ORDER_RECEIVED, E.ORDER_CANCELLED))
QUEUES = (ORDER_EVENTS,)


def register(messaging: Messaging, store: Callable[[], ProductionStore]) -> None:
    orders = messaging.subscriber(ORDER_EVENTS, "Paid orders for the kitchen, and cancellations")

    @orders(filter=of_type(E.ORDER_RECEIVED))
    async def on_order_received(event: OrderReceived, message: RabbitMessage) -> None:
        """Reserve the stock and queue a ticket, or announce production.failed if stock is short."""
        await service.receive_order(store(), event, event_meta(message))

    @orders(filter=of_type(E.ORDER_CANCELLED))
    async def on_order_cancelled(event: OrderCancelled, message: RabbitMessage) -> None:
        """Drop the order's ticket; stock comes back if no cook has started it."""
        await service.cancel_order(store(), event, event_meta(message))

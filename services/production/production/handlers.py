"""What the production service does with each event it consumes: one small function per type.

The order service is the only source: paid orders to make, cancellations the customer asks for
(the kitchen decides), and orders to drop. Deliveries are handled concurrently and replicas
compete, so nothing relies on their order: a cancellation that overtakes its order leaves a
tombstone the late order.received finds.
"""

from __future__ import annotations

from collections.abc import Callable

from production import customer_data, service
from production.store import ProductionStore
from sagakit.events import EventType, OrderCancellationRequested, OrderCancelled, OrderReceived
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
ORDER_EVENTS = ConsumerQueue(
    "production", "order",
    (E.ORDER_RECEIVED, E.ORDER_CANCELLATION_REQUESTED, E.ORDER_CANCELLED),
)
CUSTOMER_EVENTS = customer_queue("production")  # the identity's requests about a customer's data
QUEUES = (ORDER_EVENTS, CUSTOMER_EVENTS)


def register(messaging: Messaging, store: Callable[[], ProductionStore],
             faults: Callable[[], FaultStore]) -> None:
    orders = messaging.subscriber(ORDER_EVENTS, "Paid orders for the kitchen, and cancellations")

    @orders(filter=of_type(E.ORDER_RECEIVED))
    async def on_order_received(event: OrderReceived) -> None:
        """Reserve the stock and queue a ticket, or announce production.failed if stock is short."""
        await service.receive_order(store(), event, event_meta(), faults())

    @orders(filter=of_type(E.ORDER_CANCELLATION_REQUESTED))
    async def on_cancellation_requested(event: OrderCancellationRequested) -> None:
        """The customer wants out: drop a ticket no cook has started, else refuse."""
        await service.request_cancel(store(), event, event_meta())

    @orders(filter=of_type(E.ORDER_CANCELLED))
    async def on_order_cancelled(event: OrderCancelled) -> None:
        """Drop the order's ticket; stock comes back if no cook has started it."""
        await service.cancel_order(store(), event, event_meta())

    subscribe_customer_data(
        messaging, "production",
        export=lambda event, meta: customer_data.export(store(), event, meta),
        erase=lambda event, meta: customer_data.erase(store(), event, meta),
    )

"""What the production service does with each event it consumes: one small function per type.

From the order service: paid orders to make, cancellations the customer asks for (the kitchen
decides), and orders to drop; from the identity: a customer's data export and erasure, which
the kitchen only answers (it keeps nothing personal: production.customer_data). Deliveries are
handled concurrently and replicas compete, so nothing relies on their order: a cancellation
that overtakes its order leaves a tombstone the late order.received finds.
"""

from __future__ import annotations

from typing import Protocol

from production import customer_data, service
from production.store import ProductionStore
from sagakit.events import (
    CustomerDataRequested,
    CustomerErasureRequested,
    EventType,
    OrderCancellationRequested,
    OrderCancelled,
    OrderReceived,
)
from sagakit.faults import FaultStore
from sagakit.routing import Router, customer_queue
from sagakit.runtime import event_meta
from sagakit.topology import ConsumerQueue


class Needs(Protocol):
    """What the handlers use: the kitchen's store and its fault switches (``app.state`` once
    the lifespan has connected to Redis)."""

    @property
    def store(self) -> ProductionStore: ...

    @property
    def faults(self) -> FaultStore: ...


E = EventType
router: Router[Needs] = Router()
ORDER_EVENTS = router.queue(ConsumerQueue(
    "production", "order",
    (E.ORDER_RECEIVED, E.ORDER_CANCELLATION_REQUESTED, E.ORDER_CANCELLED),
), "Paid orders for the kitchen, and cancellations")
# The identity's requests about a customer's data.
CUSTOMER_EVENTS = router.queue(customer_queue("production"), "A customer's data: export, erasure")
QUEUES = router.queues


@router.on(ORDER_EVENTS, E.ORDER_RECEIVED)
async def on_order_received(event: OrderReceived, needs: Needs) -> None:
    """Reserve the stock and queue a ticket, or announce production.failed if stock is short."""
    await service.receive_order(needs.store, event, event_meta(), needs.faults)


@router.on(ORDER_EVENTS, E.ORDER_CANCELLATION_REQUESTED)
async def on_cancellation_requested(event: OrderCancellationRequested, needs: Needs) -> None:
    """The customer wants out: drop a ticket no cook has started, else refuse."""
    await service.request_cancel(needs.store, event, event_meta())


@router.on(ORDER_EVENTS, E.ORDER_CANCELLED)
async def on_order_cancelled(event: OrderCancelled, needs: Needs) -> None:
    """Drop the order's ticket; stock comes back if no cook has started it."""
    await service.cancel_order(needs.store, event, event_meta())


@router.on(CUSTOMER_EVENTS, E.CUSTOMER_DATA_REQUESTED)
async def on_customer_data_requested(event: CustomerDataRequested, needs: Needs) -> None:
    """Announce the kitchen's part of the customer's data (production.customer_data)."""
    await customer_data.export(needs.store, event, event_meta())


@router.on(CUSTOMER_EVENTS, E.CUSTOMER_ERASURE_REQUESTED)
async def on_customer_erasure_requested(event: CustomerErasureRequested, needs: Needs) -> None:
    """Confirm (production.customer_erased): the kitchen's tickets hold nothing personal."""
    await customer_data.erase(needs.store, event, event_meta())

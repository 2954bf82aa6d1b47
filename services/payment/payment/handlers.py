"""What the payment service does with each event it consumes: one small function per event type.

Both of the order service's events for payment arrive on one queue, so that an order's
cancellation normally follows its creation; when they still cross (a retry, two replicas), the
order's advisory lock and the cancellation tombstone keep the outcome right.
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from payment import customer_data, service
from sagakit.events import (
    CustomerDataRequested,
    CustomerErasureRequested,
    EventType,
    OrderCancelled,
    OrderCreated,
)
from sagakit.faults import FaultStore
from sagakit.routing import Router, customer_queue
from sagakit.runtime import event_meta
from sagakit.topology import ConsumerQueue


class Needs(Protocol):
    """What the handlers use: the connection pool and the fault switches (``app.state``)."""

    @property
    def pool(self) -> asyncpg.Pool: ...

    @property
    def faults(self) -> FaultStore: ...


E = EventType
router: Router[Needs] = Router()
ORDER_EVENTS = router.queue(
    ConsumerQueue("payment", "order", (E.ORDER_CREATED, E.ORDER_CANCELLED)),
    "Orders to charge, and cancelled orders to refund or void")
# The identity's requests about a customer's data.
CUSTOMER_EVENTS = router.queue(customer_queue("payment"), "A customer's data: export, erasure")
QUEUES = router.queues


@router.on(ORDER_EVENTS, E.ORDER_CREATED)
async def on_order_created(event: OrderCreated, needs: Needs) -> None:
    """Charge the order once and announce payment.processed (approved or declined)."""
    await service.charge_order(needs.pool, event, event_meta(), needs.faults)


@router.on(ORDER_EVENTS, E.ORDER_CANCELLED)
async def on_order_cancelled(event: OrderCancelled, needs: Needs) -> None:
    """Announce payment.refunded if the order was charged, else payment.voided."""
    await service.refund_or_void(needs.pool, event, event_meta())


@router.on(CUSTOMER_EVENTS, E.CUSTOMER_DATA_REQUESTED)
async def on_customer_data_requested(event: CustomerDataRequested, needs: Needs) -> None:
    """Announce this service's part of the customer's data (payment.customer_data)."""
    await customer_data.export(needs.pool, event, event_meta())


@router.on(CUSTOMER_EVENTS, E.CUSTOMER_ERASURE_REQUESTED)
async def on_customer_erasure_requested(event: CustomerErasureRequested, needs: Needs) -> None:
    """Anonymise the customer's payments and confirm (payment.customer_erased)."""
    await customer_data.erase(needs.pool, event, event_meta())

"""The production service's part of a customer's data: it holds none, and says so.

A ticket names its order and the products to make, never the customer (the kitchen does not
need to know who ordered), so an export's part from here is empty and an erasure has nothing
to change. Both still answer, so the identity service knows every service has been asked and
has replied.
"""

from __future__ import annotations

import logging

from production.store import ProductionStore
from sagakit.envelope import EventMeta, EventSource
from sagakit.events import (
    CustomerDataRequested,
    CustomerErasureRequested,
    ProductionCustomerData,
    ProductionCustomerErased,
)

log = logging.getLogger("production.customer_data")
SOURCE = EventSource("production")
SERVICE = "production"
PUBLISHES = (ProductionCustomerData, ProductionCustomerErased)
NOTHING_HELD = ("tickets name orders and products, never a customer: nothing personal is "
                "kept here")


async def export(store: ProductionStore, event: CustomerDataRequested, meta: EventMeta) -> None:
    await store.answer_once(meta.id, SOURCE.event(ProductionCustomerData(
        export_id=event.export_id, customer_id=event.customer_id, service=SERVICE,
        data={"personal_data": [], "note": NOTHING_HELD},
    ), event.customer_id))


async def erase(store: ProductionStore, event: CustomerErasureRequested, meta: EventMeta) -> None:
    await store.answer_once(meta.id, SOURCE.event(ProductionCustomerErased(
        erasure_id=event.erasure_id, customer_id=event.customer_id, service=SERVICE, erased={},
    ), event.customer_id))

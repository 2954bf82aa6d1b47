"""What the identity service does with each event it consumes: the services' answers to a
customer's data export and erasure (identity.customer_data gathers them)."""

from __future__ import annotations

from typing import Protocol

import asyncpg

from identity import customer_data
from sagakit.events import CustomerData, CustomerErased, EventType
from sagakit.routing import Router
from sagakit.runtime import event_meta
from sagakit.topology import ConsumerQueue


class Needs(Protocol):
    """What the handlers use: the identity's connection pool (``app.state``)."""

    @property
    def pool(self) -> asyncpg.Pool: ...


E = EventType
router: Router[Needs] = Router()
# One queue per source, as every service has; each source sends its part and its confirmation.
ORDER_ANSWERS, PAYMENT_ANSWERS, PRODUCTION_ANSWERS = (
    router.queue(ConsumerQueue("identity", source, (data, erased)),
                 f"The {source} service's answers about a customer's data")
    for source, data, erased in (
        ("order", E.ORDER_CUSTOMER_DATA, E.ORDER_CUSTOMER_ERASED),
        ("payment", E.PAYMENT_CUSTOMER_DATA, E.PAYMENT_CUSTOMER_ERASED),
        ("production", E.PRODUCTION_CUSTOMER_DATA, E.PRODUCTION_CUSTOMER_ERASED),
    )
)
QUEUES = router.queues


@router.on(ORDER_ANSWERS, E.ORDER_CUSTOMER_DATA)
@router.on(PAYMENT_ANSWERS, E.PAYMENT_CUSTOMER_DATA)
@router.on(PRODUCTION_ANSWERS, E.PRODUCTION_CUSTOMER_DATA)
async def on_customer_data(event: CustomerData, needs: Needs) -> None:
    """Keep this service's part of the export; complete once every part is in."""
    await customer_data.record_part(needs.pool, event, event_meta())


@router.on(ORDER_ANSWERS, E.ORDER_CUSTOMER_ERASED)
@router.on(PAYMENT_ANSWERS, E.PAYMENT_CUSTOMER_ERASED)
@router.on(PRODUCTION_ANSWERS, E.PRODUCTION_CUSTOMER_ERASED)
async def on_customer_erased(event: CustomerErased, needs: Needs) -> None:
    """Note this service's erasure; complete once every service confirmed."""
    await customer_data.record_erased(needs.pool, event, event_meta())

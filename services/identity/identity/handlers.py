"""What the identity service does with each event it consumes: the services' answers to a
customer's data export and erasure (identity.customer_data gathers them)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from identity import customer_data
from sagakit.events import CustomerData, CustomerErased, EventType
from sagakit.runtime import Messaging, event_meta, of_type
from sagakit.topology import ConsumerQueue

E = EventType
# One queue per source, as every service has; each source sends its part and its confirmation.
ANSWERS = {
    "order": (E.ORDER_CUSTOMER_DATA, E.ORDER_CUSTOMER_ERASED),
    "payment": (E.PAYMENT_CUSTOMER_DATA, E.PAYMENT_CUSTOMER_ERASED),
    "production": (E.PRODUCTION_CUSTOMER_DATA, E.PRODUCTION_CUSTOMER_ERASED),
}
QUEUES = tuple(ConsumerQueue("identity", source, types) for source, types in ANSWERS.items())


def register(messaging: Messaging, pool: Callable[[], asyncpg.Pool]) -> None:
    for queue in QUEUES:
        subscriber = messaging.subscriber(queue, f"The {queue.source} service's answers about "
                                                 "a customer's data")
        data_type, erased_type = queue.bindings

        @subscriber(filter=of_type(data_type))
        async def on_customer_data(event: CustomerData) -> None:
            """Keep this service's part of the export; complete once every part is in."""
            await customer_data.record_part(pool(), event, event_meta())

        @subscriber(filter=of_type(erased_type))
        async def on_customer_erased(event: CustomerErased) -> None:
            """Note this service's erasure; complete once every service confirmed."""
            await customer_data.record_erased(pool(), event, event_meta())

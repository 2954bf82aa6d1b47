"""sagakit.routing: every event a service's queues bind has exactly one handler, and a handler is
a plain function, given its needs when the router is included."""

from __future__ import annotations

import uuid
from collections import Counter
from types import ModuleType, SimpleNamespace

import pytest
from faststream.rabbit import TestRabbitBroker
from pydantic import BaseModel

from identity import handlers as identity_handlers
from order import handlers as order_handlers
from payment import handlers as payment_handlers
from production import handlers as production_handlers
from sagakit.routing import Router
from sagakit.runtime import Messaging, event_meta
from sagakit.settings import ServiceSettings
from sagakit.topology import ConsumerQueue, queues_by_routing_key

SERVICES = [order_handlers, payment_handlers, production_handlers, identity_handlers]


@pytest.mark.parametrize("handlers", SERVICES, ids=lambda module: module.__name__)
def test_every_bound_event_type_has_exactly_one_handler(handlers: ModuleType) -> None:
    """A binding without a handler would park every such event as poison (no subscriber);
    two handlers for one would leave the second dead."""
    router: Router[object] = handlers.router
    bound = Counter((queue.name, key) for queue in router.queues for key in queue.bindings)
    routed = Counter((route.queue.name, route.event_type) for route in router.routes)
    assert routed == bound


def test_a_handler_can_only_be_routed_from_a_declared_queue_that_binds_its_type() -> None:
    router: Router[object] = Router()
    queue = ConsumerQueue("svc", "src", ("a.happened",))
    with pytest.raises(ValueError, match=r"router\.queue"):
        router.on(queue, "a.happened")
    router.queue(queue, "what svc takes from src")
    with pytest.raises(ValueError, match=r"not bound to b\.happened"):
        router.on(queue, "b.happened")


class Happened(BaseModel):
    n: int


async def test_an_included_handler_gets_the_decoded_event_and_the_needs_given_once() -> None:
    router: Router[SimpleNamespace] = Router()
    queue = router.queue(ConsumerQueue("svc", "src", ("a.happened",)), "probe")
    seen: list[tuple[int, str, str]] = []

    @router.on(queue, "a.happened")
    async def on_happened(event: Happened, needs: SimpleNamespace) -> None:
        """Note the event."""
        seen.append((event.n, needs.name, event_meta().type))

    messaging = Messaging("svc", ServiceSettings(), router.queues)
    router.include(messaging, SimpleNamespace(name="the needs"))
    async with TestRabbitBroker(messaging.broker) as broker:
        event_id = str(uuid.uuid4())
        await broker.publish({"n": 7}, queue=queue.name, message_id=event_id, headers={
            "ce-id": event_id, "ce-type": "a.happened", "ce-subject": "s"})
    assert seen == [(7, "the needs", "a.happened")]
    # The decorated function itself is unchanged: importable and callable from a test.
    assert on_happened.__name__ == "on_happened" and router.routes[0].handler is on_happened


def test_a_delivery_is_told_apart_by_its_routing_key_whichever_way_it_came() -> None:
    """The retry path publishes a failed delivery back to the queue it came from, named by its
    routing key: an event type from saga.events, the queue's own name from saga.requeue (a
    retry, an operator's replay), the service from saga.dead-letters."""
    payments = ConsumerQueue("order", "payment", ("payment.processed", "payment.refunded"))
    kitchen = ConsumerQueue("order", "production", ("order.finished",))
    by_key = queues_by_routing_key("order", [payments, kitchen])
    assert by_key["payment.refunded"] == by_key["order.payment-events"] == "order.payment-events"
    assert by_key["order.finished"] == "order.production-events"
    assert by_key["order"] == "order.dead-letters"
    twice = ConsumerQueue("order", "other", ("order.finished",))
    with pytest.raises(ValueError, match="bound by both"):
        queues_by_routing_key("order", [kitchen, twice])
    # The services' own queues bind every event type once.
    for handlers in SERVICES:
        queues_by_routing_key(handlers.router.queues[0].service, handlers.router.queues)

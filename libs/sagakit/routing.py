"""Which function handles which event: a service's handlers as plain, importable functions.

A service declares, at module level, one :class:`Router` and, on it, one handler per event type
it consumes::

    router: Router[Needs] = Router()
    PAYMENTS = router.queue(ConsumerQueue("order", "payment", (...)), "Payment outcomes")

    @router.on(PAYMENTS, EventType.PAYMENT_PROCESSED)
    async def on_payment_processed(event: PaymentProcessed, needs: Needs) -> None: ...

A handler takes the event, validated into the model its annotation names, and ``needs``: what it
works with (a connection pool, a store), given once by the service's composition root
(``router.include(messaging, needs)`` in ``app.build``). Nothing is bound at import time, so a
test calls a handler directly, or includes the router on FastStream's ``TestRabbitBroker`` with
fake stores (tests/unit/test_*_in_process.py).

Why a router of our own rather than FastStream's ``RabbitRouter``: the latter hands a handler its
collaborators through ``Context()``/``Depends()`` parameters, which fast_depends resolves per
delivery (the context one in a worker thread); here they are bound once, when the router is
included, and a handler's signature says exactly what it uses. Underneath it is FastStream's own
subscriber, with its filters, decoding, middleware and AsyncAPI document.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from faststream.rabbit import RabbitMessage
from faststream.rabbit.subscriber import RabbitSubscriber
from pydantic import BaseModel

from sagakit.events import EventType
from sagakit.topology import ConsumerQueue

Body = TypeVar("Body", bound=BaseModel)
Needs = TypeVar("Needs")
# A consumer as FastStream sees it: one coroutine taking the delivery's body, validated into its
# model.
Handler: TypeAlias = Callable[[Body], Awaitable[None]]
# A service's handler: the body, and what the service gives its handlers.
Routed: TypeAlias = Callable[[Body, Needs], Awaitable[None]]
# Which deliveries a handler takes (:func:`of_type`): awaited with each incoming message.
MessageFilter: TypeAlias = Callable[[RabbitMessage], Awaitable[bool]]


def of_type(event_type: str) -> MessageFilter:
    """A FastStream filter routing a delivery to the handler of its CloudEvents type.

    A coroutine function on purpose: FastStream runs a plain function filter in a worker thread
    (anyio's ``run_in_threadpool``), a thread hop per handler tried for every delivery.
    """

    async def matches(message: RabbitMessage) -> bool:
        return bool(message.headers.get("ce-type") == event_type)

    matches.__name__ = f"of_type_{event_type.replace('.', '_')}"
    return matches


class Registers(Protocol):
    """The decorator ``@subscription(filter=...)`` gives: it registers the handler and returns
    it unchanged, so the handler keeps its own type (``(OrderCreated) -> Awaitable[None]``)."""

    def __call__(self, handler: Handler[Body], /) -> Handler[Body]: ...


class Subscription:
    """The subscriber on one consumer queue: one handler per event type, each chosen by its
    filter. A typed face on FastStream's subscriber, whose decorator mypy cannot see through."""

    def __init__(self, subscriber: RabbitSubscriber) -> None:
        self._subscriber = subscriber

    def __call__(self, *, filter: MessageFilter) -> Registers:
        def register(handler: Handler[Body]) -> Handler[Body]:
            self._subscriber(handler, filter=filter)
            return handler

        return register


class Subscribes(Protocol):
    """Where a router subscribes its handlers: :class:`sagakit.runtime.Messaging` (a protocol,
    so that this module, which the runtime uses, does not import it back)."""

    def subscriber(self, queue: ConsumerQueue, description: str) -> Subscription: ...


@dataclass(frozen=True)
class Route(Generic[Needs]):
    queue: ConsumerQueue
    event_type: str
    handler: Routed[Any, Needs]


class Router(Generic[Needs]):
    """A service's consumer queues and, on each, the handler of every event type it binds."""

    def __init__(self) -> None:
        self._queues: dict[ConsumerQueue, str] = {}
        self.routes: list[Route[Needs]] = []

    def queue(self, queue: ConsumerQueue, description: str) -> ConsumerQueue:
        """Consume ``queue`` (described in the AsyncAPI document); returns it, for :meth:`on`."""
        self._queues[queue] = description
        return queue

    @property
    def queues(self) -> tuple[ConsumerQueue, ...]:
        return tuple(self._queues)

    def on(self, queue: ConsumerQueue, event_type: EventType | str,
           ) -> Callable[[Routed[Body, Needs]], Routed[Body, Needs]]:
        """Handle ``event_type`` deliveries on ``queue`` with the decorated function, which is
        returned unchanged (importable, callable from a test)."""
        if queue not in self._queues:
            raise ValueError(f"{queue.name}: declare it with router.queue() first")
        if event_type not in queue.bindings:
            raise ValueError(f"{queue.name} is not bound to {event_type}: no delivery would come")

        def register(handler: Routed[Body, Needs]) -> Routed[Body, Needs]:
            self.routes.append(Route(queue, str(event_type), handler))
            return handler

        return register

    def include(self, messaging: Subscribes, needs: Needs) -> None:
        """Subscribe every handler on ``messaging``'s broker, each given ``needs``."""
        for queue, description in self._queues.items():
            subscription = messaging.subscriber(queue, description)
            for route in self.routes:
                if route.queue == queue:
                    subscription(filter=of_type(route.event_type))(_bound(route.handler, needs))


def customer_queue(service: str) -> ConsumerQueue:
    """The queue on which ``service`` takes the identity's requests about a customer's data
    (export, erasure): every service holding data about customers consumes one."""
    return ConsumerQueue(service, "identity",
                         (EventType.CUSTOMER_DATA_REQUESTED, EventType.CUSTOMER_ERASURE_REQUESTED))


def _bound(handler: Routed[Any, Needs], needs: Needs) -> Handler[Any]:
    """``handler`` with its ``needs`` given, as the one-argument consumer FastStream calls.

    FastStream decodes the body into the model the consumer's first parameter is annotated
    with, so the consumer carries the handler's annotation (and its name and docstring, which
    the AsyncAPI document shows). Not ``functools.wraps``: its ``__wrapped__`` would make
    FastStream read the handler's two-parameter signature instead.
    """
    model = next(iter(typing.get_type_hints(handler).values()))

    async def consume(event: BaseModel) -> None:
        await handler(event, needs)

    consume.__annotations__ = {"event": model, "return": None}
    consume.__name__ = consume.__qualname__ = handler.__name__
    consume.__doc__ = handler.__doc__
    consume.__module__ = handler.__module__
    return consume


__all__ = ["Handler", "MessageFilter", "Registers", "Route", "Router", "Subscription",
           "customer_queue", "of_type"]

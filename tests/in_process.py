"""What the in-process tests of the services share (tests/unit/test_*_in_process.py): a bus that
delivers an event to the service's queue as RabbitMQ would, a connection pool that opens
nothing, and fault switches held in memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from faststream.rabbit import RabbitBroker

from sagakit.envelope import OutgoingEvent
from sagakit.events import Event
from sagakit.faults import FaultChange, FaultSetting
from sagakit.topology import ConsumerQueue


class Bus:
    """Delivers an event as RabbitMQ would: to the service's queue that the topology binds its
    routing key to (TestRabbitBroker does not model the topic exchange's bindings), with the
    envelope's CloudEvents headers and AMQP properties. A publish returns once the handler
    has."""

    def __init__(self, broker: RabbitBroker, queues: Sequence[ConsumerQueue]) -> None:
        self.broker, self.queues = broker, tuple(queues)

    async def publish(self, event: OutgoingEvent) -> None:
        (queue,) = [q for q in self.queues if event.type in q.bindings]
        await self.broker.publish(event.body, queue=queue.name, persist=True,
                                  **event.amqp_properties(event.headers))


def envelope(event: Event, subject: object) -> OutgoingEvent:
    return OutgoingEvent.build(event, source="saga-shop/test", subject=str(subject))


@dataclass
class FakeConnection:
    """Stands for one asyncpg connection; the advisory locks its transaction holds."""

    locks: set[UUID] = field(default_factory=set)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


class FakePool:
    """An asyncpg pool to hand to a use case whose store functions are faked: each acquire is
    a new connection (so a lock never outlives its transaction)."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConnection]:
        yield FakeConnection()


class FakeFaults:
    """A service's fault switches (sagakit.faults.FaultStore), in memory."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    async def read(self) -> FaultSetting:
        return FaultSetting(dict(self.values))

    async def change(self, values: Mapping[str, Any], *, who: str,
                     request_id: str | None) -> FaultSetting:
        self.values.update(values)
        return await self.read()

    async def history(self, limit: int) -> list[FaultChange]:
        return []

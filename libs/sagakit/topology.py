"""The broker topology, declared idempotently by every service at start-up.

::

    saga.events (topic) ──routing key = event type──▶ <service>.<source>-events (quorum)
                                                          │ handler fails (transient / not yet)
    saga.retry (headers, retry-delay-ms) ──▶ saga.retry.<ms>ms (quorum, TTL) ──expires──┐
                                                                                        ▼
    saga.requeue (direct, key = queue name) ──▶ back into the same consumer queue
                                                          │ poison, or retries exhausted
    saga.dead-letters (direct, key = service) ──▶ <service>.dead-letters (quorum, parked)
    saga.unrouted (fanout, alternate exchange of saga.events) ──▶ saga.unrouted (kept)

The retry tier is picked by a ``retry-delay-ms`` header (not ``x-``-prefixed: a headers
exchange ignores ``x-`` headers when matching). Retries are plain RabbitMQ (TTL +
dead-lettering, 3.10+, no plugin). Every queue is a quorum queue with at-least-once
dead-lettering, so a message is never dropped on the way to a DLQ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from faststream.rabbit import ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue

# A message no queue is bound for (a consumer not deployed yet) is kept, not dropped.
UNROUTED = RabbitExchange("saga.unrouted", type=ExchangeType.FANOUT, durable=True)
UNROUTED_QUEUE = RabbitQueue("saga.unrouted", queue_type=QueueType.QUORUM, durable=True)
_KEEP_UNROUTED = {"alternate-exchange": UNROUTED.name}
EVENTS = RabbitExchange(
    "saga.events", type=ExchangeType.TOPIC, durable=True, arguments=_KEEP_UNROUTED
)
RETRY = RabbitExchange(
    "saga.retry", type=ExchangeType.HEADERS, durable=True, arguments=_KEEP_UNROUTED
)
REQUEUE = RabbitExchange("saga.requeue", type=ExchangeType.DIRECT, durable=True)
DEAD_LETTERS = RabbitExchange("saga.dead-letters", type=ExchangeType.DIRECT, durable=True)

# Redeliveries the broker allows before it parks a message itself (a handler that crashes the
# process every time would otherwise loop forever).
DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class ConsumerQueue:
    """A service's durable queue for one source's events, bound to the keys it reads."""

    service: str
    source: str
    bindings: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.service}.{self.source}-events"

    def declaration(self) -> RabbitQueue:
        return RabbitQueue(
            self.name,
            queue_type=QueueType.QUORUM,
            durable=True,
            arguments={
                "x-dead-letter-exchange": DEAD_LETTERS.name,
                "x-dead-letter-routing-key": self.service,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )


def queues_by_routing_key(service: str, queues: Sequence[ConsumerQueue]) -> dict[str, str]:
    """Which of ``service``'s queues a delivery with a given routing key came from: the consumer
    queue binding that event type (from ``saga.events``), the queue itself (its name is the key
    of a retry coming back through ``saga.requeue``, of a replay, of a direct publish), and the
    dead-letter queue (key: the service). Each event type is bound by one queue per service."""
    by_key = {dead_letter_queue(service).name: dead_letter_queue(service).name,
              service: dead_letter_queue(service).name}
    for queue in queues:
        by_key[queue.name] = queue.name
        for key in queue.bindings:
            if by_key.setdefault(key, queue.name) != queue.name:
                raise ValueError(f"{key} is bound by both {by_key[key]} and {queue.name}")
    return by_key


def dead_letter_queue(service: str) -> RabbitQueue:
    return RabbitQueue(f"{service}.dead-letters", queue_type=QueueType.QUORUM, durable=True)


def retry_queue(delay_ms: int) -> RabbitQueue:
    return RabbitQueue(
        f"saga.retry.{delay_ms}ms",
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": REQUEUE.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


@dataclass(frozen=True)
class Topology:
    service: str
    queues: Sequence[ConsumerQueue]
    retry_delays_ms: Sequence[int]  # the setting RETRY_DELAYS_MS (sagakit.settings)

    async def declare(self, broker: RabbitBroker) -> None:
        """Declare exchanges, queues and bindings; safe to run on every start of every replica."""
        unrouted = await broker.declare_exchange(UNROUTED)
        await (await broker.declare_queue(UNROUTED_QUEUE)).bind(unrouted)
        events = await broker.declare_exchange(EVENTS)
        retry = await broker.declare_exchange(RETRY)
        requeue = await broker.declare_exchange(REQUEUE)
        dead = await broker.declare_exchange(DEAD_LETTERS)

        for delay in sorted(set(self.retry_delays_ms)):
            queue = await broker.declare_queue(retry_queue(delay))
            await queue.bind(retry, arguments={"x-match": "all", "retry-delay-ms": str(delay)})

        parked = await broker.declare_queue(dead_letter_queue(self.service))
        await parked.bind(dead, routing_key=self.service)

        for consumer in self.queues:
            queue = await broker.declare_queue(consumer.declaration())
            for key in consumer.bindings:
                await queue.bind(events, routing_key=key)
            await queue.bind(requeue, routing_key=consumer.name)

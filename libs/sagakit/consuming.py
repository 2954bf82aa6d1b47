"""The one consume path: decide, for a delivery whose handler failed, to retry it later or park it.

A handler either returns (its effect is committed: the delivery is acked), or raises:

- :class:`RetryLater`: the event came before its precondition (out of order) -> retried later;
- any other error is taken as transient (database or broker hiccup) -> retried later;
- an undecodable body, a body that fails its schema, or an unknown event type is poison ->
  parked at once, so it never loops and never blocks the queue.

"Later" is a broker-side delay (see :mod:`sagakit.topology`) that grows with each attempt; after
the last one the message is parked in the service's dead-letter queue with the reason, the
attempt count and its original headers. A failure that is a store or the broker being away
(:func:`is_outage`) is not the event's fault: it is retried at the last delay for as long as the
outage lasts, never parked. The copy is published with a publisher confirm before
the original is acked, so a crash in between means a redelivery (which the inbox absorbs),
never a loss. A message parked here expires after ``DEAD_LETTER_RETENTION_DAYS`` (a retention
limit for whatever personal data it may hold); one the broker parks by itself, after
``topology.DELIVERY_LIMIT`` redeliveries of a handler that never returned (a process that
crashes on it), carries no expiry, and the hourly retention sweep of parked messages discards
it (sagakit.deadletters).

Every delivery is handled inside a CONSUMER span continuing the trace of the event's publish
(:func:`sagakit.telemetry.consuming`); a failed handler marks it ERROR, and the counters of
:mod:`sagakit.metrics` record what was consumed, retried and parked.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiormq.exceptions
import asyncpg
import redis.exceptions
from aio_pika import IncomingMessage
from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, SubscriberNotFound
from faststream.rabbit import RabbitBroker
from pydantic import ValidationError

from sagakit import logs, metrics, telemetry, topology, units
from sagakit.envelope import EventMeta, jsonable, message_name
from sagakit.events import EventType

log = logging.getLogger("sagakit.consuming")


def order_of(meta: EventMeta) -> str | None:
    """The order a delivery is about, for its log lines: its subject, but for the events about
    a customer (their data, their erasure), whose subject is the customer's id, and about a
    card (``card-`` and a digest of its token)."""
    if "customer" in meta.type or meta.type == EventType.CARD_TOKENIZED:
        return None
    return meta.subject or None


class RetryLater(Exception):
    """The event cannot be applied yet (its precondition is not met); try again later."""


class Poison(Exception):
    """The event can never be applied; park it for an operator."""


# Errors that say a store or the network is unavailable, not that the event is wrong. A name
# that does not resolve is one: in compose, a stopped database's container leaves the network's
# DNS, and connecting to it raises socket.gaierror (an OSError, not a ConnectionError). A
# PostgreSQL that stops (or restarts, or whose backend is terminated) ends the statements in
# flight with 57P01 "terminating connection due to administrator command" (57P02 after a
# crash): the server going away, not the statement's fault.
OUTAGE: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, socket.gaierror, socket.herror,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    # A login refused while connecting: in compose a killed database's address can go, as the
    # stack comes back, to another database container, whose server refuses this service's
    # role (28P01). A wrong password from the start never gets this far: a service connects
    # before it is live.
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)
# ... and an OSError of these kinds, which Python gives no class of their own (a host or network
# that cannot be reached: a container gone from the network, a route down).
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                          errno.ENETDOWN})


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says a store or the network is unavailable (retry for as long as it
    lasts; a 503 at the API) rather than that the work itself is wrong."""
    return isinstance(exc, OUTAGE) or (isinstance(exc, OSError) and exc.errno in _UNREACHABLE)
POISON = (ValidationError, json.JSONDecodeError, UnicodeDecodeError, SubscriberNotFound, Poison)


# The channel a delivery came on is gone (a broker node stopped, a connection dropped): its ack
# cannot be sent, and needs not be (below).
CHANNEL_GONE = (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.ChannelClosed,
                aiormq.exceptions.ConnectionClosed)


class LostAcks(logging.Filter):
    """FastStream logs an ack (or nack) it could not send as CRITICAL, with a traceback. When
    the channel closed under it, nothing is lost and nothing needs doing: the broker delivers
    the unacknowledged message again, to whichever consumer is connected, and the inbox makes
    a step already applied a no-op. Said as a warning, without the alarm; any other failure to
    ack keeps FastStream's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno == logging.CRITICAL and isinstance(error, CHANNEL_GONE):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = ("a delivery's ack was lost with its channel (%r): the broker delivers "
                          "it again and the inbox ignores it if it was applied")
            record.args, record.exc_info, record.exc_text = (error,), None, None
        return True


LOST_ACKS = LostAcks()


# The envelope of the delivery being handled, set by the middleware for the handler's task.
_delivery: ContextVar[EventMeta | ValueError | None] = ContextVar("saga_delivery", default=None)


def event_meta() -> EventMeta:
    """The envelope (id, type, subject, attempt) of the event the running handler consumes.

    Read from the context the middleware set, not from a ``message`` handler parameter:
    FastStream resolves such a parameter through fast_depends, which runs the resolution of a
    context field in a worker thread, a thread hop per delivery.
    """
    meta = _delivery.get()
    if meta is None:
        raise RuntimeError("event_meta() outside a handler run through RetryPolicy.middleware()")
    if isinstance(meta, ValueError):
        raise Poison(str(meta))  # no event id: it can never be recorded in an inbox
    return meta


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


class RetryPolicy:
    """Where a failed delivery goes next. One instance per service, shared by its subscribers."""

    def __init__(self, broker: RabbitBroker, service: str, delays_ms: Sequence[int],
                 park_seconds: int | None = None,
                 queues: Sequence[topology.ConsumerQueue] = ()) -> None:
        self.broker = broker
        self.service = service
        self._queue_by_key = topology.queues_by_routing_key(service, queues)
        self.delays_ms = tuple(delays_ms)
        # A parked message expires after this (the broker drops it): retention of what it holds.
        self.park_seconds = park_seconds
        # Called with the envelope of each delivery a handler consumed, before its ack: the
        # event archive of a store whose inbox cannot archive it (sagakit.archive.RedisArchive).
        # A failure there is retried like a handler's; the inbox makes the retry archive only.
        self.on_consumed: Callable[[EventMeta], Awaitable[None]] | None = None

    def queue_of(self, routing_key: str) -> str:
        """The queue of this service a delivery with ``routing_key`` came from."""
        return self._queue_by_key.get(routing_key, routing_key)

    @property
    def max_attempts(self) -> int:
        return len(self.delays_ms) + 1

    async def reroute(self, raw: IncomingMessage, queue: str, exc: BaseException) -> str:
        """Publish the delivery to a retry queue or park it; returns "retry" or "parked"."""
        headers: dict[str, Any] = dict(raw.headers or {})
        attempt = int(headers.get("x-attempt", 1))
        reason = describe(exc)
        if isinstance(exc, SubscriberNotFound):  # its text is a dump of the whole message
            if kind := headers.get("ce-type"):
                reason = f"SubscriberNotFound: no handler here for event type {jsonable(kind)!r}"
            else:  # handlers are chosen by ce-type, whatever the routing key says
                reason = ("SubscriberNotFound: no ce-type header, so no handler can tell what "
                          f"event this is (routing key {raw.routing_key!r})")
        outage = is_outage(exc)
        # Failures that were the event's own (not a store away): they alone count towards
        # parking. Retries spent waiting out an outage must not use up an early event's budget,
        # or the first "not yet" after a long outage would park it. (A message retried before
        # this header existed has only x-attempt: every failure counted then.)
        failures = int(headers.get("x-failures", attempt - 1)) + (0 if outage else 1)
        if isinstance(exc, POISON) or (failures >= self.max_attempts and not outage):
            headers.update(
                {
                    "x-dead-letter-reason": reason,
                    "x-attempts": attempt,
                    "x-original-queue": queue,
                    "x-parked-at": datetime.now(UTC).isoformat(),
                }
            )
            log.error(
                "parked %s after %d attempt(s): %s", raw.message_id, attempt, reason,
                extra={"event_id": raw.message_id, "queue": queue},
            )
            await self._publish(raw, headers, topology.DEAD_LETTERS, self.service,
                                expiration=self.park_seconds)
            return "parked"
        # A store that is down is not the event's fault: keep retrying, the delay growing to the
        # longest, for as long as the outage lasts, rather than parking every event that arrives
        # meanwhile. The event's own failures take their delays from the start of the schedule:
        # an early event whose predecessor waited out the same outage comes back soon.
        step = attempt if outage else failures
        delay = self.delays_ms[min(step, len(self.delays_ms)) - 1]
        headers.update(
            {
                "x-attempt": attempt + 1,
                "x-failures": failures,
                "retry-delay-ms": str(delay),
                "x-last-error": reason,
                "x-original-queue": queue,
            }
        )
        log.warning(
            "retrying %s in %d ms (attempt %d; %s): %s",
            raw.message_id, delay, attempt + 1,
            "a store is away" if outage else f"failure {failures} of {self.max_attempts}",
            reason, extra={"event_id": raw.message_id, "queue": queue},
        )
        await self._publish(raw, headers, topology.RETRY, queue)
        return "retry"

    async def _publish(
        self, raw: IncomingMessage, headers: dict[str, Any], exchange: Any, routing_key: str,
        expiration: int | None = None,
    ) -> None:
        await self.broker.publish(
            raw.body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            persist=True,
            # A message that has no id would get a random one from the AMQP client (aiormq makes
            # one up for every publish without); the one it is parked under must be the one the
            # operator API names it by (a digest of its body).
            message_id=message_name(raw.message_id, raw.headers, raw.body),
            correlation_id=raw.correlation_id,
            message_type=raw.type,
            content_type=raw.content_type,
            expiration=expiration,
        )

    def middleware(self) -> Any:
        """The FastStream broker middleware every delivery passes: trace, count, retry or park."""
        policy = self

        class DeliveryScope(BaseMiddleware):
            async def on_receive(self) -> None:
                raw: IncomingMessage = self.msg  # type: ignore[assignment]
                self.unit = units.begin()  # what the handler writes wakes the relay after it
                # Which of the service's queues it came from, told by its routing key (the
                # broker does not say); the subscriber FastStream keeps in its context is private.
                self.queue = policy.queue_of(raw.routing_key or "")
                self.event_type = str((raw.headers or {}).get("ce-type") or raw.routing_key)
                try:
                    meta = EventMeta.from_headers(raw.headers or {}, raw.message_id,
                                                  consumer=policy.service, body=raw.body)
                except ValueError as exc:
                    _delivery.set(exc)
                else:
                    _delivery.set(meta)
                    logs.event_id_var.set(str(meta.id))
                    logs.order_id_var.set(order_of(meta))
                # Open until after_processed, so the retry-or-park below is in the span too.
                self.scope = ExitStack()
                self.span = self.scope.enter_context(telemetry.consuming(raw, self.queue))

            async def after_processed(
                self,
                exc_type: type[BaseException] | None = None,
                exc_val: BaseException | None = None,
                exc_tb: TracebackType | None = None,
            ) -> bool | None:
                try:
                    with self.scope:  # ends the span (marked as an error if rerouting fails)
                        return await self.settle(exc_val)
                finally:
                    self.unit.end()  # the handler's transactions are over: wake the relay

            async def settle(self, exc: BaseException | None) -> bool:
                if exc is None:
                    exc = await self.consumed()
                if exc is None:
                    metrics.EVENTS_CONSUMED.labels(self.event_type).inc()
                    return False
                if not isinstance(exc, Exception) or isinstance(exc, HandlerException):
                    return False  # cancelled, or an explicit ack/nack/reject: let it be
                telemetry.mark_failed(self.span, exc)
                raw: IncomingMessage = self.msg  # type: ignore[assignment]
                outcome = await policy.reroute(raw, self.queue, exc)
                self.span.set_attribute("saga.outcome", outcome)
                metrics.EVENTS_FAILED.labels(self.event_type, outcome).inc()
                return True  # handled: the original delivery is acked

            async def consumed(self) -> Exception | None:
                meta = _delivery.get()
                if policy.on_consumed is None or not isinstance(meta, EventMeta):
                    return None
                try:
                    await policy.on_consumed(meta)
                except Exception as exc:
                    return exc
                return None

        return DeliveryScope

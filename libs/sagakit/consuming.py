"""The one consume path: decide, for a delivery whose handler failed, to retry it later or park it.

A handler either returns (its effect is committed: the delivery is acked), or raises:

- :class:`RetryLater`: the event came before its precondition (out of order) -> retried later;
- any other error is taken as transient (database or broker hiccup) -> retried later;
- an undecodable body, a body that fails its schema, or an unknown event type is poison ->
  parked at once, so it never loops and never blocks the queue.

"Later" is a broker-side delay (see :mod:`sagakit.topology`) that grows with each attempt; after
the last one the message is parked in the service's dead-letter queue with the reason, the
attempt count and its original headers. The copy is published with a publisher confirm before
the original is acked, so a crash in between means a redelivery (which the inbox absorbs),
never a loss.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aio_pika import IncomingMessage
from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, SubscriberNotFound
from faststream.rabbit import RabbitBroker
from pydantic import ValidationError

from sagakit import topology

log = logging.getLogger("sagakit.consuming")


class RetryLater(Exception):
    """The event cannot be applied yet (its precondition is not met); try again later."""


class Poison(Exception):
    """The event can never be applied; park it for an operator."""


POISON = (ValidationError, json.JSONDecodeError, UnicodeDecodeError, SubscriberNotFound, Poison)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


class RetryPolicy:
    """Where a failed delivery goes next. One instance per service, shared by its subscribers."""

    def __init__(self, broker: RabbitBroker, service: str, delays_ms: Sequence[int]) -> None:
        self.broker = broker
        self.service = service
        self.delays_ms = tuple(delays_ms)

    @property
    def max_attempts(self) -> int:
        return len(self.delays_ms) + 1

    async def reroute(self, raw: IncomingMessage, queue: str, exc: BaseException) -> None:
        headers: dict[str, Any] = dict(raw.headers or {})
        attempt = int(headers.get("x-attempt", 1))
        reason = describe(exc)
        if isinstance(exc, POISON) or attempt >= self.max_attempts:
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
            await self._publish(raw, headers, topology.DEAD_LETTERS, self.service)
            return
        delay = self.delays_ms[attempt - 1]
        headers.update(
            {
                "x-attempt": attempt + 1,
                "retry-delay-ms": str(delay),
                "x-last-error": reason,
                "x-original-queue": queue,
            }
        )
        log.warning(
            "retrying %s in %d ms (attempt %d of %d): %s",
            raw.message_id, delay, attempt + 1, self.max_attempts, reason,
            extra={"event_id": raw.message_id, "queue": queue},
        )
        await self._publish(raw, headers, topology.RETRY, queue)

    async def _publish(
        self, raw: IncomingMessage, headers: dict[str, Any], exchange: Any, routing_key: str
    ) -> None:
        await self.broker.publish(
            raw.body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            persist=True,
            message_id=raw.message_id,
            correlation_id=raw.correlation_id,
            message_type=raw.type,
            content_type=raw.content_type,
        )

    def middleware(self) -> Any:
        """The FastStream broker middleware that applies this policy."""
        policy = self

        class ParkOrRetry(BaseMiddleware):
            async def after_processed(
                self,
                exc_type: type[BaseException] | None = None,
                exc_val: BaseException | None = None,
                exc_tb: TracebackType | None = None,
            ) -> bool | None:
                if exc_val is None or not isinstance(exc_val, Exception):
                    return False
                if isinstance(exc_val, HandlerException):
                    return False  # an explicit ack/nack/reject from the handler: let it be
                subscriber = self.context.get_local("handler_")
                raw: IncomingMessage = self.msg  # type: ignore[assignment]
                await policy.reroute(raw, subscriber.queue.name, exc_val)
                return True  # handled: the original delivery is acked

        return ParkOrRetry

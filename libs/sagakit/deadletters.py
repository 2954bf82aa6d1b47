"""The operator's view of parked messages: list, replay and discard a service's dead letters.

Mounted by every service at ``/api/v1/ops/<service>/dead-letters`` (and, by the order service,
``/api/v1/ops/unrouted`` for what no queue was bound for). Each request opens its own AMQP
connection and reads the queue with ``basic.get`` *without* acking: every message it looked at
stays unacknowledged, so it cannot be lost, and goes back to the queue when the channel closes —
after the answer, or when the process dies mid-request. Nothing is copied anywhere to be listed.

A replay republishes the parked body and its original headers (minus what the retry path
added, so the attempt count starts again) to the original consumer queue through
``saga.requeue``, waits for the broker's confirm, and only then acks the parked copy. A crash
in between leaves both copies; the consumer's inbox makes the second one harmless, so a replay
is exactly once in effect. Replaying all touches only the messages parked when it began, so a
message that fails again and is re-parked is not replayed in a loop.

What was published with no queue bound for it (``saga.unrouted``, the alternate exchange of
``saga.events``: a consumer not deployed yet, a binding removed) is read, replayed and discarded
the same way. Its replay publishes the event again to ``saga.events`` with its routing key, so a
queue bound since takes it; with none bound yet it lands in ``saga.unrouted`` again, as a
replayed dead letter that fails again is parked again.

Replays and discards are operator actions: each is recorded in the service's operator audit
(:mod:`sagakit.audit`) with who asked and how it ended.

Retention: a message the consumer parks expires after ``DEAD_LETTER_RETENTION_DAYS`` (its
per-message expiry), but RabbitMQ drops an expired message only once it reaches the head of
the queue, and one the broker parks by itself (past the delivery limit) has no expiry at all.
So each service also sweeps its dead-letter queue every hour (sagakit.runtime.Messaging) and
discards what was parked longer ago than the retention (:meth:`ParkedQueue.forget_older_than`),
telling the time from the headers (:func:`parked_at`).

Requests on one queue take turns (from any replica: the lock is an exclusive queue, which the
broker keeps): a request holds what it read until it ends, so two at once would each miss what
the other holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import AMQPError, DeliveryError
from aiormq.exceptions import ChannelLockedResource
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from sagakit import topology
from sagakit.audit import Audit
from sagakit.auth import allow
from sagakit.envelope import jsonable, message_name
from sagakit.errors import ApiError
from sagakit.web import JsonRoute

# Headers the retry and park path (and the broker's own dead-lettering) add; a replay drops
# them so the message starts its attempts afresh, as if just published.
_ADDED_ON_THE_WAY = ("x-dead-letter-reason", "x-attempts", "x-attempt", "x-failures",
                     "x-parked-at",
                     "x-original-queue", "x-last-error", "retry-delay-ms", "x-death",
                     "x-delivery-count", "x-first-death-exchange", "x-first-death-queue",
                     "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                     "x-last-death-reason")
MAX_SCAN = 10_000  # messages one request reads at most
# How long a request waits for its turn on a queue (ParkedQueue._take_turn).
TURN_WAIT_SECONDS = 10.0


class ParkedMessage(BaseModel):
    id: str = Field(description="the event id (ce-id / message id); a digest of the body when "
                                "a message has none")
    event_type: str | None
    order_id: str | None
    reason: str | None = Field(description="why it was parked (x-dead-letter-reason)")
    attempts: int | None
    original_queue: str | None
    parked_at: str | None
    routing_key: str | None
    headers: dict[str, Any]
    body: str = Field(description="the body as text (undecodable bytes replaced)")
    body_base64: str


class ParkedList(BaseModel):
    queue: str
    total: int = Field(description="messages in the queue when it was read")
    messages: list[ParkedMessage]


class ReplayOutcome(BaseModel):
    replayed: list[str]
    skipped: list[str] = Field(default_factory=list,
                               description="left parked: no known original queue, or one that "
                                           "no longer takes replays")


class DiscardOutcome(BaseModel):
    discarded: str


def message_id(message: AbstractIncomingMessage) -> str:
    return message_name(message.message_id, message.headers, message.body)


def parked_at(message: AbstractIncomingMessage) -> datetime | None:
    """When ``message`` was parked: ``x-parked-at``, which the consumer writes when it parks
    one, or the latest ``x-death`` the broker wrote when it dead-lettered one by itself (past
    the delivery limit), which has no other mark of its time; None if neither says."""
    headers = message.headers or {}
    stamp = headers.get("x-parked-at")
    if isinstance(stamp, bytes):
        stamp = stamp.decode(errors="replace")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            return _aware(datetime.fromisoformat(stamp))
    deaths = headers.get("x-death")
    times: list[datetime] = []
    for death in deaths if isinstance(deaths, list) else []:
        at = death.get("time") if isinstance(death, dict) else None
        if isinstance(at, datetime):
            times.append(_aware(at))
    return max(times, default=None)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def original_queue(message: AbstractIncomingMessage) -> str | None:
    """Where the message was consumed from: our own header, else the broker's dead-lettering's
    (a message the broker parked itself after ``x-delivery-limit``)."""
    headers = message.headers or {}
    found = headers.get("x-original-queue") or headers.get("x-first-death-queue")
    return str(jsonable(found)) if found else None


def describe(message: AbstractIncomingMessage) -> ParkedMessage:
    headers = jsonable(dict(message.headers or {}))
    attempts = headers.get("x-attempts")
    return ParkedMessage(
        id=message_id(message),
        event_type=headers.get("ce-type") or message.type,
        # The event's subject only: a foreign message's correlation id (FastStream makes one up
        # for each publish) would pass for an order.
        order_id=headers.get("ce-subject"),
        reason=headers.get("x-dead-letter-reason") or headers.get("x-first-death-reason"),
        attempts=int(attempts) if isinstance(attempts, int | str) and str(attempts).isdigit()
        else None,
        original_queue=original_queue(message),
        parked_at=at.isoformat() if (at := parked_at(message)) else None,  # the broker's too
        routing_key=message.routing_key,
        headers=headers,
        body=message.body.decode(errors="replace"),
        body_base64=base64.b64encode(message.body).decode(),
    )


def replay_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = dict(message.headers or {})
    for name in _ADDED_ON_THE_WAY:
        headers.pop(name, None)
    return headers


# Where a replay sends a message: an exchange and a routing key, or None (it stays parked).
Route = Callable[[AbstractIncomingMessage], "tuple[str, str] | None"]


def to_original_queue(message: AbstractIncomingMessage) -> tuple[str, str] | None:
    """A dead letter goes back to the one queue it was consumed from, through saga.requeue (to
    ``saga.events`` it would reach every other consumer of its type again)."""
    queue = original_queue(message)
    return (topology.REQUEUE.name, queue) if queue else None


def to_where_it_was_sent(message: AbstractIncomingMessage) -> tuple[str, str] | None:
    """An unrouted message goes where it was published: an event to ``saga.events`` with its
    routing key; a retry that found no queue (its queue was deleted) to that queue directly."""
    if message.exchange == topology.EVENTS.name and message.routing_key:
        return topology.EVENTS.name, message.routing_key
    return to_original_queue(message)


class ParkedQueue:
    """One queue of parked messages, read and changed through a connection of its own."""

    def __init__(self, rabbitmq_url: str, queue: str, route: Route = to_original_queue) -> None:
        self.rabbitmq_url = rabbitmq_url
        self.queue = queue
        self.route = route

    @contextlib.asynccontextmanager
    async def _channel(self) -> AsyncIterator[AbstractChannel]:
        try:
            connection = await aio_pika.connect(self.rabbitmq_url, timeout=5)
        except (AMQPError, OSError, ConnectionError) as exc:
            raise ApiError(503, "Broker unavailable", f"cannot reach RabbitMQ: {exc}") from exc
        try:
            # Closing the connection returns every message read but not acked to the queue,
            # and deletes the lock below.
            async with connection:
                await self._take_turn(connection)
                yield await connection.channel(publisher_confirms=True, on_return_raises=True)
        except (AMQPError, ConnectionError) as exc:
            raise ApiError(503, "Broker unavailable", f"RabbitMQ failed: {exc}") from exc

    async def _take_turn(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """Wait until no other request, of any replica, works on this queue.

        A request holds every message it read until it ends, and another request at the same
        moment would not see them (a replay or discard of one of them would answer 404, a
        listing would miss them). So requests take turns, with a lock the broker keeps: an
        exclusive queue, which only one connection at a time may declare and which the broker
        deletes with that connection, however the request ends (the process killed too).
        """
        deadline = asyncio.get_running_loop().time() + TURN_WAIT_SECONDS
        while True:
            channel = await connection.channel()
            try:
                await channel.declare_queue(f"{self.queue}.operator-turn", exclusive=True,
                                            auto_delete=True)
                return
            except ChannelLockedResource:  # another request's turn; this channel is closed
                if asyncio.get_running_loop().time() > deadline:
                    raise ApiError(503, "Busy", f"another operator request is working on "
                                   f"{self.queue}; retry shortly",
                                   headers={"Retry-After": "1"}) from None
                await asyncio.sleep(random.uniform(0.02, 0.1))

    async def _read(self, channel: AbstractChannel,
                    limit: int) -> tuple[int, list[AbstractIncomingMessage]]:
        queue: AbstractQueue = await channel.declare_queue(self.queue, passive=True)
        total = queue.declaration_result.message_count or 0
        held: list[AbstractIncomingMessage] = []
        while len(held) < min(limit, total, MAX_SCAN):
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            held.append(message)
        return total, held

    async def list(self, limit: int) -> ParkedList:
        async with self._channel() as channel:
            total, held = await self._read(channel, limit)
            return ParkedList(queue=self.queue, total=total, messages=[describe(m) for m in held])

    async def _holding(self, channel: AbstractChannel,
                       event_id: str | None) -> Sequence[AbstractIncomingMessage]:
        """Every parked message now held on ``channel`` (all of them, or the one ``event_id``)."""
        _, held = await self._read(channel, MAX_SCAN)
        return [m for m in held if event_id is None or message_id(m) == event_id]

    async def replay(self, event_id: str | None) -> ReplayOutcome:
        """Replay one message (by id) or, with ``event_id`` None, all parked right now."""
        outcome = ReplayOutcome(replayed=[])
        async with self._channel() as channel:
            chosen = await self._holding(channel, event_id)
            if event_id is not None and not chosen:
                raise _not_parked(event_id)
            exchanges: dict[str, AbstractExchange] = {}
            for message in chosen[:1] if event_id is not None else chosen:
                route = self.route(message)
                if route is None:
                    outcome.skipped.append(message_id(message))
                    continue
                name, target = route
                if name not in exchanges:
                    exchanges[name] = await channel.get_exchange(name, ensure=True)
                try:
                    await exchanges[name].publish(_replayed(message), routing_key=target,
                                                  mandatory=True)
                except DeliveryError as exc:  # returned: no such queue bound any more
                    if event_id is None:  # replaying all: leave it parked, go on with the rest
                        outcome.skipped.append(message_id(message))
                        continue
                    raise ApiError(409, "Cannot replay", f"queue {target!r} does not take "
                                   f"replays ({exc}); nothing was changed") from exc
                await message.ack()  # only once the republished copy is confirmed
                outcome.replayed.append(message_id(message))
        if event_id is not None and outcome.skipped:
            raise ApiError(409, "Cannot replay", f"{event_id} names no queue to go back to")
        return outcome

    async def forget_older_than(self, seconds: float) -> int:
        """Retention: discard what was parked more than ``seconds`` ago (see :func:`parked_at`);
        returns how many. A message whose parking time cannot be told is kept."""
        now = datetime.now(UTC)
        gone = 0
        async with self._channel() as channel:
            for message in await self._holding(channel, None):
                at = parked_at(message)
                if at is not None and (now - at).total_seconds() > seconds:
                    await message.ack()
                    gone += 1
        return gone

    async def discard(self, event_id: str) -> DiscardOutcome:
        async with self._channel() as channel:
            for message in await self._holding(channel, event_id):
                await message.ack()
                return DiscardOutcome(discarded=event_id)
        raise _not_parked(event_id)


def _replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    # The id it is parked under (message_name), also for a message that came without one: the
    # AMQP client would make one up, and parked again it would show under a new name.
    return aio_pika.Message(
        message.body, headers=replay_headers(message), message_id=message_id(message),
        correlation_id=message.correlation_id, type=message.type,
        content_type=message.content_type, app_id=message.app_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _not_parked(event_id: str) -> ApiError:
    return ApiError(404, "Not parked", f"no parked message with id {event_id}", field="event_id")


Limit = Annotated[int, Query(ge=1, le=1000, description="messages to show at most")]


# Operators only, reads included: parked bodies hold personal data (names, emails), and a replay
# re-runs a saga step.
OPS = allow("ops")


def dead_letters_router(service: str, rabbitmq_url: str) -> APIRouter:
    """``/api/v1/ops/<service>/dead-letters``: list, replay one or all, discard one."""
    parked = ParkedQueue(rabbitmq_url, topology.dead_letter_queue(service).name)
    return _parked_router(
        f"/api/v1/ops/{service}/dead-letters", parked, "dead_letter",
        listed="Parked messages, oldest first",
        replayed_all="Replay every message parked now to its original queue",
        replayed_one="Replay one parked message to its original queue",
        gone="Its original queue is unknown or gone")


def unrouted_router(rabbitmq_url: str) -> APIRouter:
    """``/api/v1/ops/unrouted``: what was published with no queue bound for it (saga.unrouted);
    list, replay one or all where it was sent, discard one."""
    unrouted = ParkedQueue(rabbitmq_url, topology.UNROUTED_QUEUE.name, route=to_where_it_was_sent)
    return _parked_router(
        "/api/v1/ops/unrouted", unrouted, "unrouted",
        listed="Messages no queue was bound for (saga.unrouted), oldest first",
        replayed_all="Publish every message kept now again where it was sent (a queue bound "
                     "since takes it; with none, it is kept here again)",
        replayed_one="Publish one kept message again where it was sent",
        gone="It was not sent to saga.events, and names no queue to go back to")


def _parked_router(prefix: str, parked: ParkedQueue, action: str, *, listed: str,
                   replayed_all: str, replayed_one: str, gone: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["operations"], route_class=JsonRoute)

    @router.get("", response_model=ParkedList, summary=listed, **OPS)
    async def list_parked(limit: Limit = 100) -> ParkedList:
        return await parked.list(limit)

    @router.post("/replay", response_model=ReplayOutcome, summary=replayed_all, **OPS)
    async def replay_all(audit: Audit) -> ReplayOutcome:
        async with audit.action(f"{action}.replay_all", target=parked.queue) as noted:
            outcome = await parked.replay(None)
            noted.update(outcome.model_dump())
        return outcome

    @router.post("/{event_id}/replay", response_model=ReplayOutcome, summary=replayed_one,
                 responses={404: {"description": "No such message"}, 409: {"description": gone}},
                 **OPS)
    async def replay_one(event_id: str, audit: Audit) -> ReplayOutcome:
        async with audit.action(f"{action}.replay", target=event_id,
                                detail={"queue": parked.queue}):
            return await parked.replay(event_id)

    @router.delete("/{event_id}", response_model=DiscardOutcome,
                   summary="Discard one message for good",
                   responses={404: {"description": "No such message"}}, **OPS)
    async def discard(event_id: str, audit: Audit) -> DiscardOutcome:
        async with audit.action(f"{action}.discard", target=event_id,
                                detail={"queue": parked.queue}):
            return await parked.discard(event_id)

    return router

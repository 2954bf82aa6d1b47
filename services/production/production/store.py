"""Redis for the production service: stock, tickets, the kitchen's work queue, outbox and inbox.

Each method is one round trip: a Lua script for a change that announces an event (atomic with
its outbox entry and inbox mark), a plain command or a pipeline otherwise. The keys and the
scripts are in :mod:`production.layout`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import orjson
from redis.asyncio import Redis

from production.domain import Ticket, TicketLine, TicketStatus
from production.layout import (
    COOKS,
    KITCHEN,
    OUTBOX,
    PAUSED,
    STOCK,
    TICKETS,
    inbox_key,
    millis,
    order_ticket_key,
    outbox_fields,
    script,
    status_key,
    ticket_key,
    tombstone_key,
)
from sagakit.envelope import OutgoingEvent
from sagakit.streams import ensure_group


@dataclass(frozen=True)
class Reservation:
    outcome: Literal["queued", "duplicate", "cancelled", "exists", "short"]
    ticket_id: UUID | None = None
    # For "short": units available per requested SKU, None for a SKU not stocked at all.
    levels: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class KitchenEntry:
    entry_id: str
    ticket_id: UUID | None  # None: an entry that is not a ticket we know (dropped)
    # The ticket's order and trace context, written with the entry by reserve.lua.
    order_id: UUID | None = None
    traceparent: str | None = None


class ProductionStore:
    def __init__(self, redis: Redis, *, inbox_ttl_seconds: int) -> None:
        self.redis = redis
        self.inbox_ttl = inbox_ttl_seconds
        self._reserve = script(redis, "reserve")
        self._record_failure = script(redis, "record_failure")
        self._start = script(redis, "start")
        self._finish = script(redis, "finish")
        self._start_finish = script(redis, "start_finish", "start", "finish")
        self._cancel = script(redis, "cancel")
        self._request_cancel = script(redis, "request_cancel")
        self._restock = script(redis, "restock")
        self._answer = script(redis, "answer")

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # --- stock ------------------------------------------------------------------------------

    async def seed_stock(self, stock: Mapping[str, int]) -> list[str]:
        """Stock SKUs not known yet (HSETNX: a restart never resets counts); returns them."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for sku, units in stock.items():
                pipe.hsetnx(STOCK, sku, units)
            added = await pipe.execute()
        return [sku for sku, new in zip(stock, added, strict=True) if new]

    async def stock_levels(self) -> dict[str, int]:
        levels = await self.redis.hgetall(STOCK)
        return {str(sku): int(units) for sku, units in levels.items()}

    async def stock_of(self, sku: str) -> int | None:
        units = await self.redis.hget(STOCK, sku)
        return None if units is None else int(units)

    async def restock(self, sku: str, available: int) -> bool:
        """Set a stocked SKU's count; False when the SKU is not stocked."""
        return bool(await self._restock(keys=[STOCK], args=[sku, available]))

    # --- consumed events -----------------------------------------------------------------------

    async def reserve(
        self, *, event_id: UUID, order_id: UUID, ticket_id: UUID, lines: Iterable[TicketLine],
        needed: Mapping[str, int], announcement: OutgoingEvent, traceparent: str, at: datetime,
    ) -> Reservation:
        lines_json = orjson.dumps(
            [{"sku": x.sku, "name": x.name, "quantity": x.quantity} for x in lines]
        ).decode()
        pairs = [part for sku, units in needed.items() for part in (sku, units)]
        reply = await self._reserve(
            keys=[
                inbox_key(event_id), tombstone_key(order_id), order_ticket_key(order_id), STOCK,
                ticket_key(ticket_id), TICKETS, status_key(TicketStatus.QUEUED), KITCHEN, OUTBOX,
            ],
            args=[
                self.inbox_ttl, str(ticket_id), str(order_id), lines_json, at.isoformat(),
                millis(at), traceparent, len(needed), *pairs, *outbox_fields(announcement),
            ],
        )
        outcome = reply[0]
        if outcome == "short":
            raw = reply[1:]
            levels = {
                str(raw[i]): (None if int(raw[i + 1]) < 0 else int(raw[i + 1]))
                for i in range(0, len(raw), 2)
            }
            return Reservation("short", levels=levels)
        return Reservation(outcome, UUID(reply[1]) if len(reply) > 1 else None)

    async def record_failure(
        self, *, event_id: UUID, order_id: UUID, announcement: OutgoingEvent
    ) -> str:
        outcome: str = await self._record_failure(
            keys=[inbox_key(event_id), tombstone_key(order_id), order_ticket_key(order_id), OUTBOX],
            args=[self.inbox_ttl, *outbox_fields(announcement)],
        )
        return outcome

    async def cancel(self, *, event_id: UUID, order_id: UUID, at: datetime) -> str:
        outcome: str = await self._cancel(
            keys=[
                inbox_key(event_id), tombstone_key(order_id), order_ticket_key(order_id), STOCK,
                status_key(TicketStatus.QUEUED), status_key(TicketStatus.IN_PROGRESS),
                status_key(TicketStatus.CANCELLED),
            ],
            args=[self.inbox_ttl, at.isoformat()],
        )
        return outcome

    async def ticket_of(self, order_id: UUID) -> UUID | None:
        raw = await self.redis.get(order_ticket_key(order_id))
        return UUID(str(raw)) if raw else None

    async def request_cancel(
        self, *, event_id: UUID, order_id: UUID, ticket_id: UUID | None, at: datetime,
        accepted: OutgoingEvent, refused: OutgoingEvent,
    ) -> str:
        """request_cancel.lua: its outcome, or ``"moved"`` (nothing done) if the order's ticket
        is no longer ``ticket_id``, the one the answers name."""
        accepted_fields = outbox_fields(accepted)
        outcome: str = await self._request_cancel(
            keys=[
                inbox_key(event_id), tombstone_key(order_id), order_ticket_key(order_id), STOCK,
                status_key(TicketStatus.QUEUED), status_key(TicketStatus.CANCELLED), OUTBOX,
            ],
            args=[self.inbox_ttl, at.isoformat(), str(ticket_id or ""), len(accepted_fields),
                  *accepted_fields, *outbox_fields(refused)],
        )
        return outcome

    async def answer_once(self, event_id: UUID, announcement: OutgoingEvent) -> str:
        """Announce ``announcement`` in answer to the consumed event ``event_id``, once."""
        outcome: str = await self._answer(keys=[inbox_key(event_id), OUTBOX],
                                          args=[self.inbox_ttl, *outbox_fields(announcement)])
        return outcome

    # --- the kitchen's steps -------------------------------------------------------------------

    async def start(self, ticket_id: UUID, announcement: OutgoingEvent, at: datetime) -> str:
        outcome: str = await self._start(*_start_step(ticket_id, announcement, at))
        return outcome

    async def finish(
        self, entry: KitchenEntry, ticket_id: UUID, announcement: OutgoingEvent, at: datetime
    ) -> str:
        """Hand the ticket over; its kitchen entry is done with in the same step."""
        outcome: str = await self._finish(*_finish_step(entry, ticket_id, announcement, at))
        return outcome

    async def start_and_finish(
        self, entry: KitchenEntry, ticket_id: UUID, started: OutgoingEvent,
        finished: OutgoingEvent, at: datetime,
    ) -> str:
        """:meth:`start` then, if it started or resumed the ticket, :meth:`finish`, in one step:
        "finished", else what start said ("paused", "skip")."""
        start_keys, start_args = _start_step(ticket_id, started, at)
        finish_keys, finish_args = _finish_step(entry, ticket_id, finished, at)
        outcome: str = await self._start_finish(
            keys=[*start_keys, *finish_keys], args=[len(start_args), *start_args, *finish_args],
        )
        return outcome

    # --- the kitchen's work queue --------------------------------------------------------------

    async def ensure_kitchen_group(self) -> None:
        await ensure_group(self.redis, KITCHEN, COOKS)

    async def next_ticket(self, cook: str, block_ms: int) -> KitchenEntry | None:
        # (redis-py's legacy reply shape, which it keeps on RESP3: [[stream, entries]])
        reply: Any = await self.redis.xreadgroup(COOKS, cook, {KITCHEN: ">"}, count=1,
                                                 block=block_ms)
        entries = reply[0][1] if reply else []
        return _entry(*entries[0]) if entries else None

    async def reclaim_ticket(self, cook: str, min_idle_ms: int) -> KitchenEntry | None:
        """Take over the oldest ticket another cook has held for ``min_idle_ms`` unfinished."""
        _, claimed, *_ = await self.redis.xautoclaim(KITCHEN, COOKS, cook, min_idle_ms, "0-0",
                                                     count=1)
        return _entry(*claimed[0]) if claimed else None

    async def keep(self, cook: str, entry: KitchenEntry) -> None:
        """Tell the group ``cook`` still has the entry (resets its idle time: not reclaimed)."""
        await self.redis.xclaim(KITCHEN, COOKS, cook, 0, [entry.entry_id], justid=True)

    async def done_with(self, entry: KitchenEntry) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(KITCHEN, COOKS, entry.entry_id)
            pipe.xdel(KITCHEN, entry.entry_id)
            await pipe.execute()

    async def retire_cook(self, cook: str) -> None:
        """Forget a stopped cook, unless it left a ticket behind for another cook to reclaim."""
        pending = await self.redis.xpending_range(KITCHEN, COOKS, "-", "+", 1, consumername=cook)
        if not pending:
            await self.redis.xgroup_delconsumer(KITCHEN, COOKS, cook)

    async def line_paused(self) -> bool:
        return bool(await self.redis.exists(PAUSED))

    async def pause_line(self, paused: bool) -> None:
        if paused:
            await self.redis.set(PAUSED, "1")
        else:
            await self.redis.delete(PAUSED)

    # --- the kitchen view ------------------------------------------------------------------------

    async def tickets(self, status: TicketStatus | None, limit: int) -> list[Ticket]:
        """Newest first."""
        key = TICKETS if status is None else status_key(status)
        ids: Any = await self.redis.zrevrange(key, 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for ticket_id in ids:
                pipe.hgetall(ticket_key(ticket_id))
            rows = await pipe.execute()
        return [_parse_ticket(row) for row in rows if row]

    async def ticket(self, ticket_id: UUID) -> Ticket | None:
        row: Any = await self.redis.hgetall(ticket_key(ticket_id))
        return _parse_ticket(row) if row else None


def _start_step(
    ticket_id: UUID, announcement: OutgoingEvent, at: datetime
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of start.lua."""
    return (
        [ticket_key(ticket_id), status_key(TicketStatus.QUEUED),
         status_key(TicketStatus.IN_PROGRESS), OUTBOX, PAUSED],
        [str(ticket_id), at.isoformat(), *outbox_fields(announcement)],
    )


def _finish_step(
    entry: KitchenEntry, ticket_id: UUID, announcement: OutgoingEvent, at: datetime
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of finish.lua."""
    return (
        [ticket_key(ticket_id), status_key(TicketStatus.IN_PROGRESS), status_key(TicketStatus.DONE),
         OUTBOX, KITCHEN],
        [str(ticket_id), at.isoformat(), COOKS, entry.entry_id, *outbox_fields(announcement)],
    )


def _entry(entry_id: str, fields: dict[str, str] | None) -> KitchenEntry:
    fields = fields or {}
    try:
        ticket_id, order_id = UUID(fields["ticket_id"]), UUID(fields["order_id"])
    except (KeyError, ValueError):
        return KitchenEntry(entry_id, None)  # not an entry reserve.lua wrote: dropped
    return KitchenEntry(entry_id, ticket_id, order_id, fields.get("traceparent"))


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _parse_ticket(row: dict[str, Any]) -> Ticket:
    return Ticket(
        id=UUID(row["id"]),
        order_id=UUID(row["order_id"]),
        status=TicketStatus(row["status"]),
        lines=tuple(
            TicketLine(x["sku"], x["name"], int(x["quantity"])) for x in orjson.loads(row["lines"])
        ),
        created_at=datetime.fromisoformat(row["created_at"]),
        started_at=_time(row.get("started_at")),
        finished_at=_time(row.get("finished_at")),
        cancelled_at=_time(row.get("cancelled_at")),
    )

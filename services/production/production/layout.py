"""The kitchen's Redis layout: every key the store and its Lua scripts use, and the scripts.

Every change that announces an event is one Lua script (the ``*.lua`` files next to this
module) that also appends the event to the ``outbox`` stream and, for a consumed event, marks
its id in the inbox. Keys::

    stock                     hash   sku -> units available
    ticket:<ticket id>        hash   id, order_id, status, lines (JSON), created_at, started_at,
                                     finished_at, cancelled_at, traceparent
    order-ticket:<order id>   string the order's ticket id
    tickets, tickets:<status> zsets  ticket ids scored by creation time (ms), for the queue view
    kitchen                   stream tickets for the cooks (consumer group ``cooks``): ticket_id,
                                     order_id, traceparent
    kitchen:paused            string present while the kitchen manager holds the line
    outbox                    stream events to publish (sagakit.outbox.RedisStreamOutboxRelay)
    inbox:<event id>          string a consumed event (expires after the inbox TTL)
    cancelled:<order id>      string tombstone of a cancelled order (same TTL)

The scripts address a few keys they derive (``ticket:<id>`` in cancel.lua and
request_cancel.lua), so the store needs one Redis, not a cluster.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from uuid import UUID

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from production.domain import TicketStatus
from sagakit.envelope import OutgoingEvent

STOCK = "stock"
TICKETS = "tickets"
KITCHEN = "kitchen"
COOKS = "cooks"
PAUSED = "kitchen:paused"
OUTBOX = "outbox"


def ticket_key(ticket_id: UUID | str) -> str:
    return f"ticket:{ticket_id}"


def status_key(status: TicketStatus) -> str:
    return f"{TICKETS}:{status}"


def inbox_key(event_id: UUID) -> str:
    return f"inbox:{event_id}"


def tombstone_key(order_id: UUID) -> str:
    return f"cancelled:{order_id}"


def order_ticket_key(order_id: UUID) -> str:
    return f"order-ticket:{order_id}"


def outbox_fields(event: OutgoingEvent) -> list[str]:
    return [part for item in event.to_record().items() for part in item]


def _lua(name: str) -> str:
    return Path(__file__).with_name(f"{name}.lua").read_text()


def script(redis: Redis, name: str, *parts: str) -> AsyncScript:
    """The script ``name``; each ``--[[ <part>.lua ]]`` line in it replaced by that script."""
    text = _lua(name)
    for part in parts:
        text = text.replace(f"--[[ {part}.lua ]]", _lua(part))
    # EVALSHA, loading the script again when Redis lost it (a restart): see AsyncScript.
    return redis.register_script(text)


def millis(at: datetime) -> int:
    return int(at.timestamp() * 1000)

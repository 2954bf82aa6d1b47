"""Units of work, so that a relay is woken by the work that wrote its events, once it committed.

A unit of work is one delivery (the delivery middleware, sagakit.consuming), one HTTP request
(sagakit.web.RequestContext) or one run of a sweeper (sagakit.runtime.every). Code that puts
events in a PostgreSQL outbox says so (:func:`events_written`, called by
``sagakit.postgres.outbox_columns`` and ``add_to_outbox``, the only ways to write one), and
when the unit ends, its transactions committed, every outbox relay of this process is woken.

Why not LISTEN/NOTIFY, as before: at commit a NOTIFY takes a lock shared by the whole server to
append to PostgreSQL's notification queue, so notifying commits queue behind one another, and it
cost 70-120 µs of CPU per transaction here (docs/performance.md, "Round five"), for a wake-up the
writing process can give its own relay for nothing. Any relay may publish any row (they take
batches with SKIP LOCKED), so waking the writer's own is enough; what no unit of work wrote
(another replica that died before its relay ran, an operator's SQL) is taken by a relay's sweep,
at most ``sweep_seconds`` later, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Unit:
    """What one unit of work did that someone acts on once it ends."""

    __slots__ = ("wrote_events",)

    def __init__(self) -> None:
        self.wrote_events = False

    def end(self) -> None:
        """The unit is over (its transactions are committed or rolled back): wake the relays
        if it wrote events. A rolled-back write costs one empty look, nothing else."""
        if self.wrote_events:
            self.wrote_events = False
            wake_relays()


_unit: ContextVar[Unit | None] = ContextVar("sagakit_unit", default=None)
# The wake-up events of this process's PostgreSQL outbox relays (sagakit.outbox).
_relays: set[asyncio.Event] = set()


def begin() -> Unit:
    """A unit of work starts in this context (a delivery, a request): call its ``end()``."""
    unit = Unit()
    _unit.set(unit)
    return unit


@contextmanager
def unit_of_work() -> Iterator[Unit]:
    """``begin()`` ... ``end()`` around a block, whatever way it ends."""
    unit = begin()
    try:
        yield unit
    finally:
        unit.end()


def events_written() -> None:
    """The current unit of work put events in an outbox (outside one, the sweep finds them)."""
    unit = _unit.get()
    if unit is not None:
        unit.wrote_events = True


def wake_relays() -> None:
    for wake in _relays:
        wake.set()


def register_relay(wake: asyncio.Event) -> None:
    _relays.add(wake)


def unregister_relay(wake: asyncio.Event) -> None:
    _relays.discard(wake)

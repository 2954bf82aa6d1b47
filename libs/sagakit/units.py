"""Units of work, so that a relay is woken by the work that wrote its events, once it committed.

A unit of work is one delivery (the delivery middleware, sagakit.consuming), one HTTP request
(sagakit.web.RequestContext) or one run of a sweeper (sagakit.runtime.every). Code that puts
events in a PostgreSQL outbox says so (:func:`written`, called by
``sagakit.postgres.outbox_columns`` and ``add_to_outbox``, the only ways to write one), and
when the unit ends, its transactions committed, every outbox relay of this process is woken.
Other rows a background worker picks up work the same way under a name of their own (the
order service's webhook deliveries wake its webhook sender).

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

# What a unit of work can have written for a background worker of its process to pick up: a
# PostgreSQL outbox's events (its relays, sagakit.outbox), or a service's own kind of row (the
# order service's webhook deliveries, for its sender).
OUTBOX = "outbox"


class Unit:
    """What one unit of work wrote that a worker picks up once the unit ends."""

    __slots__ = ("wrote",)

    def __init__(self) -> None:
        self.wrote: set[str] = set()

    def end(self) -> None:
        """The unit is over (its transactions are committed or rolled back): wake the workers
        of what it wrote. A rolled-back write costs one empty look, nothing else."""
        if self.wrote:
            for kind in self.wrote:
                wake(kind)
            self.wrote.clear()


_unit: ContextVar[Unit | None] = ContextVar("sagakit_unit", default=None)
# The wake-up events of this process's workers, by what they pick up.
_workers: dict[str, set[asyncio.Event]] = {}


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


def written(kind: str = OUTBOX) -> None:
    """The current unit of work wrote rows of ``kind`` (outside one, the sweeps find them)."""
    unit = _unit.get()
    if unit is not None:
        unit.wrote.add(kind)


def wake(kind: str = OUTBOX) -> None:
    """Wake this process's workers of ``kind`` now."""
    for event in _workers.get(kind, ()):
        event.set()


def register(event: asyncio.Event, kind: str = OUTBOX) -> None:
    """``event`` is set whenever a unit of work of this process that wrote ``kind`` ends."""
    _workers.setdefault(kind, set()).add(event)


def unregister(event: asyncio.Event, kind: str = OUTBOX) -> None:
    _workers.get(kind, set()).discard(event)

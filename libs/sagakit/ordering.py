"""Events that arrive before their predecessor: the one mechanism, in three layers.

1. :class:`InArrivalOrder`: inside one process, events of one key (an order) are applied one at
   a time, in the order the broker delivered them.
2. :class:`EarlyEvents` adds a brief in-process recheck: an event judged early (its handler
   raised :class:`sagakit.consuming.RetryLater`) usually finds its predecessor applied by
   another replica a few milliseconds later.
3. Past the rechecks the RetryLater goes to the broker's retry queues
   (:class:`sagakit.consuming.RetryPolicy`), the backstop that survives a restart.

On layer 1:

A service's consumer handles deliveries concurrently (up to the prefetch), so two events of one
order that arrive back to back (``production.queued`` then ``production.started``) would race:
the second often finds its predecessor not yet committed, and has to be retried. Holding a
per-order lock from the moment a delivery reaches its handler makes them apply in the order the
broker delivered them, while events of different orders still run side by side.

This is an optimisation, not the guarantee: replicas of a service do not share these locks, and
retries re-order events, so handlers still judge every event against the stored state (early,
stale or applicable) and write with optimistic concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

from sagakit.consuming import RetryLater

T = TypeVar("T")


class InArrivalOrder:
    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Wait for earlier holders of ``key`` (first come, first served), then hold it."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]  # no one else waits: keep the table small
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class EarlyEvents:
    """Apply events per key in arrival order, rechecking an early one briefly in-process
    before it goes to the broker's retry queues."""

    def __init__(self, rechecks: Sequence[float] = (0.005, 0.02, 0.05)) -> None:
        self.rechecks = tuple(rechecks)  # pauses, in seconds, before each recheck
        self.in_arrival_order = InArrivalOrder()

    async def apply(self, key: Hashable, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` holding ``key``; after a RetryLater, again after each pause (not
        holding the key: the predecessor may be queued behind it), then the RetryLater is
        raised for the broker to retry."""
        for pause in (*self.rechecks, None):
            try:
                async with self.in_arrival_order.hold(key):
                    return await attempt()
            except RetryLater:
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last pass returns or raises")

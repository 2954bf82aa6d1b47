"""One at a time per key, in arrival order, inside one process.

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
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


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

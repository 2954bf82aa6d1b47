"""The pause of a background loop after a failure: the one backoff every worker loop uses.

The outbox relays, the kitchen's cooks and the webhook sender run until stopped; when the
broker, the database or Redis is away, each keeps its work and tries again after 0.1 s, then
0.2, 0.4, ... up to 5 s, and starts again from 0.1 s after the first success. (Broker-level
retries of a delivery are another mechanism: sagakit.consuming.RetryPolicy.)
"""

from __future__ import annotations

import asyncio


class Backoff:
    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first  # the next pause, in seconds

    def reset(self) -> None:
        """After a success: the next failure pauses ``first`` again."""
        self.delay = self.first

    async def pause(self) -> None:
        """Sleep the current delay, then double it (at most ``cap``)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

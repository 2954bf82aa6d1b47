"""Admission control: refuse new work while the saga lags, instead of queueing it for minutes.

A saga accepted at once (202) and finished by events has no natural back-pressure: above its
capacity the service would accept every request and build a backlog in its outbox and in the
broker's queues that drains long after the callers gave up. The honest answer to a request the
system cannot finish soon is ``503 Service Unavailable`` with ``Retry-After``, before anything is
written, so the caller can come back (with the same ``Idempotency-Key``) and nothing half-done
exists.

What "lags" means is the service's to say (:class:`Admission` takes a ``measure``): the order
service counts the orders that wait to start (``pending_payment``, ``paid`` and ``received``:
in its outbox, in a queue, being handled, or waiting for a free cook), which grows whichever
hop falls behind, the kitchen's line included, and, unlike the consumer lag one replica sees,
is the same for every replica. Orders being cooked are not counted: they end within a
preparation time.

The measure is sampled in the background (every ``interval`` seconds, one cheap query), never
per request: the hot path reads a number. A failed sample keeps the last value, so a database
away for a moment neither opens nor closes the door by itself (the request would fail on the
database anyway).

The bound is a setting derived from measured capacity (docs/performance.md): about the work
the stack finishes in the wait a caller would accept.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from prometheus_client import Counter, Gauge

from sagakit import telemetry
from sagakit.errors import ApiError

log = logging.getLogger("sagakit.admission")

WAITING = Gauge("saga_admission_waiting", "The lag admission control compares with its bound")
MAX_RETRY_AFTER_SECONDS = 60
REFUSED = Counter("saga_admission_refused", "Requests refused with 503 because the saga lagged")


class Admission:
    """Admit a request while ``measure()`` (sampled) is at most ``bound``."""

    def __init__(self, measure: Callable[[], Awaitable[int]], *, bound: int,
                 retry_after_seconds: int, interval: float = 0.5, what: str = "work") -> None:
        self.measure, self.bound, self.interval, self.what = measure, bound, interval, what
        self.retry_after_seconds = retry_after_seconds
        self.waiting = 0

    async def sample(self) -> None:
        try:
            with telemetry.untraced():
                self.waiting = await self.measure()
        except Exception as exc:  # keep the last value; the next sample tries again
            log.debug("admission sample failed: %s", exc)
        WAITING.set(self.waiting)

    def check(self) -> None:
        """Raise a 503 (JSON, ``Retry-After``) when the last sample is past the bound."""
        if self.waiting <= self.bound:
            return
        REFUSED.inc()
        # Come back later the further past the bound it is: the configured wait scaled by
        # waiting / bound, at least that wait, at most a minute (a caller told to wait longer
        # would rather be told to go elsewhere).
        retry = min(max(self.retry_after_seconds, MAX_RETRY_AFTER_SECONDS),
                    max(self.retry_after_seconds,
                        math.ceil(self.retry_after_seconds * self.waiting / max(self.bound, 1))))
        raise ApiError(
            503, "Busy: the saga lags",
            f"{self.waiting} {self.what} are waiting (the bound is {self.bound}); nothing was "
            f"created: try again in {retry} s (with the same Idempotency-Key)",
            headers={"Retry-After": str(retry)}, waiting=self.waiting, bound=self.bound,
        )

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        """Keep :attr:`waiting` current while the block runs: one sample now, then one every
        :attr:`interval` seconds (sagakit.runtime.every, the project's one background loop)."""
        from sagakit.runtime import every  # runtime builds the services; this stays a leaf

        await self.sample()
        async with every(self.interval, self.sample, "admission"):
            yield

"""Waiting with a time limit without losing a cancellation.

On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation: when the waiting task is
cancelled in the same turn of the event loop as the awaited thing completes, it returns the
result and the ``CancelledError`` is gone (CPython gh-86296; 3.12 rebuilt ``wait_for`` on
``asyncio.timeout`` to fix it). A background loop that stops by being cancelled then never
stops, and neither does the service: here the order service's webhook sender did, about once
in ten SIGTERMs under load, for good (``docker compose stop`` would have killed it after its
grace period; ``sagakit.runtime`` logs what a slow stop waits on, which is how it was found).
``asyncio.timeout`` counts the cancellations it did not make (``Task.uncancel``) and turns only
its own into ``TimeoutError``.

So: no ``asyncio.wait_for`` in this project's code (ruff bans it); these instead. The
libraries underneath (asyncpg, aiormq, uvicorn) still use it, so every background loop of ours
also checks a stop flag of its own: a cancellation swallowed down there still ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set (True) or ``seconds`` have passed (False)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or ``TimeoutError`` after ``seconds`` (it is cancelled then)."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background ``task`` (none: nothing to do) and wait until it has ended; the loop
    it runs should also check a stop flag its owner set first (see above)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

"""A background loop stops when cancelled, even if the cancel comes with a wake-up.

The race of CPython gh-86296, made deterministic: the event is set and the waiting task
cancelled in the same turn of the loop, so the inner wait completes before the task sees its
cancellation. ``asyncio.wait_for`` on 3.11 then returns and the loop goes on (the order
service's webhook sender hung a SIGTERM that way); ``sagakit.waits.woken`` does not.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from sagakit.waits import within, woken


async def _wait_for(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)  # noqa: TID251  # the bug, shown
    except TimeoutError:
        return False
    return True


async def _stops_when_cancelled(wait: Callable[[asyncio.Event, float], Awaitable[bool]]) -> bool:
    """Run a loop that only a cancel ends; wake and cancel it at once; did it end?"""
    event = asyncio.Event()
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            await wait(event, 60)
            event.clear()
            turns += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop now waits on the event
    event.set()
    task.cancel()
    try:
        async with asyncio.timeout(1):
            await task
    except asyncio.CancelledError:
        return True
    except TimeoutError:  # the loop went on; the timeout's own cancel, later, ended it
        return False
    raise AssertionError(f"the loop returned by itself after {turns} turns")


def test_woken_never_loses_a_cancel_that_comes_with_the_wake_up() -> None:
    assert asyncio.run(_stops_when_cancelled(woken))


def test_the_race_is_real_with_wait_for_before_python_3_12() -> None:
    """What the test above would see with ``asyncio.wait_for``: the cancel lost (3.11)."""
    lost = not asyncio.run(_stops_when_cancelled(_wait_for))
    assert lost == (sys.version_info < (3, 12))


def test_woken_says_whether_it_was_woken() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        timed_out = await woken(event, 0.01)
        asyncio.get_running_loop().call_later(0.01, event.set)
        return timed_out, await woken(event, 5)

    assert asyncio.run(scenario()) == (False, True)


def test_within_gives_the_result_or_times_out() -> None:
    async def scenario() -> int:
        assert await within(1, asyncio.sleep(0, result=7)) == 7
        with pytest.raises(TimeoutError):
            await within(0.01, asyncio.sleep(5))
        return 1

    assert asyncio.run(scenario()) == 1

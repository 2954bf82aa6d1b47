"""Background loops end when their service stops, even when a cancellation goes astray.

The order service's webhook sender once kept a SIGTERMed replica alive for good: stopped in the
same turn of the loop as it was woken, it lost the cancel (sagakit.waits says how). These drive
the loops themselves, so putting ``asyncio.wait_for`` back, or taking a stop flag away, fails
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from order.callbacks import CallbackPolicy
from order.webhooks import SenderSettings, WebhookSender
from sagakit.runtime import every


class _NoRows:
    async def fetch(self, *_: Any) -> list[Any]:
        return []


class _Pool:
    """A pool whose one connection has nothing due: the sender sweeps and waits."""

    def __init__(self) -> None:
        self.sweeps = 0
        self.swept = asyncio.Event()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_NoRows]:
        self.sweeps += 1
        self.swept.set()
        yield _NoRows()


def test_the_webhook_sender_stops_when_woken_in_the_same_turn() -> None:
    async def scenario() -> int:
        pool = _Pool()
        # Nothing wakes it: the sender sweeps every 0.5 s.
        sender = WebhookSender(pool, CallbackPolicy.from_setting(""),
                               SenderSettings(max_attempts=1, backoff_seconds=1,
                                              backoff_max_seconds=1, timeout_seconds=1))
        await sender.start()
        await pool.swept.wait()
        await asyncio.sleep(0.05)  # it swept once and now waits to be woken
        sender._wake.set()  # a write wakes it just as the service stops
        await sender.stop()
        return pool.sweeps

    assert _ends_within(scenario, 5), "the sender never stopped"


def test_every_ends_even_if_its_work_swallows_the_cancel() -> None:
    """A library that catches CancelledError (some do, on 3.11) must not keep the loop alive."""
    runs = 0

    async def scenario() -> None:
        started = asyncio.Event()

        async def swallowing() -> None:
            nonlocal runs
            runs += 1
            started.set()
            with contextlib.suppress(asyncio.CancelledError):  # what a careless library does
                await asyncio.sleep(10)

        async with every(0.001, swallowing, "swallowing"):
            await started.wait()
        # left the block: the loop has ended (the `async with` waited for it)

    assert _ends_within(scenario, 5), "every() never ended"
    assert runs == 1


async def test_a_gauge_sampled_at_once_is_there_before_its_first_interval() -> None:
    """A restarted process must not answer its metrics with an empty consumer lag for the
    first ``QUEUE_SAMPLE_SECONDS``: queue depths are sampled as the service starts."""
    runs: list[str] = []

    async def sample(name: str) -> None:
        runs.append(name)

    async with every(60, lambda: sample("at once"), "now", at_once=True), \
            every(60, lambda: sample("later"), "later"):
        await asyncio.sleep(0.2)
    assert runs == ["at once"]


def _ends_within(scenario: Callable[[], Coroutine[Any, Any, object]], seconds: float) -> bool:
    """Whether ``asyncio.run(scenario())`` ends within ``seconds``. In a thread of its own: a
    loop that never ends also keeps ``asyncio.run`` from ending (it cancels what is left and
    waits), and the test must fail, not hang. An error in the scenario fails the test too."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)  # a hung one dies with the test run
    thread.start()
    thread.join(seconds)
    if errors:
        raise errors[0]
    return not thread.is_alive()

"""sagakit.ordering: one holder per key at a time, in arrival order; other keys run alongside."""

from __future__ import annotations

import asyncio

import pytest

from sagakit.ordering import InArrivalOrder


async def test_holders_of_one_key_run_one_at_a_time_in_arrival_order():
    gate = InArrivalOrder()
    ran: list[str] = []
    inside = 0

    async def work(name: str, pause: float) -> None:
        nonlocal inside
        async with gate.hold("order-1"):
            inside += 1
            assert inside == 1
            await asyncio.sleep(pause)  # a later arrival with less to do must still wait
            ran.append(name)
            inside -= 1

    await asyncio.gather(work("queued", 0.03), work("started", 0.01), work("finished", 0))
    assert ran == ["queued", "started", "finished"]
    assert len(gate) == 0  # nothing left behind


async def test_different_keys_do_not_wait_for_each_other():
    gate = InArrivalOrder()
    release = asyncio.Event()

    async def slow() -> None:
        async with gate.hold("order-1"):
            await release.wait()

    holder = asyncio.create_task(slow())
    await asyncio.sleep(0)
    async with asyncio.timeout(1):
        async with gate.hold("order-2"):
            assert len(gate) == 2
    release.set()
    await holder
    assert len(gate) == 0


async def test_a_failing_holder_lets_the_next_one_in():
    gate = InArrivalOrder()

    async def fail() -> None:
        async with gate.hold("k"):
            raise RuntimeError("boom")

    results = await asyncio.gather(fail(), fail(), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(gate) == 0


async def test_an_early_event_is_rechecked_after_each_pause_then_left_to_the_broker():
    from sagakit.consuming import RetryLater
    from sagakit.ordering import EarlyEvents

    early = EarlyEvents(rechecks=(0.0, 0.0))
    attempts: list[int] = []

    async def never_ready() -> None:
        attempts.append(1)
        raise RetryLater("its predecessor is not applied yet")

    with pytest.raises(RetryLater):
        await early.apply("order-1", never_ready)
    assert len(attempts) == 3  # once, then after each of the two pauses
    assert len(early.in_arrival_order) == 0  # nothing held after it gave up

    async def ready_on_the_second_look() -> str:
        attempts.append(2)
        if attempts.count(2) < 2:
            raise RetryLater("not yet")
        return "applied"

    assert await early.apply("order-1", ready_on_the_second_look) == "applied"

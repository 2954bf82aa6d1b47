"""Admission control's rule, in-process: admit up to the bound, refuse past it with a 503 that
says how long to wait, and keep the last sample when measuring fails."""

from __future__ import annotations

import asyncio

import pytest

from sagakit.admission import Admission
from sagakit.errors import ApiError


def admission(*values: int | Exception, bound: int = 10, retry: int = 2) -> Admission:
    answers = list(values)

    async def measure() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return Admission(measure, bound=bound, retry_after_seconds=retry, what="orders")


def test_up_to_the_bound_is_admitted():
    gate = admission(10)
    asyncio.run(gate.sample())
    gate.check()  # no exception: 10 waiting, bound 10


def test_past_the_bound_is_a_503_with_retry_after_and_the_figures():
    gate = admission(11)
    asyncio.run(gate.sample())
    with pytest.raises(ApiError) as refused:
        gate.check()
    error = refused.value
    assert error.status == 503
    assert error.headers["Retry-After"] == "3"  # ceil(2 * 11 / 10)
    assert error.extra == {"waiting": 11, "bound": 10}
    assert "nothing was created" in error.detail


@pytest.mark.parametrize(("waiting", "retry_after"), [(11, 2), (20, 2), (100, 10), (1000, 60)])
def test_retry_after_grows_with_the_excess_up_to_a_minute(waiting, retry_after):
    gate = admission(waiting, retry=1)
    asyncio.run(gate.sample())
    with pytest.raises(ApiError) as refused:
        gate.check()
    assert refused.value.headers["Retry-After"] == str(retry_after)


def test_a_failed_sample_keeps_the_last_value():
    gate = admission(50, ConnectionError("database away"), 3)
    asyncio.run(gate.sample())
    asyncio.run(gate.sample())  # fails: still 50, still refusing
    with pytest.raises(ApiError):
        gate.check()
    asyncio.run(gate.sample())
    gate.check()


def test_sampling_keeps_the_count_current_in_the_background():
    gate = admission(*range(100))
    gate.interval = 0.01

    async def run() -> int:
        async with gate.sampling():
            await asyncio.sleep(0.1)
        return gate.waiting

    assert asyncio.run(run()) >= 3

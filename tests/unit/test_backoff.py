"""The worker loops' pause after a failure (sagakit.backoff)."""

from __future__ import annotations

import asyncio

import pytest

from sagakit.backoff import Backoff


async def test_the_pause_doubles_up_to_its_cap_and_starts_again_after_a_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    backoff = Backoff(first=0.1, cap=0.5)
    for _ in range(5):
        await backoff.pause()
    backoff.reset()
    await backoff.pause()
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.1])

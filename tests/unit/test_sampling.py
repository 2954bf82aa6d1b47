"""The default sampler: every trace at a person's pace, a bounded number a second under load."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased

from sagakit import sampling
from sagakit.sampling import PerOperationRateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sampled(sampler: PerOperationRateLimit, name: str = "POST /api/v1/orders") -> bool:
    return sampler.should_sample(None, 1, name).decision is Decision.RECORD_AND_SAMPLE


def test_a_person_placing_orders_has_every_one_recorded() -> None:
    clock = Clock()
    sampler = PerOperationRateLimit(10, clock=clock)
    for _ in range(200):  # one order every two seconds, for several minutes
        assert _sampled(sampler)
        clock.now += 2.0


def test_under_load_about_the_rate_is_recorded_after_the_burst() -> None:
    clock = Clock()
    sampler = PerOperationRateLimit(10, burst=50, clock=clock)
    recorded = 0
    for _ in range(1000):  # 100 a second for 10 s
        recorded += _sampled(sampler)
        clock.now += 0.01
    assert 140 <= recorded <= 160  # the burst of 50, then 10 a second


def test_each_operation_has_its_own_share() -> None:
    clock = Clock()
    sampler = PerOperationRateLimit(1, burst=2, clock=clock)
    assert [_sampled(sampler, "GET /api/v1/orders") for _ in range(3)] == [True, True, False]
    assert _sampled(sampler, "POST /api/v1/orders")  # the busy poll did not use it up


def test_past_max_names_strangers_share_one_bucket() -> None:
    sampler = PerOperationRateLimit(1, burst=1, max_names=2, clock=Clock())
    assert _sampled(sampler, "a") and _sampled(sampler, "b")
    assert _sampled(sampler, "c")  # the shared bucket's first
    assert not _sampled(sampler, "d")
    assert len(sampler._buckets) == 3


def test_rate_zero_records_nothing() -> None:
    assert not _sampled(PerOperationRateLimit(0))


def test_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    default = sampling.from_env()
    assert isinstance(default, ParentBased)
    assert "PerOperationRateLimit{10/s, burst 50}" in str(
        default.get_description())  # type: ignore[no-untyped-call]

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_rate_limited")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "2")
    assert "PerOperationRateLimit{2/s, burst 10}" in sampling.from_env().get_description()

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    assert isinstance(sampling.from_env(), TraceIdRatioBased)

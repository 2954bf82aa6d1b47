"""The fault switches' rules (payment, production, order): off by default, bounded, and what a
switch turns an outcome into. Pure; tests/e2e/test_faults.py shows their effect on the saga."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from order.domain import OrderFaults
from payment.domain import (
    FAULT_DECLINE,
    Decision,
    Outcome,
    PaymentFaults,
    with_decline_fault,
)
from production.domain import ProductionFaults, fails_by_fault


def test_every_switch_is_off_by_default():
    assert PaymentFaults().model_dump() == {"decline_rate": 0.0, "latency_ms": 0}
    assert ProductionFaults().model_dump() == {"failure_rate": 0.0, "slowness_ms": 0}
    assert OrderFaults().model_dump() == {"relay_paused": False}


@pytest.mark.parametrize(("model", "values"), [
    (PaymentFaults, {"decline_rate": 1.01}), (PaymentFaults, {"latency_ms": -1}),
    (PaymentFaults, {"latency_ms": 10_001}), (PaymentFaults, {"decline_rate": float("nan")}),
    (ProductionFaults, {"failure_rate": -0.5}), (ProductionFaults, {"slowness_ms": 10**9}),
    (OrderFaults, {"relay_paused": "sometimes"}), (OrderFaults, {"paused": True}),
])
def test_out_of_range_values_are_refused(model, values):
    with pytest.raises(ValidationError):
        model(**values)


def test_a_decline_rate_turns_that_share_of_approvals_into_declines():
    approved = Decision(Outcome.APPROVED)
    assert with_decline_fault(approved, 0.0, 0.0) == approved  # off: never
    assert with_decline_fault(approved, 0.999, 1.0) == Decision(Outcome.DECLINED, FAULT_DECLINE)
    assert with_decline_fault(approved, 0.3, 0.25) == approved
    assert with_decline_fault(approved, 0.2, 0.25).reason == FAULT_DECLINE


def test_a_decline_by_the_bank_keeps_its_own_reason():
    declined = Decision(Outcome.DECLINED, "card_declined")
    assert with_decline_fault(declined, 0.0, 1.0) == declined


def test_a_failure_rate_fails_that_share_of_orders():
    assert not fails_by_fault(0.0, 0.0)
    assert fails_by_fault(0.999, 1.0)
    assert [fails_by_fault(r / 10, 0.3) for r in range(10)].count(True) == 3

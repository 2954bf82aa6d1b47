"""The order saga's rules, without any I/O."""

from decimal import Decimal

import pytest

from order.domain import (
    HAPPY_PATH,
    MAX_QUANTITY,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Product,
    QuantityTooLarge,
    Status,
    Trigger,
    UnknownSku,
    Verdict,
    can_customer_cancel,
    judge,
    next_status,
    price,
)

S, T = Status, Trigger


def walk(*triggers: Trigger) -> list[Status]:
    status, seen = S.PENDING_PAYMENT, [S.PENDING_PAYMENT]
    for trigger in triggers:
        status = next_status(status, trigger)
        seen.append(status)
    return seen


def test_happy_path_goes_through_every_status_to_finished():
    assert walk(T.PAYMENT_APPROVED, T.PRODUCTION_QUEUED, T.PRODUCTION_STARTED,
                T.PRODUCTION_FINISHED) == list(HAPPY_PATH)


def test_declined_payment_cancels_without_compensation():
    assert walk(T.PAYMENT_DECLINED) == [S.PENDING_PAYMENT, S.CANCELLED]


def test_production_failure_compensates_to_refunded():
    assert walk(T.PAYMENT_APPROVED, T.PRODUCTION_FAILED, T.PAYMENT_REFUNDED) == [
        S.PENDING_PAYMENT, S.PAID, S.CANCELLING, S.REFUNDED]


def test_cancel_before_payment_ends_cancelled_when_payment_voids():
    assert walk(T.CUSTOMER_CANCELLED, T.PAYMENT_VOIDED)[-1] is S.CANCELLED


@pytest.mark.parametrize("status", list(Status))
def test_customer_can_cancel_only_before_the_kitchen_starts(status):
    assert can_customer_cancel(status) == (status in {S.PENDING_PAYMENT, S.PAID, S.RECEIVED})


@pytest.mark.parametrize("status", sorted(TERMINAL))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_terminal_statuses_accept_nothing(status, trigger):
    assert (status, trigger) not in TRANSITIONS
    assert judge(status, trigger) is Verdict.STALE
    with pytest.raises(IllegalTransition):
        next_status(status, trigger)


def test_events_for_a_later_step_are_early_and_retried():
    assert judge(S.PAID, T.PRODUCTION_STARTED) is Verdict.EARLY
    assert judge(S.PAID, T.PRODUCTION_FINISHED) is Verdict.EARLY
    assert judge(S.RECEIVED, T.PRODUCTION_FINISHED) is Verdict.EARLY
    assert judge(S.PENDING_PAYMENT, T.PRODUCTION_QUEUED) is Verdict.EARLY


def test_events_for_a_step_already_passed_are_stale():
    assert judge(S.IN_PRODUCTION, T.PAYMENT_APPROVED) is Verdict.STALE
    assert judge(S.CANCELLING, T.PRODUCTION_STARTED) is Verdict.STALE
    assert judge(S.CANCELLING, T.PAYMENT_APPROVED) is Verdict.STALE


def test_every_status_is_reachable_and_every_non_terminal_one_can_move():
    reachable = {S.PENDING_PAYMENT} | set(TRANSITIONS.values())
    assert reachable == set(Status)
    sources = {s for s, _ in TRANSITIONS}
    assert sources == set(Status) - TERMINAL


MENU = {
    "burger": Product("burger", "Burger", Decimal("8.50")),
    "fries": Product("fries", "Fries", Decimal("3.50")),
}


def test_prices_come_from_the_menu_and_repeated_skus_add_up():
    priced = price(MENU, [("burger", 2), ("fries", 1), ("burger", 1)])
    assert [(x.sku, x.quantity) for x in priced.lines] == [("burger", 3), ("fries", 1)]
    assert priced.total == Decimal("29.00")


def test_unknown_sku_names_its_position():
    with pytest.raises(UnknownSku) as err:
        price(MENU, [("burger", 1), ("caviar", 1)])
    assert (err.value.sku, err.value.index) == ("caviar", 1)


def test_quantity_cap_applies_after_adding_up():
    with pytest.raises(QuantityTooLarge):
        price(MENU, [("fries", MAX_QUANTITY), ("fries", 1)])


def test_a_paid_order_is_never_compensated_before_the_kitchen_answers():
    from order.domain import CancelRoute, cancel_route

    assert cancel_route(S.PENDING_PAYMENT) is CancelRoute.NOW
    assert cancel_route(S.PAID) is CancelRoute.ASK_KITCHEN
    assert cancel_route(S.RECEIVED) is CancelRoute.ASK_KITCHEN
    assert cancel_route(S.RECEIVED, already_requested=True) is CancelRoute.REFUSE
    for status in (S.IN_PRODUCTION, S.FINISHED, S.CANCELLING, S.CANCELLED, S.REFUNDED):
        assert cancel_route(status) is CancelRoute.REFUSE
    assert (S.PAID, T.CUSTOMER_CANCELLED) not in TRANSITIONS  # no refund on the customer's word


def test_the_kitchen_dropping_the_ticket_compensates_to_refunded():
    assert walk(T.PAYMENT_APPROVED, T.PRODUCTION_QUEUED, T.PRODUCTION_CANCELLED,
                T.PAYMENT_REFUNDED)[-2:] == [S.CANCELLING, S.REFUNDED]

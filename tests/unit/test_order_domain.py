"""The order saga's rules, without any I/O."""

from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest

from order.domain import (
    HAPPY_PATH,
    MAX_QUANTITY,
    TERMINAL,
    TRANSITIONS,
    CancelRoute,
    Emit,
    Line,
    OrderRef,
    Product,
    QuantityTooLarge,
    Status,
    Trigger,
    UnknownSku,
    Verdict,
    cancel_route,
    decide,
    decide_cancel,
    judge,
    price,
)
from sagakit.events import OrderCancellationRequested, OrderCancelled, OrderReceived

S, T, E = Status, Trigger, Emit


def walk(*triggers: Trigger) -> list[Status]:
    status, seen = S.PENDING_PAYMENT, [S.PENDING_PAYMENT]
    for trigger in triggers:
        status = TRANSITIONS[(status, trigger)].to  # a KeyError: not a step of the table
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
    cancellable = cancel_route(status) is not CancelRoute.REFUSE
    assert cancellable == (status in {S.PENDING_PAYMENT, S.PAID, S.RECEIVED})


@pytest.mark.parametrize("status", sorted(TERMINAL))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_terminal_statuses_accept_nothing(status, trigger):
    assert (status, trigger) not in TRANSITIONS
    assert judge(status, trigger) is Verdict.STALE


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
    reachable = {S.PENDING_PAYMENT} | {step.to for step in TRANSITIONS.values()}
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
    from order.domain import cancel_route

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


# --- decide: the next status and what the step announces -------------------------------------


def an_order(status: Status, *, cancel_requested: bool = False) -> OrderRef:
    return OrderRef(id=uuid4(), status=status, total=Decimal("12.00"), currency="EUR",
                    lines=(Line("burger", "Burger", 1, Decimal("8.50")),
                           Line("fries", "Fries", 1, Decimal("3.50"))),
                    accepted_at=datetime.now(UTC), version=1, cancel_requested=cancel_requested)


def test_a_paid_order_sends_the_kitchen_its_lines():
    order = an_order(S.PENDING_PAYMENT)
    decision = decide(order, T.PAYMENT_APPROVED)
    assert (decision.verdict, decision.status) == (Verdict.APPLY, S.PAID)
    (ticket,) = decision.events
    assert isinstance(ticket, OrderReceived)
    assert ticket.order_id == order.id
    assert [(x.sku, x.quantity, x.unit_price) for x in ticket.lines] == [
        ("burger", 1, Decimal("8.50")), ("fries", 1, Decimal("3.50"))]


@pytest.mark.parametrize(("status", "trigger", "requested_by", "reason"), [
    (S.PAID, T.PRODUCTION_FAILED, "production", "production failed: out of fries"),
    (S.RECEIVED, T.PRODUCTION_FAILED, "production", "production failed: out of fries"),
    (S.PAID, T.PRODUCTION_CANCELLED, "customer", None),
    (S.RECEIVED, T.PRODUCTION_CANCELLED, "customer", None),
])
def test_cancelling_asks_payment_to_compensate_and_says_who_asked(status, trigger, requested_by,
                                                                 reason):
    order = an_order(status)
    decision = decide(order, trigger, reason)
    assert decision.status is S.CANCELLING
    (cancelled,) = decision.events
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.requested_by == requested_by
    expected = reason or "cancelled by the customer"
    assert cancelled.reason == decision.reason == expected


@pytest.mark.parametrize(("status", "trigger"), sorted(TRANSITIONS))
def test_decide_follows_the_table_and_announces_what_it_says(status, trigger):
    decision = decide(an_order(status), trigger)
    step = TRANSITIONS[(status, trigger)]
    assert (decision.verdict, decision.status) == (Verdict.APPLY, step.to)
    assert len(decision.events) == len(step.emits)
    kinds = {E.TICKET: OrderReceived, E.COMPENSATE_FOR_CUSTOMER: OrderCancelled,
             E.COMPENSATE_FOR_KITCHEN: OrderCancelled}
    assert [type(e) for e in decision.events] == [kinds[emit] for emit in step.emits]


def test_every_step_into_cancelling_asks_for_compensation_and_no_other_does():
    for step in TRANSITIONS.values():
        compensates = any(e is not E.TICKET for e in step.emits)
        assert compensates == (step.to is S.CANCELLING)


@pytest.mark.parametrize(("status", "trigger", "verdict"), [
    (S.PAID, T.PRODUCTION_STARTED, Verdict.EARLY),
    (S.CANCELLING, T.PRODUCTION_STARTED, Verdict.STALE),
    (S.FINISHED, T.PAYMENT_REFUNDED, Verdict.STALE),
])
def test_an_early_or_stale_event_changes_nothing_and_announces_nothing(status, trigger, verdict):
    decision = decide(an_order(status), trigger)
    assert (decision.verdict, decision.status, decision.events) == (verdict, status, ())


def test_a_customer_cancel_before_payment_compensates_at_once():
    decision = decide_cancel(an_order(S.PENDING_PAYMENT))
    assert (decision.route, decision.status) == (CancelRoute.NOW, S.CANCELLING)
    (cancelled,) = decision.events
    assert isinstance(cancelled, OrderCancelled)
    assert (cancelled.requested_by, cancelled.reason) == ("customer", "cancelled by the customer")


@pytest.mark.parametrize("status", [S.PAID, S.RECEIVED])
def test_a_customer_cancel_of_a_paid_order_only_asks_the_kitchen(status):
    order = an_order(status)
    decision = decide_cancel(order)
    assert (decision.route, decision.status) == (CancelRoute.ASK_KITCHEN, status)
    (asked,) = decision.events
    assert isinstance(asked, OrderCancellationRequested)
    assert asked.order_id == order.id


@pytest.mark.parametrize("order", [an_order(S.RECEIVED, cancel_requested=True),
                                   an_order(S.IN_PRODUCTION), an_order(S.FINISHED)])
def test_a_customer_cancel_that_cannot_be_taken_announces_nothing(order):
    decision = decide_cancel(order)
    assert (decision.route, decision.status, decision.events) == (
        CancelRoute.REFUSE, order.status, ())

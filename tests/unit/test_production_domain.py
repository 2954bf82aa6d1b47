"""The kitchen's rules, without Redis: what a ticket needs, what is short, how a ticket moves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import order
from production.domain import (
    TERMINAL,
    TRANSITIONS,
    Shortage,
    Step,
    TicketLine,
    TicketStatus,
    demand,
    failure_reason,
    next_status,
    releases_stock,
    shortages,
)
from production.settings import ProductionSettings

S = TicketStatus


def line(sku: str, quantity: int) -> TicketLine:
    return TicketLine(sku, sku.title(), quantity)


def test_the_same_sku_on_two_lines_adds_up() -> None:
    assert demand([line("fries", 2), line("lemonade", 1), line("fries", 3)]) == {
        "fries": 5, "lemonade": 1,
    }


def test_a_ticket_without_lines_needs_nothing() -> None:
    assert demand([]) == {}


def test_enough_stock_means_no_shortage() -> None:
    assert shortages({"fries": 5}, {"fries": 5, "brownie": 0}) == ()


def test_short_and_unknown_skus_are_reported_in_order_of_the_ticket() -> None:
    needed = {"fries": 6, "brownie": 1, "caviar": 2}
    assert shortages(needed, {"fries": 5, "brownie": 1, "caviar": None}) == (
        Shortage("fries", 6, 5),
        Shortage("caviar", 2, 0),  # not stocked at all: nothing available
    )


def test_a_sku_missing_from_the_levels_counts_as_not_stocked() -> None:
    assert shortages({"caviar": 1}, {}) == (Shortage("caviar", 1, 0),)


def test_failure_reason_names_the_short_skus() -> None:
    short = (Shortage("truffle-risotto", 6, 5), Shortage("caviar", 1, 0))
    assert failure_reason(short) == "out of stock: truffle-risotto, caviar"


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 50), min_size=1),
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 50)),
)
def test_a_ticket_can_be_made_exactly_when_nothing_is_short(
    needed: dict[str, int], stocked: dict[str, int]
) -> None:
    available: dict[str, int | None] = {sku: stocked.get(sku) for sku in needed}
    can_make = all(stocked.get(sku, -1) >= units for sku, units in needed.items())
    assert (shortages(needed, available) == ()) is can_make


@pytest.mark.parametrize(
    ("status", "step", "expected"),
    [
        (S.QUEUED, Step.START, S.IN_PROGRESS),
        (S.IN_PROGRESS, Step.FINISH, S.DONE),
        (S.QUEUED, Step.CANCEL, S.CANCELLED),
        (S.IN_PROGRESS, Step.CANCEL, S.CANCELLED),
        (S.QUEUED, Step.FINISH, None),  # nothing is handed over uncooked
        (S.IN_PROGRESS, Step.START, None),
        (S.DONE, Step.CANCEL, None),  # what was handed over stays handed over
        (S.CANCELLED, Step.START, None),  # a cancelled ticket is never cooked
        (S.CANCELLED, Step.FINISH, None),
    ],
)
def test_ticket_transitions(
    status: TicketStatus, step: Step, expected: TicketStatus | None
) -> None:
    assert next_status(status, step) is expected


def test_terminal_states_have_no_way_out() -> None:
    assert all(status not in TERMINAL for status, _ in TRANSITIONS)
    assert all(next_status(status, step) is None for status in TERMINAL for step in Step)


def test_only_a_ticket_no_cook_touched_gives_its_stock_back() -> None:
    assert [s for s in S if releases_stock(s)] == [S.QUEUED]


def test_default_stock_covers_the_order_services_menu() -> None:
    menu = Path(order.__file__).with_name("migrations") / "002_menu.sql"
    skus = set(re.findall(r"^\s*\('([a-z0-9-]+)'", menu.read_text(), re.MULTILINE))
    stock = ProductionSettings.model_fields["seed_stock"].get_default(call_default_factory=True)
    assert set(stock) == skus
    assert stock["truffle-risotto"] == 5
    assert {sku for sku, units in stock.items() if units == 2000} == {
        "burger-classic", "burger-veggie", "pizza-margherita", "salad-caesar", "fries",
        "lemonade", "brownie",
    }


def test_a_customers_cancel_is_granted_only_before_a_cook_touches_the_ticket():
    from production.domain import CancelAnswer, answer_cancel_request

    assert answer_cancel_request(None) is CancelAnswer.NO_TICKET
    assert answer_cancel_request(TicketStatus.QUEUED) is CancelAnswer.RELEASED
    assert answer_cancel_request(TicketStatus.CANCELLED) is CancelAnswer.ALREADY_CANCELLED
    assert answer_cancel_request(TicketStatus.IN_PROGRESS) is CancelAnswer.REFUSED
    assert answer_cancel_request(TicketStatus.DONE) is CancelAnswer.REFUSED

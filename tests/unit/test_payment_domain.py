"""The payment rules, without any I/O: card checks, the issuer's decisions, compensation."""

from datetime import date
from decimal import Decimal
from uuid import uuid4

import pytest

from payment.domain import (
    Brand,
    Card,
    Charge,
    Compensation,
    Decision,
    InvalidCard,
    Outcome,
    brand_of,
    compensation_for,
    decide_charge,
    digits_of,
    is_chargeable,
    luhn_valid,
    tokenize,
    void_reason,
)

TODAY = date(2026, 5, 14)
VISA = "4242424242424242"


def card(number: str = VISA, *, exp_month: int = 12, exp_year: int = 2030, cvc: str = "123",
         holder: str = "Ana Souza") -> Card:
    return tokenize("tok_test", number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc,
                    holder=holder, today=TODAY)


def rejected_field(**kwargs: object) -> str:
    with pytest.raises(InvalidCard) as caught:
        card(**kwargs)  # type: ignore[arg-type]
    return caught.value.field


# --- Luhn and brands ----------------------------------------------------------------------------

@pytest.mark.parametrize("number", [
    VISA, "4000000000000002", "4000000000009995", "5555555555554444", "2223003122003222",
    "378282246310005", "6011111111111117", "79927398713",
])
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4242424242424241", "79927398710", "1234567812345678",
                                    "42424242424242a2", "", "４２４２"])
def test_luhn_rejects_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(("number", "brand"), [
    (VISA, Brand.VISA),
    ("5105105105105100", Brand.MASTERCARD),
    ("5555555555554444", Brand.MASTERCARD),
    ("2221000000000009", Brand.MASTERCARD),
    ("2720990000000007", Brand.MASTERCARD),
    ("2220990000000000", Brand.UNKNOWN),
    ("2721000000000000", Brand.UNKNOWN),
    ("5600000000000000", Brand.UNKNOWN),
    ("5000000000000000", Brand.UNKNOWN),
    ("340000000000009", Brand.AMEX),
    ("378282246310005", Brand.AMEX),
    ("6011111111111117", Brand.UNKNOWN),
])
def test_brand_comes_from_the_leading_digits(number: str, brand: Brand) -> None:
    assert brand_of(number) is brand


def test_spaces_and_dashes_are_ignored_in_a_number() -> None:
    assert digits_of("4242 4242-4242 4242") == VISA
    assert card("4242 4242-4242 4242").last4 == "4242"


# --- tokenizing -----------------------------------------------------------------------------------

def test_a_card_keeps_only_what_may_be_kept() -> None:
    kept = card("4242 4242 4242 4242", holder="  Ana Souza  ")
    assert kept == Card(token="tok_test", brand=Brand.VISA, last4="4242", exp_month=12,
                        exp_year=2030, holder="Ana Souza", decline_reason=None)
    assert VISA not in repr(kept) and "123" not in repr(kept)


@pytest.mark.parametrize("number", ["4242 4242 4242 4241", "4242424242424242" + "0"])
def test_a_number_failing_luhn_is_rejected(number: str) -> None:
    assert rejected_field(number=number) == "number"


@pytest.mark.parametrize("number", ["", "4242", "42424242424", "4" * 20, "4242 4242 4242 424x",
                                    "4242.4242.4242.4242", "٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢"])
def test_a_number_that_is_not_12_to_19_digits_is_rejected(number: str) -> None:
    assert rejected_field(number=number) == "number"


def test_twelve_and_nineteen_digit_numbers_are_accepted() -> None:
    assert card("000000000000", cvc="123").brand is Brand.UNKNOWN
    assert card("4222222222222222224").brand is Brand.VISA


def test_the_error_never_repeats_the_number_or_cvc() -> None:
    for kwargs in ({"number": "4242424242424241"}, {"cvc": "98765"}):
        with pytest.raises(InvalidCard) as caught:
            card(**kwargs)  # type: ignore[arg-type]
        assert "4242424242424241" not in str(caught.value)
        assert "98765" not in str(caught.value)


def test_a_card_is_valid_until_the_end_of_its_expiry_month() -> None:
    assert card(exp_month=5, exp_year=2026).exp_month == 5
    assert rejected_field(exp_month=4, exp_year=2026) == "exp_month"
    assert rejected_field(exp_month=12, exp_year=2025) == "exp_year"


@pytest.mark.parametrize("month", [0, 13, -1])
def test_the_expiry_month_is_1_to_12(month: int) -> None:
    assert rejected_field(exp_month=month) == "exp_month"


def test_an_expiry_year_decades_ahead_is_a_typo() -> None:
    assert card(exp_year=2046).exp_year == 2046
    assert rejected_field(exp_year=2047) == "exp_year"
    assert rejected_field(exp_year=30) == "exp_year"


@pytest.mark.parametrize(("number", "cvc", "ok"), [
    (VISA, "123", True), (VISA, "1234", False), (VISA, "12", False), (VISA, "12a", False),
    (VISA, "", False), (VISA, "１２３", False),
    ("378282246310005", "1234", True), ("378282246310005", "123", False),
])
def test_the_cvc_has_3_digits_or_4_for_amex(number: str, cvc: str, ok: bool) -> None:
    if ok:
        assert card(number, cvc=cvc).last4 == number[-4:]
    else:
        assert rejected_field(number=number, cvc=cvc) == "cvc"


@pytest.mark.parametrize(("holder", "ok"), [("A", True), ("x" * 100, True), ("", False),
                                            ("   ", False), ("x" * 101, False)])
def test_the_holder_is_1_to_100_characters(holder: str, ok: bool) -> None:
    if ok:
        assert card(holder=holder).holder == holder
    else:
        assert rejected_field(holder=holder) == "holder"


# --- the issuer's decisions -----------------------------------------------------------------------

@pytest.mark.parametrize(("number", "reason"), [
    (VISA, None), ("4000000000000002", "card_declined"),
    ("4000000000009995", "insufficient_funds"), ("5555555555554444", None),
])
def test_test_numbers_fix_the_card_s_answer_when_tokenized(number: str, reason: str | None) -> None:
    assert card(number).decline_reason == reason


@pytest.mark.parametrize(("token", "decision"), [
    ("tok_visa", Decision(Outcome.APPROVED)),
    ("tok_chargeDeclined", Decision(Outcome.DECLINED, "card_declined")),
    ("tok_chargeDeclinedInsufficientFunds", Decision(Outcome.DECLINED, "insufficient_funds")),
    ("tok_neverseen", Decision(Outcome.DECLINED, "unknown_token")),
])
def test_built_in_and_unknown_tokens(token: str, decision: Decision) -> None:
    assert decide_charge(token, None) == decision


def test_a_tokenized_card_is_charged_as_its_number_decided() -> None:
    assert decide_charge("tok_test", card(VISA)) == Decision(Outcome.APPROVED)
    assert decide_charge("tok_test", card("4000000000009995")) == Decision(
        Outcome.DECLINED, "insufficient_funds")


@pytest.mark.parametrize(("amount", "ok"), [
    ("0.01", True), ("12.50", True), ("12.5", True), ("9999999999.99", True),
    ("0", False), ("-1.00", False), ("0.001", False), ("12.505", False),
    ("10000000000.00", False), ("NaN", False), ("Infinity", False),
])
def test_only_whole_cents_that_fit_the_ledger_are_chargeable(amount: str, ok: bool) -> None:
    assert is_chargeable(Decimal(amount)) is ok


# --- compensation -------------------------------------------------------------------------------

def charge(outcome: Outcome, *, refunded: bool = False) -> Charge:
    return Charge(uuid4(), outcome, Decimal("12.50"), "EUR", "tok_visa", refunded)


def test_an_approved_charge_is_refunded_once() -> None:
    assert compensation_for(charge(Outcome.APPROVED)) is Compensation.REFUND
    assert compensation_for(charge(Outcome.APPROVED, refunded=True)) is Compensation.NONE


def test_without_money_taken_the_payment_is_voided() -> None:
    assert compensation_for(None) is Compensation.VOID
    assert compensation_for(charge(Outcome.DECLINED)) is Compensation.VOID
    assert void_reason(None) == "cancelled_before_charge"
    assert void_reason(charge(Outcome.DECLINED)) == "charge_declined"

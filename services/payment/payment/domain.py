"""Cards and charges as a simulated issuer sees them: pure rules, no I/O.

A card is checked (Luhn, brand, expiry, cvc, holder) and reduced to what may be kept: a token,
the brand, the last four digits, the expiry and the holder, never the number or the cvc. The
issuer's answer for a card is decided when it is tokenized (well-known test numbers decline),
so a charge is decided from the token alone and every run of the saga ends the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from sagakit.events import TEST_CARD_TOKENS


class Brand(StrEnum):
    VISA = "visa"
    MASTERCARD = "mastercard"
    AMEX = "amex"
    UNKNOWN = "unknown"


# Test card numbers and the issuer's answer to every charge on them; any other valid number
# approves (like a card network's test cards).
DECLINING_TEST_NUMBERS: dict[str, str] = {
    "4000000000000002": "card_declined",
    "4000000000009995": "insufficient_funds",
}
UNKNOWN_TOKEN = "unknown_token"  # noqa: S105  # a decline reason, not a secret
NOT_YOUR_CARD = "card_not_yours"
MIN_DIGITS, MAX_DIGITS = 12, 19
MAX_HOLDER = 100
# How far ahead an expiry may lie; a later year is a typo, not a card.
MAX_YEARS_AHEAD = 20


class InvalidCard(Exception):
    """A card the issuer would refuse to tokenize, and the input to blame.

    The message never contains the card number or the cvc: it may end up in a response body.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@dataclass(frozen=True)
class Card:
    """What is kept of a tokenized card."""

    token: str
    brand: Brand
    last4: str
    exp_month: int
    exp_year: int
    holder: str
    decline_reason: str | None  # the issuer's answer to every charge on this card
    owner: str | None = None  # who tokenized it; it pays only for that owner's orders


def digits_of(number: str) -> str:
    """The digits of a card number as people type it (spaces and dashes allowed)."""
    return number.replace(" ", "").replace("-", "")


def luhn_valid(digits: str) -> bool:
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def brand_of(digits: str) -> Brand:
    if digits.startswith("4"):
        return Brand.VISA
    if digits[:2] in ("34", "37"):
        return Brand.AMEX
    if "51" <= digits[:2] <= "55" or (digits[:4].isdecimal() and 2221 <= int(digits[:4]) <= 2720):
        return Brand.MASTERCARD
    return Brand.UNKNOWN


def tokenize(
    token: str, *, number: str, exp_month: int, exp_year: int, cvc: str, holder: str,
    today: date,
) -> Card:
    """Check a card and keep what may be kept; raises :class:`InvalidCard` naming the field."""
    digits = digits_of(number)
    if not (digits.isascii() and digits.isdigit() and MIN_DIGITS <= len(digits) <= MAX_DIGITS):
        raise InvalidCard("number", f"a card number has {MIN_DIGITS} to {MAX_DIGITS} digits "
                                    "(spaces and dashes allowed)")
    if not luhn_valid(digits):
        raise InvalidCard("number", "not a valid card number (checksum failed)")
    check_expiry(exp_month, exp_year, today)
    brand = brand_of(digits)
    cvc_length = 4 if brand is Brand.AMEX else 3
    if not (cvc.isascii() and cvc.isdigit() and len(cvc) == cvc_length):
        raise InvalidCard("cvc", f"the cvc of a {brand} card is {cvc_length} digits")
    holder = holder.strip()
    if not 1 <= len(holder) <= MAX_HOLDER:
        raise InvalidCard("holder", f"the holder's name is 1 to {MAX_HOLDER} characters")
    return Card(
        token=token, brand=brand, last4=digits[-4:], exp_month=exp_month, exp_year=exp_year,
        holder=holder, decline_reason=DECLINING_TEST_NUMBERS.get(digits),
    )


def check_expiry(exp_month: int, exp_year: int, today: date) -> None:
    """A card is valid until the end of its expiry month."""
    if not 1 <= exp_month <= 12:
        raise InvalidCard("exp_month", "the expiry month is 1 to 12")
    if exp_year < today.year:
        raise InvalidCard("exp_year", "the card has expired")
    if exp_year > today.year + MAX_YEARS_AHEAD:
        raise InvalidCard("exp_year", f"the expiry year is at most {MAX_YEARS_AHEAD} years ahead")
    if (exp_year, exp_month) < (today.year, today.month):
        raise InvalidCard("exp_month", "the card has expired")


# --- charges and their compensation ------------------------------------------------------------

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999.99")  # numeric(12,2)


class Outcome(StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str | None = None


def decide_charge(token: str, card: Card | None, order_owner: str | None = None) -> Decision:
    """The issuer's answer to a charge on ``token`` (``card`` is its card, if we tokenized it).

    A saved card pays only for its owner's orders: someone who learned another customer's token
    gets a decline (and the order is cancelled), never a charge on that card.
    """
    if token in TEST_CARD_TOKENS:
        reason = TEST_CARD_TOKENS[token]
    elif card is not None and card.owner is not None and card.owner != order_owner:
        reason = NOT_YOUR_CARD
    elif card is not None:
        reason = card.decline_reason
    else:
        reason = UNKNOWN_TOKEN
    return Decision(Outcome.APPROVED) if reason is None else Decision(Outcome.DECLINED, reason)


MAX_FAULT_LATENCY_MS = 10_000
FAULT_DECLINE = "fault: decline_rate"


class PaymentFaults(BaseModel):
    """The payment service's fault switches (sagakit.faults); the defaults are "off"."""

    model_config = ConfigDict(extra="forbid", strict=True)  # true is no rate, "7" no ms
    decline_rate: float = Field(0.0, ge=0, le=1, description="share of charges the bank "
                                "declines (reason `fault: decline_rate`), 0..1")
    latency_ms: int = Field(0, ge=0, le=MAX_FAULT_LATENCY_MS,
                            description="added to every charge decision, in milliseconds")


def with_decline_fault(decision: Decision, roll: float, decline_rate: float) -> Decision:
    """The decline-rate switch: an approval turns, with probability ``decline_rate`` (``roll``
    is uniform in [0, 1)), into an ordinary decline, so the saga cancels the order as it does
    for any declined card. A decline stays the issuer's own."""
    if decision.outcome is Outcome.APPROVED and roll < decline_rate:
        return Decision(Outcome.DECLINED, FAULT_DECLINE)
    return decision


def is_chargeable(amount: Decimal) -> bool:
    """Whole cents, positive, and small enough for the ledger."""
    return amount.is_finite() and CENT <= amount <= MAX_AMOUNT and amount == amount.quantize(CENT)


@dataclass(frozen=True)
class Charge:
    """An order's charge in the ledger, and whether it was refunded."""

    id: UUID
    outcome: Outcome
    amount: Decimal
    currency: str
    payment_token: str
    refunded: bool


class Compensation(StrEnum):
    REFUND = "refund"  # money was taken: give it back
    NONE = "none"  # already refunded: the refund was announced then
    VOID = "void"  # nothing was taken (no charge, or it was declined): say none will be


def compensation_for(charge: Charge | None) -> Compensation:
    """What a cancelled order needs from payment; exactly one of refund/void gets announced."""
    if charge is None or charge.outcome is Outcome.DECLINED:
        return Compensation.VOID
    return Compensation.NONE if charge.refunded else Compensation.REFUND


def void_reason(charge: Charge | None) -> str:
    return "cancelled_before_charge" if charge is None else "charge_declined"

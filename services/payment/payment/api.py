"""The payment service's HTTP API: validation in, response models out, no business rules.

The card number and cvc come in as secrets (masked if a model is ever printed or logged) and
never go out: not in a response, not in an error body, not in a log line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictInt

from payment import service, store
from payment.domain import Card, InvalidCard
from sagakit.auth import Caller, allow
from sagakit.errors import ApiError
from sagakit.events import Money
from sagakit.text import Text
from sagakit.web import JsonRoute

router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


class CardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: SecretStr = Field(
        examples=["4242 4242 4242 4242"],
        description="12 to 19 digits; spaces and dashes are ignored. Test numbers: "
        "4242424242424242 approves, 4000000000000002 declines (card_declined), "
        "4000000000009995 declines (insufficient_funds); any other valid number approves.",
    )
    exp_month: StrictInt = Field(examples=[12], description="1 to 12")
    exp_year: StrictInt = Field(examples=[2030], description="four digits, not in the past")
    cvc: SecretStr = Field(examples=["123"], description="3 digits (4 for American Express)")
    holder: Text = Field(examples=["Ana Souza"],
                        description="1 to 100 characters")


class CardOut(BaseModel):
    token: str = Field(examples=["tok_3f2a9c0d4e5b6a7f8c9d0e1f"])
    brand: str = Field(examples=["visa"])
    last4: str = Field(examples=["4242"])
    exp_month: int
    exp_year: int


class PaymentRecord(BaseModel):
    """One ledger entry: a charge, or the refund of one (which points at it with refund_of)."""

    id: UUID
    order_id: UUID
    kind: Literal["charge", "refund"]
    status: Literal["approved", "declined", "refunded"]
    amount: Money
    currency: str
    reason: str | None
    refund_of: UUID | None
    created_at: datetime


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _card_out(card: Card) -> CardOut:
    return CardOut(token=card.token, brand=card.brand, last4=card.last4,
                   exp_month=card.exp_month, exp_year=card.exp_year)


@router.post(
    "/payments/cards", status_code=status.HTTP_201_CREATED, response_model=CardOut,
    tags=["cards"], summary="Tokenize a card; its token pays for orders",
    responses={422: {"description": "Invalid card; `errors` names the field"},
               403: {"description": "The caller's account was erased (its token, issued "
                     "before, is still valid until it expires)"}},
    **allow("orders", "ops"),
)
async def tokenize_card(body: CardIn, request: Request, response: Response,
                        caller: Caller) -> CardOut:
    try:
        card = await service.tokenize_card(
            _pool(request), number=body.number.get_secret_value(), exp_month=body.exp_month,
            exp_year=body.exp_year, cvc=body.cvc.get_secret_value(), holder=body.holder,
            owner=caller.subject,
        )
    except InvalidCard as exc:
        raise ApiError(422, "Invalid card", exc.message, field=exc.field) from None
    except service.AccountClosed:
        raise ApiError(403, "Account erased",
                       "this account was erased: it can tokenize no more cards",
                       field="Authorization") from None
    response.headers["Location"] = f"/api/v1/payments/cards/{card.token}"
    return _card_out(card)


@router.get("/payments/cards/{token}", response_model=CardOut, tags=["cards"],
            summary="A tokenized card: brand, last four digits and expiry",
            responses={404: {"description": "No such token (or not yours)"}},
            **allow("orders", "ops"))
async def get_card(token: str, request: Request, caller: Caller) -> CardOut:
    async with _pool(request).acquire() as conn:
        card = await store.card_of(conn, token, None if caller.is_operator else caller.subject)
    if card is None:
        raise ApiError(404, "Card not found", "no card with this token", field="token")
    return _card_out(card)


@router.get("/payments", response_model=list[PaymentRecord], tags=["payments"],
            summary="An order's ledger: its charge and any refund, oldest first (empty for an "
            "order that is not yours)", **allow("orders", "ops"))
async def list_payments(
    request: Request, caller: Caller,
    order_id: Annotated[UUID, Query(description="the order's id")],
) -> list[PaymentRecord]:
    async with _pool(request).acquire() as conn:
        rows = await store.ledger(conn, order_id, None if caller.is_operator else caller.subject)
    return [PaymentRecord(id=r["id"], order_id=r["order_id"], kind=r["kind"], status=r["status"],
                          amount=r["amount"], currency=r["currency"], reason=r["reason"],
                          refund_of=r["refund_of"], created_at=r["created_at"]) for r in rows]

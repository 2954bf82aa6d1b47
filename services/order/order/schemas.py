"""What the order service's HTTP API takes and gives: the request and response models.

Validation happens here, at the edge (pydantic, each error a 422 naming its field); the rules
of an order are in order.domain.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from order.callbacks import MAX_URL_LENGTH
from order.domain import MAX_LINES, MAX_QUANTITY
from sagakit.events import Money
from sagakit.text import Email, Text


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: Text = Field(min_length=1, max_length=200, examples=["Ana"])
    email: Email = Field(examples=["ana@example.com"])


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Text = Field(min_length=1, max_length=64, examples=["burger-classic"])
    quantity: StrictInt = Field(ge=1, le=MAX_QUANTITY, examples=[1])


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer: CustomerIn | None = Field(
        None, description="who the order is for. A customer's token names them already: leave it "
        "out, or give it with the token's email. A machine or operator client names the customer "
        "here (required).")
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_LINES)
    payment_token: str = Field(
        pattern=r"^tok_[A-Za-z0-9_]{1,64}$", examples=["tok_visa"],
        description="tok_visa, tok_chargeDeclined, tok_chargeDeclinedInsufficientFunds, or a "
        "token from POST /api/v1/payments/cards",
    )
    callback_url: Text | None = Field(  # Text: no NUL or other control character
        None, max_length=MAX_URL_LENGTH, examples=["https://hooks.example.com/saga"],
        description="where each status change of the order is POSTed (Standard Webhooks, "
        "signed with your secret from GET /api/v1/orders/webhook-secret); its host must be on "
        "the shop's allow-list (else 422)")


class ProductOut(BaseModel):
    sku: str
    name: str
    description: str
    price: Money
    currency: str


class LineOut(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: Money
    line_total: Money


class TimelineEntry(BaseModel):
    status: str
    at: datetime
    reason: str | None = None
    event_id: UUID | None = None
    trace_id: str = Field(description="the trace of the step (the order's trace)")


class Links(BaseModel):
    trace: str | None = Field(description="the order's trace in Jaeger; null where no trace "
                              "backend runs (native mode without OTEL_EXPORTER_OTLP_ENDPOINT)")
    logs: str | None = Field(description="every log line of the order's trace in Seq; null "
                             "where no log backend runs (natively: the files in .run/logs)")


class CustomerOut(BaseModel):
    name: str
    email: str = Field(description="masked: personal data is not echoed back")


class OrderOut(BaseModel):
    id: UUID
    status: str
    customer: CustomerOut
    items: list[LineOut]
    total: Money
    currency: str
    cancellation_reason: str | None
    callback_url: str | None = Field(None, description="where its status changes are POSTed")
    trace_id: str = Field(description="one order is one trace, across all three services")
    trace_recorded: bool = Field(
        True, description="whether its trace was recorded (every order at a person's pace, "
        "about ten a second under load; a request's sampled `traceparent` forces it): only a "
        "recorded trace is in Jaeger. Its log lines carry the trace id either way")
    links: Links
    created_at: datetime
    updated_at: datetime
    timeline: list[TimelineEntry]


class OrderSummary(BaseModel):
    id: UUID
    status: str
    total: Money
    currency: str
    created_at: datetime


class CancelAccepted(BaseModel):
    id: UUID
    status: str = Field(description="the order's status now: `cancelling` when it took effect "
                        "at once, else unchanged while the kitchen confirms")
    detail: str


def timeline_entry(step: Mapping[str, Any]) -> TimelineEntry:
    return TimelineEntry(status=step["status"], at=step["at"], reason=step["reason"],
                         event_id=step["event_id"], trace_id=step["trace_id"])

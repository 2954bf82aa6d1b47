"""The order service's HTTP API: validation in, response models out, no business rules."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from order import service, store
from order.domain import MAX_LINES, MAX_QUANTITY, QuantityTooLarge, Status, UnknownSku
from order.settings import OrderSettings
from sagakit.events import Money
from sagakit.logs import mask_email
from sagakit.web import PLAIN_TEXT, ApiError

router = APIRouter(prefix="/api/v1")
_ADDRESS_PART = r"[^@\s\x00-\x1f]+"
EMAIL = rf"^{_ADDRESS_PART}@{_ADDRESS_PART}\.{_ADDRESS_PART}$"


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(min_length=1, max_length=200, pattern=PLAIN_TEXT, examples=["Ana"])
    email: str = Field(max_length=254, pattern=EMAIL,
                       examples=["ana@example.com"])


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, max_length=64, examples=["burger-classic"])
    quantity: StrictInt = Field(ge=1, le=MAX_QUANTITY, examples=[1])


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer: CustomerIn
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_LINES)
    payment_token: str = Field(
        pattern=r"^tok_[A-Za-z0-9_]{1,64}$", examples=["tok_visa"],
        description="tok_visa, tok_chargeDeclined, tok_chargeDeclinedInsufficientFunds, or a "
        "token from POST /api/v1/payments/cards",
    )


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
    trace: str = Field(description="the order's trace in Jaeger")
    logs: str = Field(description="every log line of the order's trace in Seq")


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
    trace_id: str = Field(description="one order is one trace, across all three services")
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


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _links(settings: OrderSettings, trace_id: str) -> Links:
    return Links(
        trace=f"{settings.jaeger_ui_url.rstrip('/')}/trace/{trace_id}",
        logs=f"{settings.seq_ui_url.rstrip('/')}/#/events?filter=TraceId%3D'{trace_id}'",
    )


async def _view(request: Request, order_id: UUID) -> OrderOut:
    async with _pool(request).acquire() as conn:
        row = await store.fetch(conn, order_id)
        if row is None:
            raise ApiError(404, "Order not found", f"no order with id {order_id}",
                           field="order_id")
        steps = await store.timeline(conn, order_id)
    return _order_out(request, row, steps)


def _order_out(request: Request, row: Mapping[str, Any],
               steps: list[Mapping[str, Any]]) -> OrderOut:
    return OrderOut(
        id=row["id"], status=row["status"],
        customer=CustomerOut(name=row["customer_name"], email=mask_email(row["customer_email"])),
        items=[
            LineOut(sku=x["sku"], name=x["name"], quantity=x["quantity"],
                    unit_price=x["unit_price"],
                    line_total=Decimal(x["unit_price"]) * x["quantity"])
            for x in row["lines"]
        ],
        total=row["total"], currency=row["currency"],
        cancellation_reason=row["cancellation_reason"], trace_id=row["trace_id"],
        links=_links(request.app.state.settings, row["trace_id"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
        timeline=[TimelineEntry(status=s["status"], at=s["at"], reason=s["reason"],
                                event_id=s["event_id"], trace_id=s["trace_id"]) for s in steps],
    )


@router.get("/products", response_model=list[ProductOut], tags=["menu"],
            summary="The menu: what can be ordered, at which price")
async def list_products(request: Request) -> list[ProductOut]:
    currency = request.app.state.settings.currency
    async with _pool(request).acquire() as conn:
        rows = await store.products(conn)
    return [ProductOut(sku=r["sku"], name=r["name"], description=r["description"],
                       price=r["price"], currency=currency) for r in rows]


@router.post(
    "/orders", status_code=status.HTTP_202_ACCEPTED, response_model=OrderOut, tags=["orders"],
    summary="Place an order; it is accepted at once and completes asynchronously",
    responses={409: {"description": "Idempotency-Key reused with a different body"},
               422: {"description": "Invalid input; `errors` names each field"}},
)
async def place_order(
    body: PlaceOrder, request: Request, response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> OrderOut:
    settings = request.app.state.settings
    pool = _pool(request)
    try:
        await service.ensure_token_known(pool, body.payment_token, settings.token_wait_seconds)
        order_id, row = await service.place_order(
            pool, name=body.customer.name, email=body.customer.email,
            items=[(i.sku, i.quantity) for i in body.items], payment_token=body.payment_token,
            currency=settings.currency, idempotency_key=idempotency_key,
            fingerprint=service.request_fingerprint(body.model_dump()) if idempotency_key
            else "",
        )
    except service.UnknownPaymentToken:
        raise ApiError(422, "Unknown payment token",
                       f"payment token '{body.payment_token}' is not known",
                       field="payment_token") from None
    except UnknownSku as exc:
        raise ApiError(422, "Unknown product", f"unknown sku '{exc.sku}'",
                       field=f"items[{exc.index}].sku") from None
    except QuantityTooLarge as exc:
        raise ApiError(422, "Quantity too large", str(exc), field="items") from None
    except service.IdempotencyConflict:
        raise ApiError(409, "Idempotency-Key reused",
                       "this Idempotency-Key was used with a different request body",
                       field="Idempotency-Key") from None
    response.headers["Location"] = f"/api/v1/orders/{order_id}"
    if row is None:
        response.headers["Idempotent-Replayed"] = "true"
        return await _view(request, order_id)
    # A new order is answered from the row its insert returned: no read back.
    first_step = {"status": row["status"], "at": row["step_at"], "reason": None,
                  "event_id": None, "trace_id": row["trace_id"]}
    return _order_out(request, row, [first_step])


@router.get("/orders", response_model=list[OrderSummary], tags=["orders"],
            summary="Recent orders, newest first")
async def list_orders(
    request: Request,
    status_filter: Annotated[
        list[Status] | None,
        Query(alias="status", max_length=len(Status),
              description="only orders in this status; repeat it for several "
              "(`?status=paid&status=received`: one consistent snapshot of both)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[OrderSummary]:
    async with _pool(request).acquire() as conn:
        rows = await store.recent(conn, status_filter, limit)
    return [OrderSummary(id=r["id"], status=r["status"], total=r["total"],
                         currency=r["currency"], created_at=r["created_at"]) for r in rows]


@router.get("/orders/{order_id}", response_model=OrderOut, tags=["orders"],
            summary="An order, its items, total and the timeline of its statuses",
            responses={404: {"description": "No such order"}})
async def get_order(order_id: UUID, request: Request) -> OrderOut:
    return await _view(request, order_id)


@router.post("/orders/{order_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
             response_model=CancelAccepted, tags=["orders"],
             summary="Cancel an order the kitchen has not started; the refund follows",
             responses={404: {"description": "No such order"},
                        409: {"description": "Too late to cancel"}})
async def cancel_order(order_id: UUID, request: Request) -> CancelAccepted:
    try:
        now = await service.cancel_order(_pool(request), order_id)
    except service.OrderNotFound:
        raise ApiError(404, "Order not found", f"no order with id {order_id}",
                       field="order_id") from None
    except service.CannotCancel as exc:
        raise ApiError(409, "Cannot cancel", str(exc), field="order_id",
                       order_status=str(exc.status)) from None
    detail = ("cancelled; any charge will be refunded" if now == "cancelling" else
              "cancellation requested; once the kitchen confirms it has not started, the order "
              "is cancelled and refunded (if it already started, the order goes on)")
    return CancelAccepted(id=order_id, status=now, detail=detail)

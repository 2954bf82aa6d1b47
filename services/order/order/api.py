"""The order service's HTTP API: validation in, response models out, no business rules."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from order import service, store
from order.callbacks import MAX_URL_LENGTH, CallbackPolicy, CallbackRefused
from order.domain import MAX_LINES, MAX_QUANTITY, TERMINAL, QuantityTooLarge, Status, UnknownSku
from order.settings import OrderSettings
from sagakit.auth import Caller, Principal, allow
from sagakit.consuming import OUTAGE
from sagakit.events import Money
from sagakit.logs import mask_email
from sagakit.notifications import NotificationFanout, Subscription, TooManySubscribers
from sagakit.web import ApiError, Email, JsonRoute, Text, problem

log = logging.getLogger("order.api")
router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


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
    callback_url: str | None = Field(
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
    callback_url: str | None = Field(None, description="where its status changes are POSTed")
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


def _customer(body: PlaceOrder, caller: Principal) -> tuple[str, str]:
    """Who the order is for: the customer's token, or the customer a client names."""
    if caller.kind == "customer" and caller.email:
        if body.customer is not None and body.customer.email.lower() != caller.email.lower():
            raise ApiError(422, "Not your email", "customer.email must be the email of the "
                           "token's customer (or leave customer out)", field="customer.email")
        name = body.customer.name if body.customer is not None else (caller.name or "")
        return name or caller.email, caller.email
    if body.customer is None:
        raise ApiError(422, "Customer required", "a client's order must name its customer",
                       field="customer")
    return body.customer.name, body.customer.email


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _links(settings: OrderSettings, trace_id: str) -> Links:
    return Links(
        trace=f"{settings.jaeger_ui_url.rstrip('/')}/trace/{trace_id}",
        logs=f"{settings.seq_ui_url.rstrip('/')}/#/events?filter=TraceId%3D'{trace_id}'",
    )


def _owner_filter(caller: Principal) -> str | None:
    """None for an operator (every order), else the caller's own id."""
    return None if caller.is_operator else caller.subject


async def _load_order(conn: asyncpg.Connection, order_id: UUID,
                      caller: Principal) -> asyncpg.Record:
    """The order as the caller may see it, or 404: the one path by which every read of one
    order (GET /orders/{id}, its cancel and its live /events) loads it, so this one check gates
    them all. Someone else's order is a 404 too, never a 403 that would confirm it exists."""
    row = await store.fetch(conn, order_id, _owner_filter(caller))
    if row is None:
        raise ApiError(404, "Order not found", f"no order with id {order_id}", field="order_id")
    return row


async def _view(request: Request, order_id: UUID, caller: Principal) -> OrderOut:
    async with _pool(request).acquire() as conn:
        row = await _load_order(conn, order_id, caller)
        steps = await store.timeline(conn, order_id)
    return _order_out(request, row, steps)


def _timeline_entry(step: Mapping[str, Any]) -> TimelineEntry:
    return TimelineEntry(status=step["status"], at=step["at"], reason=step["reason"],
                         event_id=step["event_id"], trace_id=step["trace_id"])


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
        cancellation_reason=row["cancellation_reason"], callback_url=row["callback_url"],
        trace_id=row["trace_id"],
        links=_links(request.app.state.settings, row["trace_id"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
        timeline=[_timeline_entry(s) for s in steps],
    )


@router.get("/products", response_model=list[ProductOut], tags=["menu"],
            summary="The menu: what can be ordered, at which price", **allow())
async def list_products(request: Request) -> list[ProductOut]:
    currency = request.app.state.settings.currency
    async with _pool(request).acquire() as conn:
        rows = await store.products(conn)
    return [ProductOut(sku=r["sku"], name=r["name"], description=r["description"],
                       price=r["price"], currency=currency) for r in rows]


@router.post(
    "/orders", status_code=status.HTTP_202_ACCEPTED, response_model=OrderOut, tags=["orders"],
    summary="Place an order; it is accepted at once and completes asynchronously",
    description="Send an **`Idempotency-Key`** (any unique string, e.g. a UUID, up to 200 "
    "characters) with every order. A retry with the same key and body (after a timeout, a 502 or "
    "a 503, when you cannot know whether the first attempt arrived) answers with the order the "
    "first one placed (`Idempotent-Replayed: true`), never a second one. **Without the header "
    "each attempt is a new order: a retry may place, and charge, a duplicate.** The same key with "
    "a different body is 409. Keys are per caller.",
    responses={409: {"description": "Idempotency-Key reused with a different body"},
               503: {"description": "The saga lags (too many orders waiting): nothing was "
                     "created; retry after `Retry-After` seconds with the same key"},
               422: {"description": "Invalid input; `errors` names each field"}},
    **allow("orders", "ops"),
)
async def place_order(
    body: PlaceOrder, request: Request, response: Response, caller: Caller,
    idempotency_key: Annotated[str | None, Header(
        max_length=200, description="makes a retry safe: the same key answers with the same "
        "order; without it a retry places a duplicate")] = None,
) -> OrderOut:
    # Past capacity, refuse before anything is written (503, Retry-After): sagakit.admission.
    request.app.state.admission.check()
    settings = request.app.state.settings
    pool = _pool(request)
    name, email = _customer(body, caller)
    # Keys are per caller: the same key from two callers is two requests, never a replay of
    # someone else's order.
    scoped_key = f"{caller.subject}:{idempotency_key}" if idempotency_key else None
    if body.callback_url is not None:
        await _check_callback(request, body.callback_url)
    try:
        await service.ensure_token_known(pool, body.payment_token, settings.token_wait_seconds)
        order_id, row = await service.place_order(
            pool, name=name, email=email, owner=caller.subject, callback_url=body.callback_url,
            items=[(i.sku, i.quantity) for i in body.items], payment_token=body.payment_token,
            currency=settings.currency, idempotency_key=scoped_key,
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
        return await _view(request, order_id, caller)
    # A new order is answered from the row its insert returned: no read back.
    first_step = {"status": row["status"], "at": row["step_at"], "reason": None,
                  "event_id": None, "trace_id": row["trace_id"]}
    return _order_out(request, row, [first_step])


async def _check_callback(request: Request, url: str) -> None:
    policy: CallbackPolicy = request.app.state.callback_policy
    try:
        await policy.target(url)
    except CallbackRefused as exc:
        raise ApiError(422, "Callback URL refused", f"callback_url {exc}",
                       field="callback_url") from None


@router.get("/orders", response_model=list[OrderSummary], tags=["orders"],
            summary="Recent orders, newest first (a customer's own; every order for an operator)",
            **allow("orders", "ops"))
async def list_orders(
    request: Request, caller: Caller,
    status_filter: Annotated[
        list[Status] | None,
        Query(alias="status", max_length=len(Status),
              description="only orders in this status; repeat it for several "
              "(`?status=paid&status=received`: one consistent snapshot of both)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[OrderSummary]:
    async with _pool(request).acquire() as conn:
        rows = await store.recent(conn, status_filter, limit, _owner_filter(caller))
    return [OrderSummary(id=r["id"], status=r["status"], total=r["total"],
                         currency=r["currency"], created_at=r["created_at"]) for r in rows]


@router.get("/orders/{order_id}", response_model=OrderOut, tags=["orders"],
            summary="An order, its items, total and the timeline of its statuses",
            responses={404: {"description": "No such order (or not yours)"}},
            **allow("orders", "ops"))
async def get_order(order_id: UUID, request: Request, caller: Caller) -> OrderOut:
    return await _view(request, order_id, caller)


@router.post("/orders/{order_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
             response_model=CancelAccepted, tags=["orders"],
             summary="Cancel an order the kitchen has not started; the refund follows",
             responses={404: {"description": "No such order (or not yours)"},
                        409: {"description": "Too late to cancel"}},
             **allow("orders", "ops"))
async def cancel_order(order_id: UUID, request: Request, caller: Caller) -> CancelAccepted:
    async with _pool(request).acquire() as conn:
        await _load_order(conn, order_id, caller)
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


# --- The order's timeline, live (Server-Sent Events) ---------------------------------------------

# How long a client waits before reconnecting after the stream broke (the SSE `retry` field).
RECONNECT_MS = 2000


class EventStream(StreamingResponse):
    """``text/event-stream`` that gives its stream slot back however the response ends: the
    generator's own ``finally`` never runs when the client leaves before the body starts."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], subscription: Subscription) -> None:
        # X-Accel-Buffering: nginx must pass each event on at once, not fill a buffer first.
        super().__init__(content, headers={"Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()


def _sse(step: Mapping[str, Any]) -> bytes:
    data = _timeline_entry(step).model_dump_json()
    return f"id: {step['seq']}\nevent: status\ndata: {data}\n\n".encode()


async def _follow(pool: asyncpg.Pool, order_id: UUID, after: int, ended: bool,
                  subscription: Subscription, heartbeat: float) -> AsyncIterator[bytes]:
    """Every timeline entry after ``after``, each as soon as it commits, until the terminal one.

    ``ended``: the order was terminal already when loaded, so once what is after ``after`` is
    sent (perhaps nothing: a client resuming after the end) nothing more can come.
    """
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    try:
        while subscription.active:
            subscription.clear()  # before reading: an entry committed after the read wakes us
            async with pool.acquire() as conn:
                steps = await store.timeline_after(conn, order_id, after)
            for step in steps:
                after = step["seq"]
                yield _sse(step)
                if step["status"] in TERMINAL:
                    return
            if ended:
                return
            if not await subscription.wait(heartbeat):
                yield b": heartbeat\n\n"
    except OUTAGE as exc:  # the database went away: end; the client resumes from its last id
        log.warning("order %s event stream ended: %r", order_id, exc)


@router.get(
    "/orders/{order_id}/events", tags=["orders"], response_class=EventStream, status_code=200,
    summary="Follow an order live: each timeline entry as Server-Sent Events, as it commits",
    description="A `text/event-stream`: one `status` event per timeline entry (its `data` is "
    "the entry as in GET /api/v1/orders/{id}, its `id` the entry's sequence number), from the "
    "first entry on, each as soon as it commits; a `: heartbeat` comment line while nothing "
    "happens. The stream ends after the order's terminal status (finished, cancelled, "
    "refunded). Reconnect with `Last-Event-ID` to get only the entries after that one.",
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "The stream of the order's timeline entries"},
               404: {"description": "No such order (or not yours)"},
               503: {"description": "This replica serves as many streams as it can; retry"}},
    **allow("orders", "ops"),
)
async def follow_order(
    order_id: UUID, request: Request, caller: Caller,
    last_event_id: Annotated[int | None, Header(
        alias="Last-Event-ID", ge=0, le=2**63 - 1,
        description="the `id` of the last event received: only later entries are sent")] = None,
) -> Response:
    async with _pool(request).acquire() as conn:
        row = await _load_order(conn, order_id, caller)
    feed: NotificationFanout = request.app.state.timeline_feed
    settings: OrderSettings = request.app.state.settings
    try:
        # Subscribed before the first read, so no entry committing meanwhile goes unheard.
        subscription = feed.subscribe(str(order_id))
    except TooManySubscribers:
        busy = problem(503, "Too many event streams",
                       f"this replica already serves {feed.subscribers} event streams; retry "
                       "shortly (another replica may take it)")
        busy.headers["Retry-After"] = "5"
        return busy
    stream = _follow(_pool(request), order_id, last_event_id or 0, row["status"] in TERMINAL,
                     subscription, settings.event_stream_heartbeat_seconds)
    return EventStream(stream, subscription)

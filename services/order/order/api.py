"""The order service's HTTP API: validation in, response models out, no business rules.

Its models are in order.schemas; following an order live (Server-Sent Events) in
order.stream_api; webhook subscriptions in order.webhooks_api.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Header, Query, Request, Response, status

from order import service, store
from order.callbacks import CallbackPolicy, CallbackRefused
from order.domain import QuantityTooLarge, Status, UnknownSku
from order.schemas import (
    CancelAccepted,
    CustomerOut,
    LineOut,
    Links,
    OrderOut,
    OrderSummary,
    PlaceOrder,
    ProductOut,
    timeline_entry,
)
from order.settings import OrderSettings
from sagakit.auth import Caller, Principal, allow
from sagakit.errors import ApiError
from sagakit.logs import mask_email
from sagakit.web import JsonRoute

log = logging.getLogger("order.api")
router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


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


def pool_of(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _links(settings: OrderSettings, trace_id: str) -> Links:
    """Where to see the order's trace and logs; none where nothing receives them (an empty
    ORDER_JAEGER_UI_URL / ORDER_SEQ_UI_URL: native mode exports nothing by default)."""
    jaeger, seq = settings.jaeger_ui_url.rstrip("/"), settings.seq_ui_url.rstrip("/")
    return Links(
        trace=f"{jaeger}/trace/{trace_id}" if jaeger else None,
        logs=f"{seq}/#/events?filter=TraceId%3D'{trace_id}'" if seq else None,
    )


def _owner_filter(caller: Principal) -> str | None:
    """None for an operator (every order), else the caller's own id."""
    return None if caller.is_operator else caller.subject


async def load_order(conn: asyncpg.Connection, order_id: UUID,
                      caller: Principal) -> asyncpg.Record:
    """The order as the caller may see it, or 404: the one path by which every read of one
    order (GET /orders/{id}, its cancel and its live /events) loads it, so this one check gates
    them all. Someone else's order is a 404 too, never a 403 that would confirm it exists."""
    row = await store.fetch(conn, order_id, _owner_filter(caller))
    if row is None:
        raise ApiError(404, "Order not found", f"no order with id {order_id}", field="order_id")
    return row


async def _view(request: Request, order_id: UUID, caller: Principal) -> OrderOut:
    async with pool_of(request).acquire() as conn:
        row = await load_order(conn, order_id, caller)
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
        cancellation_reason=row["cancellation_reason"], callback_url=row["callback_url"],
        trace_id=row["trace_id"], trace_recorded=row["trace_recorded"],
        links=_links(request.app.state.settings, row["trace_id"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
        timeline=[timeline_entry(s) for s in steps],
    )


@router.get("/products", response_model=list[ProductOut], tags=["menu"],
            summary="The menu: what can be ordered, at which price", **allow())
async def list_products(request: Request) -> list[ProductOut]:
    currency = request.app.state.settings.currency
    async with pool_of(request).acquire() as conn:
        rows = await store.products(conn)
    return [ProductOut(sku=r["sku"], name=r["name"], description=r["description"],
                       price=r["price"], currency=currency) for r in rows]


# Printable ASCII, no blank at either end: no control, invisible or look-alike characters in
# a key a caller must send byte for byte again (draft-ietf-httpapi-idempotency-key-header).
KEY_PATTERN = r"^[!-~](?:[ -~]*[!-~])?$"


@router.post(
    "/orders", status_code=status.HTTP_202_ACCEPTED, response_model=OrderOut, tags=["orders"],
    summary="Place an order; it is accepted at once and completes asynchronously",
    description="Send an **`Idempotency-Key`** (one header, any unique string of printable "
    "ASCII, e.g. a UUID, up to 200 characters) with every order. A retry with the same key "
    "and body (after a timeout, a 502 or a 503, when you cannot know whether the first "
    "attempt arrived) answers with the order the first one placed "
    "(`Idempotent-Replayed: true`), never a second one. **Without the header each attempt is "
    "a new order: a retry may place, and charge, a duplicate.** The same key with a different "
    "body is 409. Keys are per caller.",
    responses={409: {"description": "Idempotency-Key reused with a different body"},
               400: {"description": "Idempotency-Key sent twice, or a body that is no JSON"},
               403: {"description": "The caller's account was erased (its token, issued "
                     "before, is still valid until it expires)"},
               503: {"description": "The saga lags (too many orders waiting): nothing was "
                     "created; retry after `Retry-After` seconds with the same key"},
               422: {"description": "Invalid input; `errors` names each field"}},
    **allow("orders", "ops"),
)
async def place_order(
    body: PlaceOrder, request: Request, response: Response, caller: Caller,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=200, pattern=KEY_PATTERN,
        description="makes a retry safe: the same key answers with the same order; without it "
        "a retry places a duplicate. Printable ASCII (a structured-field string, as the IETF "
        "draft says), e.g. a UUID")] = None,
) -> OrderOut:
    if len(request.headers.getlist("idempotency-key")) > 1:  # which one to honour is a guess
        raise ApiError(400, "Idempotency-Key sent twice", "send one Idempotency-Key header",
                       field="Idempotency-Key")
    # Past capacity, refuse before anything is written (503, Retry-After): sagakit.admission.
    request.app.state.admission.check()
    settings = request.app.state.settings
    pool = pool_of(request)
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
    except service.AccountClosed:
        raise ApiError(403, "Account erased",
                       "this account was erased: it can place no more orders",
                       field="Authorization") from None
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
    async with pool_of(request).acquire() as conn:
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
    async with pool_of(request).acquire() as conn:
        await load_order(conn, order_id, caller)
    try:
        now = await service.cancel_order(pool_of(request), order_id)
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

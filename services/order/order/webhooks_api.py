"""HTTP edges of webhooks (order.webhooks) and of the order service's fault switch.

These paths sit under /api/v1/orders/ like the orders themselves, so this router is included
before order.api's: ``/orders/webhook-secret`` must not be taken for ``/orders/{order_id}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from order import webhooks
from order.store import AccountClosed
from sagakit.audit import Audit
from sagakit.auth import Caller, allow
from sagakit.errors import ApiError
from sagakit.web import JsonRoute

router = APIRouter(prefix="/api/v1/orders", tags=["webhooks"], route_class=JsonRoute)


class WebhookSecret(BaseModel):
    secret: str = Field(description="`whsec_` + base64 of the HMAC-SHA256 key: verify each "
                        "delivery with a Standard Webhooks library, e.g. "
                        "`standardwebhooks.Webhook(secret).verify(body, headers)`")
    event_type: str = Field(webhooks.EVENT_TYPE, description="the `type` of every payload")
    previous_valid_until: datetime | None = Field(
        None, description="after a rotation, until when the secret it replaced still signs: "
        "each delivery carries a signature by each secret until then (space separated in "
        "`webhook-signature`, as the specification allows), so either verifies it")


class ParkedDelivery(BaseModel):
    id: UUID = Field(description="the delivery's webhook-id")
    order_id: UUID
    status: str = Field(description="the order status the delivery announces")
    url: str
    attempts: int
    last_error: str | None
    created_at: datetime


class Replayed(BaseModel):
    id: UUID
    detail: str


_ERASED: dict[int | str, dict[str, Any]] = {403: {
    "description": "The caller's account was erased (its token, issued before, is still valid "
    "until it expires)"}}


@contextlib.contextmanager
def _open_account() -> Iterator[None]:
    try:
        yield
    except AccountClosed:
        raise ApiError(403, "Account erased", "this account was erased: it has no webhook "
                       "secret any more", field="Authorization") from None


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


@router.get("/webhook-secret", response_model=WebhookSecret,
            summary="Your webhook signing secret (the same for all your orders)",
            responses=_ERASED, **allow("orders", "ops"))
async def webhook_secret(request: Request, caller: Caller) -> WebhookSecret:
    with _open_account():
        async with _pool(request).acquire() as conn:
            return WebhookSecret(secret=await webhooks.secret_of(conn, caller.subject),
                                 previous_valid_until=await webhooks.previous_until(
                                     conn, caller.subject))


@router.post("/webhook-secret/rotate", response_model=WebhookSecret,
             summary="Replace your webhook signing secret; the old one signs too for a while",
             description="Answers the new secret. Deliveries carry a signature by the new and "
             "by the replaced secret until `previous_valid_until` (`WEBHOOK_SECRET_OVERLAP_HOURS`"
             ", 24 h by default): switch your receiver to the new secret within that time. "
             "Rotating again within it retires the replaced secret at once.",
             responses=_ERASED, **allow("orders", "ops"))
async def rotate_webhook_secret(request: Request, caller: Caller) -> WebhookSecret:
    overlap = timedelta(hours=request.app.state.settings.webhook_secret_overlap_hours)
    with _open_account():
        async with _pool(request).acquire() as conn:
            secret, until = await webhooks.rotate(conn, caller.subject, overlap)
    return WebhookSecret(secret=secret, previous_valid_until=until)


@router.get("/webhooks/failed", response_model=list[ParkedDelivery],
            summary="Webhook deliveries parked after their last attempt, newest first",
            **allow("ops"))
async def parked_webhooks(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ParkedDelivery]:
    async with _pool(request).acquire() as conn:
        rows = await webhooks.parked(conn, limit)
    return [ParkedDelivery(**dict(r)) for r in rows]


@router.post("/webhooks/failed/{delivery_id}/replay", response_model=Replayed,
             status_code=status.HTTP_202_ACCEPTED,
             summary="Send a parked webhook delivery again (same webhook-id, fresh attempts)",
             responses={404: {"description": "No parked delivery with this id"}},
             **allow("ops"))
async def replay_webhook(delivery_id: UUID, request: Request, audit: Audit) -> Replayed:
    async with (audit.action("webhook.replay", target=str(delivery_id)),
                _pool(request).acquire() as conn):
        if not await webhooks.replay(conn, delivery_id):
            raise ApiError(404, "No such parked delivery",
                           f"no parked webhook delivery with id {delivery_id}",
                           field="delivery_id")
    return Replayed(id=delivery_id, detail="due again: it is sent within a moment")

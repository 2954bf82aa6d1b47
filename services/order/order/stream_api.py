"""Follow an order live: its timeline as Server-Sent Events, each entry as it commits.

``GET /api/v1/orders/{id}/events``: the same access rule as reading the order (order.api's
``load_order``); woken by the timeline's NOTIFY (sagakit.notifications), never by polling.
The timeline notifies only for an order someone follows (``store.follow``,
migrations/010_timeline_followers.sql): a stream notes its order before its first read, and
again while it lasts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Header, Request, Response
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from order import store
from order.api import load_order, pool_of
from order.domain import TERMINAL
from order.schemas import timeline_entry
from order.settings import OrderSettings
from sagakit.auth import Caller, allow
from sagakit.consuming import is_outage
from sagakit.notifications import NotificationFanout, Subscription, TooManySubscribers
from sagakit.web import JsonRoute, problem

log = logging.getLogger("order.api")
router = APIRouter(prefix="/api/v1", route_class=JsonRoute)


# How long a client waits before reconnecting after the stream broke (the SSE `retry` field).
RECONNECT_MS = 2000
# A stream notes its order as followed for this long (store.follow), and notes it again once
# half of it has passed; never less than a few heartbeats, as it only looks between them.
FOLLOW_SECONDS = 60.0


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
    data = timeline_entry(step).model_dump_json()
    return f"id: {step['n']}\nevent: status\ndata: {data}\n\n".encode()


async def _follow(pool: asyncpg.Pool, order_id: UUID, after: int, ended: bool,
                  subscription: Subscription, heartbeat: float) -> AsyncGenerator[bytes]:
    """Every timeline entry after ``after``, each as soon as it commits, until the terminal one.

    ``ended``: the order was terminal already when loaded, so once what is after ``after`` is
    sent (perhaps nothing: a client resuming after the end) nothing more can come.
    """
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    follow_for = max(FOLLOW_SECONDS, 4 * heartbeat)
    follow_again, noted_on = float("-inf"), -1
    try:
        while subscription.active:
            subscription.clear()  # before reading: an entry committed after the read wakes us
            async with pool.acquire() as conn:
                # Noted before the read; again when half its time has passed, and when the
                # listener reconnected (a restarted database has emptied order_followers).
                if not ended and (time.monotonic() >= follow_again
                                  or subscription.connection != noted_on):
                    noted_on = subscription.connection
                    await store.follow(conn, order_id, follow_for)
                    follow_again = time.monotonic() + follow_for / 2
                steps = await store.timeline_after(conn, order_id, after)
            for step in steps:
                after = step["n"]
                yield _sse(step)
                if step["status"] in TERMINAL:
                    return
            if ended:
                return
            if not await subscription.wait(heartbeat):
                yield b": heartbeat\n\n"
    except Exception as exc:
        if not is_outage(exc):
            raise
        # the database went away: end; the client resumes from its last id
        log.warning("order %s event stream ended: %r", order_id, exc)


@router.get(
    "/orders/{order_id}/events", tags=["orders"], response_class=EventStream, status_code=200,
    summary="Follow an order live: each timeline entry as Server-Sent Events, as it commits",
    description="A `text/event-stream`: one `status` event per timeline entry (its `data` is "
    "the entry as in GET /api/v1/orders/{id}, its `id` the entry's position in the order's "
    "timeline: 1, 2, ...), from the "
    "first entry on, each as soon as it commits; a `: heartbeat` comment line while nothing "
    "happens. The stream ends after the order's terminal status (finished, cancelled, "
    "refunded). Reconnect with `Last-Event-ID` to get only the entries after that one; an "
    "id past the order's last entry is none this stream gave, and every entry is sent again.",
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
    async with pool_of(request).acquire() as conn:
        row = await load_order(conn, order_id, caller)
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
    stream = _follow(pool_of(request), order_id, last_event_id or 0, row["status"] in TERMINAL,
                     subscription, settings.event_stream_heartbeat_seconds)
    return EventStream(stream, subscription)

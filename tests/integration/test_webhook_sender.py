"""The webhook sender against receivers that do not play fair, with a real PostgreSQL.

A receiver is someone else's server. One that answers its head a byte at a time, or sends a
body without end, must cost one attempt of at most ``timeout_seconds`` and no memory, and must
not hold up the deliveries claimed with it (a batch waits for all of its attempts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID, uuid4

import asyncpg
import pytest
from opentelemetry import trace

from order import service as orders
from order import webhooks
from order.callbacks import CallbackPolicy
from sagakit import logs, telemetry
from sagakit.logs import JsonFormatter

TIMEOUT = 1.0
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)


async def _head_a_byte_at_a_time(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.3)  # each read comes well within httpx's per-read timeout


class EndlessBody:
    """A 200 whose body never ends: what it managed to send before the sender hung up."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
        chunk = b"x" * 65536
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
                self.sent += len(chunk)
        except (ConnectionError, OSError):
            pass


async def _fair(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await writer.drain()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def serve(handler: Handler) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"

    yield serve
    for server in servers:
        server.close()
        await server.wait_closed()


async def _order_to(pool: asyncpg.Pool, url: str) -> UUID:
    order_id, _ = await orders.place_order(
        pool, name="Hugo Hook", email="hugo@example.com", items=[("fries", 1)],
        payment_token="tok_visa", currency="EUR", owner=f"hugo-{uuid4()}", idempotency_key=None,
        fingerprint="", callback_url=url)
    return order_id


async def test_an_unfair_receiver_costs_one_bounded_attempt_and_holds_up_no_other(
        order_db, receivers):
    endless = EndlessBody()
    urls = {"slow head": await receivers(_head_a_byte_at_a_time),
            "endless body": await receivers(endless), "fair": await receivers(_fair)}
    orders_by_name = {name: await _order_to(order_db, url) for name, url in urls.items()}
    sender = webhooks.WebhookSender(
        order_db, CallbackPolicy.from_setting("http://127.0.0.1"), webhooks.SenderSettings(
            max_attempts=3, backoff_seconds=60, backoff_max_seconds=60,
            timeout_seconds=TIMEOUT, batch_size=500))
    try:
        started = time.monotonic()
        async with asyncio.timeout(TIMEOUT + 20):  # a sender reading the endless body: fail
            assert await sender.deliver_due() >= 3
        took = time.monotonic() - started
    finally:
        await sender._http.aclose()
    # The slow head was 13 s of bytes, each within a read timeout: one deadline ended it.
    assert took < TIMEOUT + 2, took
    async with order_db.acquire() as conn:
        outcome = {name: tuple(await conn.fetchrow(
            "SELECT state, last_error FROM webhook_deliveries WHERE order_id = $1"
            " ORDER BY timeline_seq LIMIT 1", order_id))
            for name, order_id in orders_by_name.items()}
    assert outcome["fair"] == ("delivered", None)
    assert outcome["slow head"] == ("pending", f"no answer within {TIMEOUT:g} s")
    # A 2xx head is the answer; the body is not read: the connection closes under the sender.
    assert outcome["endless body"] == ("delivered", None)
    await asyncio.sleep(0.2)
    assert endless.sent < 64 * 2**20, endless.sent  # what the socket buffers took, not more


async def _refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


class _Lines(logging.Handler):
    """Each record as the services write it (JSON, with the ids of the work in progress),
    formatted in the caller's context, as the off-loop handler's formatter is."""

    def __init__(self) -> None:
        super().__init__()
        self.formatter_ = JsonFormatter("order")
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self.formatter_.format(record))
        # What OpenTelemetry's log handler reads, for the record Seq filters on: the current
        # span's trace id, not a field of the line.
        line["otel_trace_id"] = trace.format_trace_id(
            trace.get_current_span().get_span_context().trace_id)
        self.lines.append(line)


async def test_a_parked_webhook_is_said_in_its_orders_log_lines_and_its_url_is_not(
        order_db, receivers):
    """The order's Seq link (its trace id) shows its webhooks' failures; the receiver's URL,
    whose query string may hold its secret, is in no line (httpx logs each at INFO)."""
    url = await receivers(_refusing) + "?access_token=SECRET-IN-QUERY"
    with telemetry.in_trace(uuid4().hex):  # as a POST's server span would be
        order_id = await _order_to(order_db, url)
    lines = _Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)  # as the services run
    logs.configure_library_loggers()
    logs.order_id_var.set(None)  # placing the order named it in this task's context
    sender = webhooks.WebhookSender(
        order_db, CallbackPolicy.from_setting("http://127.0.0.1"), webhooks.SenderSettings(
            max_attempts=1, backoff_seconds=60, backoff_max_seconds=60,
            timeout_seconds=TIMEOUT, batch_size=500))
    try:
        assert await sender.deliver_due() >= 1
    finally:
        await sender._http.aclose()
        root.removeHandler(lines)
        root.setLevel(level)
    async with order_db.acquire() as conn:
        trace_id = await conn.fetchval("SELECT trace_id FROM orders WHERE id = $1", order_id)
    parked = [line for line in lines.lines if "parked after" in str(line["message"])]
    assert [(p["order_id"], p["trace_id"], p["otel_trace_id"]) for p in parked] == [
        (str(order_id), trace_id, trace_id)]
    assert not [line for line in lines.lines if "SECRET-IN-QUERY" in json.dumps(line)]

"""Drive orders through the gateway and wait for every saga to end.

Orders go out either closed-loop (``concurrency`` clients, each placing its next order as soon as
its last saga ended) or open-loop at a target ``rate`` (with at most ``concurrency`` sagas in
flight), for at most ``orders`` orders and ``duration`` seconds. "In flight" is a saga, not a
request: accepting an order costs the stack far less than completing its saga, so a client that
only waited for the 202 would pile up a backlog the stack drains long after sending stops, and
measure the backlog instead of the saga.

Completion is detected with the list endpoint, one ``GET /api/v1/orders?status=<s>&status=...``
for every non-terminal status at once (one consistent snapshot), every 50 ms while sending and
backing off to 500 ms afterwards; never with one poll per order. Each order is read once at the
end for its timeline, whose first and last entries give the saga's latency on the order
service's clock.

The client is aiohttp, not httpx: it shares the machine with the stack it measures, and costs
about a third of httpx's CPU per request. One session, a bounded pool of keep-alive connections,
request bodies encoded once per kind, responses decoded with orjson.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

TERMINAL = {"finished", "cancelled", "refunded"}
OPEN = ("pending_payment", "paid", "received", "in_production", "cancelling")
LIST_LIMIT = 500
# kind -> (payment token, sku, the terminal status it must reach)
KINDS = {
    "approve": ("tok_visa", "burger-classic", "finished"),
    "decline": ("tok_chargeDeclined", "burger-classic", "cancelled"),
    "out_of_stock": ("tok_visa", "truffle-risotto", "refunded"),
}
# Every order of a kind sends the same body: encoded once, not per request.
BODIES = {kind: orjson.dumps({"customer": {"name": "Bench", "email": "bench@example.com"},
                              "items": [{"sku": sku, "quantity": 1}], "payment_token": token})
          for kind, (token, sku, _) in KINDS.items()}
JSON = {"Content-Type": "application/json"}
ORDERS = "/api/v1/orders"
OPEN_ORDERS = f"{ORDERS}?" + "".join(f"status={status}&" for status in OPEN) + f"limit={LIST_LIMIT}"
POLL_WHILE_SENDING = 0.05
# What a request can raise: the client's errors, and its timeout.
HTTP_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(slots=True)
class Placed:
    kind: str
    order_id: str
    sent: float  # wall clock (time.time()) when the request went out
    http_ms: float


@dataclass
class LoadResult:
    placed: list[Placed] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # 503 with Retry-After: admission control refused the order (nothing created); not an error
    # of the stack but its answer to more load than it can finish soon.
    refused: int = 0
    http_ms: dict[str, list[float]] = field(default_factory=lambda: {
        "place": [], "poll_list": [], "get_order": []})
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> final order
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    unfinished: int = 0


def mix_sequence(mix: dict[str, float], seed: int = 7) -> Callable[[], str]:
    kinds, weights = zip(*[(k, w) for k, w in mix.items() if w > 0], strict=True)
    rng = random.Random(seed)
    return lambda: rng.choices(kinds, weights)[0]


async def _get(client: aiohttp.ClientSession, path: str) -> tuple[int, bytes]:
    """Status and whole body of a GET (the body read before it returns: latency includes it)."""
    async with client.get(path) as response:
        return response.status, await response.read()


async def restock(client: aiohttp.ClientSession, orders: int) -> None:
    """Enough of the approved sku for every order, none of the out-of-stock one."""
    for sku, units in (("burger-classic", min(1_000_000, orders + 1000)), ("truffle-risotto", 0)):
        async with client.put(f"/api/v1/production/stock/{sku}",
                              data=orjson.dumps({"available": units}), headers=JSON) as response:
            response.raise_for_status()


async def _place(client: aiohttp.ClientSession, kind: str, result: LoadResult) -> str | None:
    """POST one order; its id once accepted, else None (the error counted)."""
    sent, start = time.time(), time.perf_counter()
    try:
        # Every order carries an Idempotency-Key, as any client that might retry must send.
        headers = {**JSON, "Idempotency-Key": str(uuid.uuid4())}
        async with client.post(ORDERS, data=BODIES[kind], headers=headers) as response:
            status, body = response.status, await response.read()
            retry_after = response.headers.get("Retry-After")
    except HTTP_ERRORS as exc:
        result.errors[f"place: {type(exc).__name__}"] += 1
        return None
    elapsed = 1000 * (time.perf_counter() - start)  # to the last byte of the response, as before
    result.http_ms["place"].append(elapsed)
    if status == 503 and retry_after is not None:
        result.refused += 1
        return None
    if status != 202:
        result.errors[f"place: HTTP {status}"] += 1
        return None
    order_id: str = orjson.loads(body)["id"]
    result.placed.append(Placed(kind, order_id, sent, elapsed))
    return order_id


class HTTPStatusError(Exception):
    """A read answered with an error status (counted by its class name, like a client error)."""


async def _open_orders(client: aiohttp.ClientSession, result: LoadResult) -> set[str] | None:
    """Ids of every order not yet terminal, or None when the list was cut at its limit."""
    start = time.perf_counter()
    status, body = await _get(client, OPEN_ORDERS)
    result.http_ms["poll_list"].append(1000 * (time.perf_counter() - start))
    if status >= 400:
        raise HTTPStatusError(status)
    rows = orjson.loads(body)
    if len(rows) >= LIST_LIMIT:
        return None
    return {row["id"] for row in rows}


async def _poll(client: aiohttp.ClientSession, result: LoadResult) -> tuple[float, set[str] | None]:
    """When the poll started, and the open orders it saw (None: it could not tell)."""
    started = time.perf_counter()
    try:
        return started, await _open_orders(client, result)
    except (*HTTP_ERRORS, HTTPStatusError) as exc:
        result.errors[f"poll: {type(exc).__name__}"] += 1
        return started, None


async def send(client: aiohttp.ClientSession, result: LoadResult, *, orders: int, duration: float,
               concurrency: int, rate: float | None, next_kind: Callable[[], str],
               tick: Callable[[], None]) -> None:
    begin = time.perf_counter()
    counter = itertools.count()
    in_flight = asyncio.Semaphore(concurrency)  # a slot per saga, freed when it is seen ended
    accepted_at: dict[str, float] = {}  # sagas in flight -> when their 202 arrived
    sending = True

    def more() -> int | None:
        number = next(counter)
        due = number < orders and time.perf_counter() - begin < duration
        return number if due else None

    async def one(kind: str) -> None:
        order_id = await _place(client, kind, result)
        if order_id is None:
            in_flight.release()  # nothing in flight
        else:
            accepted_at[order_id] = time.perf_counter()
        tick()

    async def track() -> None:
        """Free the slot of each saga a poll no longer lists as open. Only a poll that started
        after the order's 202 counts: an earlier one may simply not have seen it yet."""
        while sending or accepted_at:
            started, open_ids = await _poll(client, result)
            if open_ids is not None:
                for order_id, accepted in list(accepted_at.items()):
                    if accepted < started and order_id not in open_ids:
                        del accepted_at[order_id]
                        in_flight.release()
            if not sending:
                return  # the rest is wait_terminal's
            await asyncio.sleep(POLL_WHILE_SENDING)

    async def closed_loop() -> None:
        while more() is not None:
            await in_flight.acquire()
            await one(next_kind())

    tracker = asyncio.create_task(track())
    try:
        if rate is None:
            await asyncio.gather(*(closed_loop() for _ in range(concurrency)))
        else:
            tasks = set()
            while (number := more()) is not None:
                delay = begin + number / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await in_flight.acquire()
                task = asyncio.create_task(one(next_kind()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
    finally:
        result.send_seconds = time.perf_counter() - begin
        sending = False
        await tracker


async def wait_terminal(client: aiohttp.ClientSession, result: LoadResult, *, timeout: float,
                        progress: Callable[[int], None]) -> None:
    """Poll until none of our orders is open (or ``timeout``), backing off 50 ms -> 500 ms."""
    ours = {p.order_id for p in result.placed}
    begin, pause = time.perf_counter(), 0.05
    while time.perf_counter() - begin < timeout:
        _, open_ids = await _poll(client, result)
        if open_ids is not None:
            pending = len(ours & open_ids)
            progress(len(ours) - pending)
            if not pending:
                break
        await asyncio.sleep(pause)
        pause = min(0.5, pause * 1.5)
    result.drain_seconds = time.perf_counter() - begin


async def fetch_all(client: aiohttp.ClientSession, result: LoadResult,
                    concurrency: int = 16) -> None:
    """Each order once, for its final status and timeline: ``concurrency`` reads at a time."""
    queue = [p.order_id for p in result.placed]

    async def worker() -> None:
        while queue:
            order_id = queue.pop()
            start = time.perf_counter()
            try:
                status, body = await _get(client, f"{ORDERS}/{order_id}")
                if status >= 400:
                    raise HTTPStatusError(status)
            except (*HTTP_ERRORS, HTTPStatusError) as exc:
                result.errors[f"fetch: {type(exc).__name__}"] += 1
                continue
            result.http_ms["get_order"].append(1000 * (time.perf_counter() - start))
            result.orders[order_id] = orjson.loads(body)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for placed in result.placed:
        order = result.orders.get(placed.order_id)
        expected = KINDS[placed.kind][2]
        if order is None:
            continue
        if order["status"] not in TERMINAL:
            result.unfinished += 1
            result.errors["saga: not terminal before the timeout"] += 1
        elif order["status"] != expected:
            result.errors[f"saga: {placed.kind} ended {order['status']}"] += 1


async def fetch_token(url: str, client_id: str, client_secret: str) -> str:
    """An access token for an OAuth client (client_credentials), from the stack's token endpoint."""
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/api/v1/auth/token", data={"grant_type": "client_credentials",
                                              "client_id": client_id,
                                              "client_secret": client_secret}) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"no token for {client_id}: {response.status} {body}")
        return str(body["access_token"])


def client_for(url: str, token: str, concurrency: int) -> aiohttp.ClientSession:
    """One session for the whole run (call it inside the event loop): at most ``concurrency`` + 8
    connections, kept alive between requests; no cookies; 30 s at most per request."""
    connector = aiohttp.TCPConnector(limit=concurrency + 8, keepalive_timeout=30.0)
    return aiohttp.ClientSession(base_url=url, connector=connector,
                                 headers={"Authorization": f"Bearer {token}"},
                                 cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(total=30.0))

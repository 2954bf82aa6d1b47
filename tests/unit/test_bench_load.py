"""The benchmark's client (bench/load.py) against a fake gateway: what it sends, counts and reads.

No stack: an in-process aiohttp server answers like the order and production APIs do, so the
client's bookkeeping (latencies, ids, errors, outcomes) is checked in well under a second.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from bench import load
from bench.__main__ import Progress

API_KEY = "unit-key"


class FakeGateway:
    """An order is listed open by the first poll after it was placed, and is terminal from the
    next poll on; ``ending`` forces the terminal status of every order."""

    def __init__(self, *, fail_every: int = 0, ending: str | None = None,
                 busy_every: int = 0) -> None:
        self.orders: dict[str, dict[str, object]] = {}
        self.bodies: list[dict[str, object]] = []
        self.polls = 0
        self.most_open = 0  # the most sagas in flight at any time
        self.stock: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._fail_every = fail_every
        self._busy_every = busy_every  # admission control's 503, with Retry-After
        self._ending = ending

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.post("/api/v1/orders", self.place),
                        web.get("/api/v1/orders", self.list),
                        web.get("/api/v1/orders/{id}", self.get),
                        web.put("/api/v1/production/stock/{sku}", self.restock)])
        return app

    @staticmethod
    def _authorised(request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            raise web.HTTPUnauthorized()

    async def place(self, request: web.Request) -> web.Response:
        self._authorised(request)
        number = next(self._ids)
        if self._fail_every and number % self._fail_every == 0:
            return web.json_response({"title": "boom"}, status=503)
        if self._busy_every and number % self._busy_every == 0:
            return web.json_response({"title": "Busy: the saga lags"}, status=503,
                                     headers={"Retry-After": "2"})
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        token = body["payment_token"]
        sku = body["items"][0]["sku"]
        final = self._ending or ("cancelled" if token == "tok_chargeDeclined"
                                 else "refunded" if sku == "truffle-risotto" else "finished")
        order_id = f"00000000-0000-0000-0000-{number:012d}"
        self.orders[order_id] = {"id": order_id, "status": "pending_payment", "final": final,
                                 "listed": False}
        self.most_open = max(self.most_open, sum(
            o["status"] not in load.TERMINAL for o in self.orders.values()))
        return web.json_response({"id": order_id, "status": "pending_payment"}, status=202)

    async def list(self, request: web.Request) -> web.Response:
        self._authorised(request)
        assert request.query["limit"] == str(load.LIST_LIMIT)
        assert request.query.getall("status") == list(load.OPEN)  # every open one, at once
        self.polls += 1
        for order in self.orders.values():
            if order["listed"]:
                order["status"] = order["final"]
        rows = [{"id": o["id"], "status": o["status"]} for o in self.orders.values()
                if o["status"] in load.OPEN]
        for order in self.orders.values():
            order["listed"] = order["listed"] or order["status"] in load.OPEN
        return web.json_response(rows)

    async def get(self, request: web.Request) -> web.Response:
        self._authorised(request)
        order = self.orders[request.match_info["id"]]
        return web.json_response({
            "id": order["id"], "status": order["status"],
            "timeline": [{"status": "pending_payment", "at": "2026-11-23T21:00:00+00:00"},
                         {"status": order["status"], "at": "2026-11-23T21:00:01+00:00"}]})

    async def restock(self, request: web.Request) -> web.Response:
        self._authorised(request)
        self.stock[request.match_info["sku"]] = orjson.loads(await request.read())["available"]
        return web.json_response({"sku": request.match_info["sku"]})


async def _serve(gateway: FakeGateway) -> AsyncIterator[str]:
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _run(gateway: FakeGateway, mix: dict[str, float], *, orders: int,
               rate: float | None = None) -> load.LoadResult:
    result = load.LoadResult()
    async for url in _serve(gateway):
        async with load.client_for(url, API_KEY, 4) as client:
            await load.restock(client, orders)
            await load.send(client, result, orders=orders, duration=30, concurrency=4,
                            rate=rate, next_kind=load.mix_sequence(mix), tick=lambda: None)
            await load.wait_terminal(client, result, timeout=10, progress=lambda _: None)
            await load.fetch_all(client, result, concurrency=3)
    return result


@pytest.mark.parametrize("rate", [None, 200.0], ids=["closed loop", "open loop"])
async def test_every_order_is_placed_timed_and_read_once(rate: float | None) -> None:
    gateway = FakeGateway()
    result = await _run(gateway, {"approve": 2, "decline": 1, "out_of_stock": 1}, orders=40,
                        rate=rate)

    assert gateway.stock == {"burger-classic": 1040, "truffle-risotto": 0}
    assert len(result.placed) == 40 == len(result.http_ms["place"])
    assert all(ms > 0 for ms in result.http_ms["place"])
    assert {p.order_id for p in result.placed} == set(gateway.orders) == set(result.orders)
    assert len(result.http_ms["get_order"]) == 40
    assert len(result.http_ms["poll_list"]) == gateway.polls >= 2
    assert result.errors == {} and result.unfinished == 0
    assert gateway.most_open <= 4  # the concurrency bounds sagas in flight, not requests
    # The bodies are the kinds' own: the token and sku that make each outcome.
    assert {(b["payment_token"], b["items"][0]["sku"])  # type: ignore[index]
            for b in gateway.bodies} == {(token, sku) for token, sku, _ in load.KINDS.values()}


async def test_a_refused_order_is_an_error_not_an_order() -> None:
    gateway = FakeGateway(fail_every=5)
    result = await _run(gateway, {"approve": 1}, orders=20)

    assert len(result.placed) == 16
    assert len(result.http_ms["place"]) == 20  # a refusal's latency counts too
    assert result.errors == {"place: HTTP 503": 4}


async def test_admission_control_s_refusal_is_counted_apart_not_as_an_error() -> None:
    gateway = FakeGateway(busy_every=4)
    result = await _run(gateway, {"approve": 1}, orders=20)

    assert len(result.placed) == 15
    assert result.refused == 5
    assert result.errors == {}


async def test_an_order_ending_elsewhere_than_its_kind_must_is_an_error() -> None:
    gateway = FakeGateway(ending="refunded")
    result = load.LoadResult()
    async for url in _serve(gateway):
        async with load.client_for(url, API_KEY, 2) as client:
            await load.send(client, result, orders=3, duration=30, concurrency=2, rate=None,
                            next_kind=load.mix_sequence({"approve": 1}), tick=lambda: None)
            await load.wait_terminal(client, result, timeout=10, progress=lambda _: None)
            await load.fetch_all(client, result)

    assert result.errors == {"saga: approve ended refunded": 3}


async def test_an_unreachable_gateway_is_counted_per_order() -> None:
    result = load.LoadResult()
    async with load.client_for("http://127.0.0.1:9", API_KEY, 2) as client:
        await load.send(client, result, orders=3, duration=30, concurrency=2, rate=None,
                        next_kind=load.mix_sequence({"approve": 1}), tick=lambda: None)

    assert result.placed == [] and result.http_ms["place"] == []
    assert result.errors["place: ClientConnectorError"] == 3
    assert result.errors["poll: ClientConnectorError"] >= 1  # the in-flight tracker's too


def test_the_progress_bar_is_not_redrawn_for_every_order(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    monkeypatch.setattr("bench.__main__.time.monotonic", lambda: now[0])
    progress = Progress(enabled=True)
    progress.start("placing", 4)  # drawn
    for now[0] in (0.01, 0.02, 0.03, 0.5):
        progress.update()  # too soon three times, then drawn
    progress.finish()  # always drawn

    assert capsys.readouterr().err.count("\r") == 3

"""A customer's data through the gateway: export (right of access), erasure, and the proof that
nothing personal is left anywhere afterwards while orders and the ledger still balance."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from identity import handlers as identity_handlers
from order import handlers as order_handlers
from payment import handlers as payment_handlers
from production import handlers as production_handlers
from sagakit.deadletters import ParkedQueue
from sagakit.settings import ServiceSettings
from sagakit.topology import retry_queue
from tests.e2e.conftest import TERMINAL, wait_for
from tests.e2e.test_archive import archive_of
from tests.tokens import Account


def poll(get: Callable[[], httpx.Response], done: Callable[[httpx.Response], object],
         timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = get()
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


@pytest.fixture
def customer(stack, anonymous) -> Iterator[dict[str, Any]]:
    """A customer of their own (erasing Ana would spoil other tests), with distinct details."""
    tag = uuid.uuid4().hex[:8]
    person = {"name": f"Zelda Quimby{tag}", "email": f"zelda.{tag}@example.com",
              "holder": f"Zelda Holder{tag}", "password": f"pw-{tag}-long-enough"}
    signed = anonymous.post("/api/v1/customers", json={
        "name": person["name"], "email": person["email"], "password": person["password"]})
    assert signed.status_code == 201, signed.text
    token = Account("customer", {"grant_type": "password", "username": person["email"],
                                 "password": person["password"]}).token(stack.base_url)
    http = httpx.Client(base_url=stack.base_url, timeout=10,
                        headers={"Authorization": f"Bearer {token}"})
    yield {**person, "id": signed.json()["id"], "http": http}
    http.close()


def _place_three(http: httpx.Client, holder: str) -> list[str]:
    card = http.post("/api/v1/payments/cards", json={
        "number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2040, "cvc": "123",
        "holder": holder})
    assert card.status_code == 201, card.text
    ids = []
    for token, sku in ((card.json()["token"], "fries"), ("tok_visa", "burger-classic"),
                       ("tok_visa", "fries")):
        placed = http.post("/api/v1/orders", json={
            "items": [{"sku": sku, "quantity": 1}], "payment_token": token})
        assert placed.status_code == 202, placed.text
        ids.append(placed.json()["id"])
    return ids


def _database_text(url: str) -> str:
    async def dump() -> str:
        conn = await asyncpg.connect(url)
        try:
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            parts = [str(await conn.fetch(f'SELECT t::text FROM "{t["tablename"]}" t'))
                     for t in tables]
        finally:
            await conn.close()
        return "\n".join(parts)
    return asyncio.run(dump())


def _redis_text(url: str) -> str:
    async def dump() -> str:
        redis = Redis.from_url(url, decode_responses=True)
        parts = []
        try:
            async for key in redis.scan_iter(count=1000):
                kind = await redis.type(key)
                assert isinstance(kind, str)  # decode_responses
                readers: dict[str, Callable[[str], Awaitable[object]]] = {
                    "string": redis.get, "hash": redis.hgetall,
                    "list": lambda k: redis.lrange(k, 0, -1), "set": redis.smembers,
                    "zset": lambda k: redis.zrange(k, 0, -1),
                    "stream": redis.xrange}
                read = readers[kind]
                parts.append(f"{key} {await read(key)}")
        finally:
            await redis.aclose()
        return "\n".join(parts)
    return asyncio.run(dump())


def _queued_text(client: httpx.Client, stack) -> str:
    """Every message in every queue of the stack, read without taking it: the parked ones
    through the operator API, the consumer and retry queues straight from the broker."""
    texts = []
    for path in ("order", "payment", "production", "identity"):
        response = client.get(f"/api/v1/ops/{path}/dead-letters", params={"limit": 1000})
        assert response.status_code == 200, response.text
        texts.append(response.text)
    texts.append(client.get("/api/v1/ops/unrouted", params={"limit": 1000}).text)
    names = [q.name for handlers in (order_handlers, payment_handlers, production_handlers,
                                     identity_handlers) for q in handlers.QUEUES]
    delays = json.loads(stack.env.get("RETRY_DELAYS_MS", "[]")) or \
        ServiceSettings().retry_delays_ms
    names += [retry_queue(delay).name for delay in delays]
    for name in names:
        texts.append(asyncio.run(ParkedQueue(stack.rabbitmq_url, name).list(1000))
                     .model_dump_json())
    return "\n".join(texts)


def test_export_then_erasure_leaves_nothing_personal_and_the_books_balance(
    customer, client, stack
):
    http = customer["http"]
    order_ids = _place_three(http, customer["holder"])
    for order_id in order_ids:
        assert wait_for(http, order_id, TERMINAL)["status"] == "finished"

    # Right of access: 202 while the services answer, then everything each store held.
    first = http.get("/api/v1/customers/me/data")
    assert first.status_code in (200, 202), first.text
    export = poll(lambda: http.get("/api/v1/customers/me/data"),
                  lambda r: r.status_code == 200)
    assert export.status_code == 200, export.text
    data = export.json()["data"]
    assert export.json()["id"] == first.json()["id"] and export.json()["parts_missing"] == []
    assert data["identity"]["account"]["email"] == customer["email"]
    assert data["identity"]["account"]["name"] == customer["name"]
    orders = {o["id"]: o for o in data["order"]["orders"]}
    assert set(orders) == set(order_ids)
    assert {o["customer_email"] for o in orders.values()} == {customer["email"]}
    assert {o["customer_name"] for o in orders.values()} == {customer["name"]}
    [kept_card] = data["payment"]["cards"]
    assert kept_card["holder"] == customer["holder"] and kept_card["last4"] == "4242"
    assert "4242424242424242" not in export.text
    charges = [p for p in data["payment"]["ledger"] if p["kind"] == "charge"]
    assert {p["order_id"] for p in charges} == set(order_ids)
    assert data["production"]["personal_data"] == []

    # Erasure: 202, complete once every service confirmed; asking again is the same erasure.
    asked = http.delete("/api/v1/customers/me")
    assert asked.status_code in (200, 202), asked.text
    status = poll(lambda: client.get(f"/api/v1/customers/{customer['id']}/erasure"),
                  lambda r: r.json().get("status") == "complete")
    assert status.json()["status"] == "complete", status.text
    again = client.delete(f"/api/v1/customers/{customer['id']}")
    assert again.status_code == 200 and again.json()["id"] == asked.json()["id"]
    erased = [r for r in client.get("/api/v1/ops/identity/audit",
                                    params={"action": "customer.erase"}).json()["records"]
              if r["target"] == customer["id"]]
    assert erased and erased[0]["actor"] == "ops-console"

    # The books still balance: three finished orders, three approved charges of their totals.
    for order_id in order_ids:
        order = client.get(f"/api/v1/orders/{order_id}").json()
        assert order["status"] == "finished"
        ledger = client.get("/api/v1/payments", params={"order_id": order_id}).json()
        [charge] = [p for p in ledger if p["kind"] == "charge"]
        assert Decimal(charge["amount"]) == Decimal(order["total"])
        assert charge["status"] == "approved"

    # The customer's token, issued before the erasure, is still valid until it expires: it
    # can read what is left, and write nothing personal again (no order, no card).
    assert http.get(f"/api/v1/orders/{order_ids[0]}").json()["customer"]["name"] == "[erased]"
    for attempt in ({}, {"Idempotency-Key": str(uuid.uuid4())}):
        refused = http.post("/api/v1/orders", headers=attempt, json={
            "items": [{"sku": "fries", "quantity": 1}], "payment_token": "tok_visa"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["title"] == "Account erased"
        assert [e["field"] for e in refused.json()["errors"]] == ["Authorization"]
    refused = http.post("/api/v1/payments/cards", json={
        "number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2040, "cvc": "123",
        "holder": customer["holder"]})
    assert refused.status_code == 403, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["Authorization"]
    refused = http.get("/api/v1/orders/webhook-secret")
    assert refused.status_code == 403, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["Authorization"]
    assert {o["id"] for o in http.get("/api/v1/orders").json()} == set(order_ids)

    # Nothing personal left: every table, Redis key and stream, parked message, the archive,
    # and every log line of the stack.
    personal = (customer["name"], customer["email"], customer["holder"])
    urls = stack.store_urls()
    places = {name: (_redis_text(url) if url.startswith("redis") else _database_text(url))
              for name, url in urls.items()}
    places["queues"] = _queued_text(client, stack)
    places["archive"] = str([archive_of(client, o) for o in order_ids]) + "".join(
        client.get(f"/api/v1/ops/{s}/archive", params={"order_id": customer["id"]}).text
        for s in ("order", "payment", "production", "identity"))
    places.update({f"log {n}": text for n, text in stack.service_logs().items()})
    places["gateway log"] = stack.gateway_log()
    for where, text in places.items():
        for value in personal:
            assert value.lower() not in text.lower(), f"{value!r} is still in {where}"
    assert "[erased]" in places["order"]  # the rows are there, anonymised

    # The account is gone: its password no longer logs in.
    login = httpx.post(f"{stack.base_url}/api/v1/auth/token", data={
        "grant_type": "password", "username": customer["email"],
        "password": customer["password"]})
    assert login.status_code == 400


def test_the_customer_data_routes_check_who_asks(anonymous, ana, client, machine):
    assert anonymous.get("/api/v1/customers/me/data").status_code == 401
    assert machine.get("/api/v1/customers/me/data").status_code == 404  # not a customer
    assert machine.delete("/api/v1/customers/me").status_code == 404
    assert ana.get(f"/api/v1/customers/{uuid.uuid4()}/data").status_code == 403
    assert ana.delete(f"/api/v1/customers/{uuid.uuid4()}").status_code == 403
    missing = client.get(f"/api/v1/customers/{uuid.uuid4()}/data")
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "customer_id"
    bad = client.delete("/api/v1/customers/not-a-uuid")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "customer_id"


def test_an_erasure_asked_while_a_service_is_down_completes_when_it_is_back(
    customer, client, stack
):
    http = customer["http"]
    for order_id in _place_three(http, customer["holder"]):
        wait_for(http, order_id, TERMINAL)  # else order's part would wait for payment too
    replicas = stack.replicas("payment")
    for replica in replicas:
        stack.kill(replica.name, signal.SIGKILL)
    try:
        deadline = time.monotonic() + 10
        while any(stack.running(r.name) for r in replicas):
            assert time.monotonic() < deadline, "payment survived SIGKILL"
            time.sleep(0.05)
        # Its probe through the gateway says what a load balancer reads as "not ready".
        probe = client.get("/health/payment/ready")
        assert probe.status_code == 503, probe.text
        assert probe.json()["status"] == 503 and probe.json()["request_id"]
        asked = http.delete("/api/v1/customers/me")
        assert asked.status_code == 202, asked.text
        waiting = poll(lambda: client.get(f"/api/v1/customers/{customer['id']}/erasure"),
                       lambda r: r.json()["parts_received"] == ["order", "production"])
        assert waiting.json()["status"] == "pending"
        assert waiting.json()["parts_missing"] == ["payment"], waiting.text
    finally:
        stack.restart_missing()
    done = poll(lambda: client.get(f"/api/v1/customers/{customer['id']}/erasure"),
                lambda r: r.json()["status"] == "complete", timeout=30)
    assert done.json()["status"] == "complete", done.text
    assert done.json()["parts_missing"] == []

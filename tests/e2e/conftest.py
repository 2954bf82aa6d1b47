"""The whole stack, started once per test session in native mode, isolated from `make up`'s.

It runs on its own ports (gateway 18080), its own databases (``orders_test``, ``payments_test``,
dropped and recreated each session), Redis database 1 and the RabbitMQ vhost ``saga_test``, with
the kitchen's preparation time at 0. Two test sessions can run side by side on one machine with
``TEST_PORT_BASE`` (default 18000: gateway at +80, services at +1..+3, their second replicas at
+11..+13), ``TEST_DB_SUFFIX`` (default ``_test``) and their own ``TEST_RABBITMQ_URL`` vhost and
``TEST_REDIS_URL`` database.

Every service runs two replicas behind the gateway, as production would. The gateway has two API
keys: ``API_KEY``, which the ``client`` fixture sends with every request, and ``FLOOD_KEY``, used
only to exceed the (deliberately modest) rate limit without touching anyone else's budget.

The services export their spans and logs over OTLP/HTTP to a receiver the tests start
(:mod:`tests.e2e.otlp`), in small batches (200 ms), as they would to a collector.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from deploy import native
from tests.e2e.otlp import Receiver

REPO = Path(__file__).resolve().parents[2]
_BASE = int(os.environ.get("TEST_PORT_BASE", "18000"))
DB_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "_test")
RUN_DIR = REPO / ".run" / f"test{_BASE}"
PORTS = {"GATEWAY_PORT": str(_BASE + 80), "ORDER_HTTP_PORT": str(_BASE + 1),
         "PAYMENT_HTTP_PORT": str(_BASE + 2), "PRODUCTION_HTTP_PORT": str(_BASE + 3)}
TERMINAL = {"finished", "cancelled", "refunded"}
API_KEY = "e2e-main-key-0123456789"
FLOOD_KEY = "e2e-flood-key-0123456789"
RATE_LIMIT, RATE_BURST = 200, 100  # per second, per client: far above what one test sends
REPLICAS = 2


@dataclass(frozen=True)
class Stack:
    base_url: str
    rabbitmq_url: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def otlp() -> Iterator[Receiver]:
    """What the stack's services export (spans, log records), as a collector would get it."""
    receiver = Receiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="session")
def stack(infra, otlp: Receiver) -> Iterator[Stack]:
    native.down(RUN_DIR)
    env = {
        # The caller's OTEL_* settings (a service name, a sampler) must not leak in.
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **PORTS,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "SAGA_RUN_DIR": str(RUN_DIR),
        "RABBITMQ_URL": infra.rabbitmq_url,
        "POSTGRES_ADMIN_URL": infra.postgres_admin_url,
        "ORDER_DATABASE_URL": infra.postgres_url(f"orders{DB_SUFFIX}", "order_svc", "order_svc"),
        "PAYMENT_DATABASE_URL": infra.postgres_url(f"payments{DB_SUFFIX}", "payment_svc",
                                                   "payment_svc"),
        "PRODUCTION_REDIS_URL": infra.redis_url,
        "PRODUCTION_PREPARATION_SECONDS": "0",
        # Small pools: this stack shares PostgreSQL's 100 connections with the other test stack
        # and the integration tests' services, replicas included.
        "ORDER_DB_POOL_SIZE": "4",
        "PAYMENT_DB_POOL_SIZE": "4",
        "RETRY_DELAYS_MS": "[50, 200, 1000, 3000]",
        "GATEWAY_API_KEYS": f"{API_KEY}|{FLOOD_KEY}",
        "GATEWAY_RATE_LIMIT": f"{RATE_LIMIT}r/s",
        "GATEWAY_RATE_BURST": str(RATE_BURST),
        **{f"{service.upper()}_REPLICAS": str(REPLICAS) for service in native.SERVICES},
    }
    native.drop_service_databases(env)
    redis.Redis.from_url(infra.redis_url).flushdb()
    native.up(env, RUN_DIR, timeout=120)
    try:
        yield Stack(f"http://127.0.0.1:{PORTS['GATEWAY_PORT']}", infra.rabbitmq_url, env)
    finally:
        native.down(RUN_DIR)


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[httpx.Client]:
    """A client with the API key: it may write."""
    with httpx.Client(base_url=stack.base_url, timeout=10,
                      headers={"X-API-Key": API_KEY}) as http:
        yield http


@pytest.fixture(scope="session")
def anonymous(stack: Stack) -> Iterator[httpx.Client]:
    """A client without credentials (its rate limit is per address, not per key)."""
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        yield http


CUSTOMER = {"name": "Ana", "email": "ana@example.com"}


def order_body(items: list[tuple[str, int]], token: str = "tok_visa") -> dict[str, Any]:
    return {"customer": CUSTOMER, "items": [{"sku": s, "quantity": q} for s, q in items],
            "payment_token": token}


def place(client: httpx.Client, items: list[tuple[str, int]], token: str = "tok_visa",
          **kwargs: Any) -> httpx.Response:
    return client.post("/api/v1/orders", json=order_body(items, token), **kwargs)


def gateway_log(request_ids: set[str], timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """The gateway's access log lines of these requests (nginx writes them just after replying)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for line in (RUN_DIR / "logs" / "gateway.log").read_text().splitlines():
            if line.startswith("{") and (entry := json.loads(line))["request_id"] in request_ids:
                found[entry["request_id"]] = entry
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def newest_order(client: httpx.Client) -> str | None:
    orders = client.get("/api/v1/orders", params={"limit": 1}).json()
    return orders[0]["id"] if orders else None


def wait_for(client: httpx.Client, order_id: str, statuses: set[str],
              timeout: float = 20.0) -> dict[str, Any]:
    """Poll the order until its status is one of ``statuses``; fail with its last state."""
    deadline = time.monotonic() + timeout
    order: dict[str, Any] = {}
    while time.monotonic() < deadline:
        order = client.get(f"/api/v1/orders/{order_id}").json()
        if order.get("status") in statuses:
            return order
        time.sleep(0.05)
    raise AssertionError(f"order {order_id} never reached {statuses}: {order}")


def payments_of(client: httpx.Client, order_id: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/payments", params={"order_id": order_id})
    assert response.status_code == 200, response.text
    return response.json()


def stock_of(client: httpx.Client, sku: str) -> int:
    rows = client.get("/api/v1/production/stock").json()
    return next(r["available"] for r in rows if r["sku"] == sku)


def set_stock(client: httpx.Client, sku: str, available: int) -> None:
    response = client.put(f"/api/v1/production/stock/{sku}", json={"available": available})
    assert response.status_code == 200, response.text

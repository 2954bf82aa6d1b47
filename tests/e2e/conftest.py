"""The whole stack, started once per test session in native mode, isolated from `make up`'s.

It runs on its own ports (gateway 18080), its own databases (``orders_test``, ``payments_test``,
dropped and recreated each session), Redis database 1 and the RabbitMQ vhost ``saga_test``, with
the kitchen's preparation time at 0. Two test sessions can run side by side on one machine with
``TEST_PORT_BASE`` (default 18000: gateway at +80, services at +1..+3, their second replicas at
+11..+13), ``TEST_DB_SUFFIX`` (default ``_test``) and their own ``TEST_RABBITMQ_URL`` vhost and
``TEST_REDIS_URL`` database.

Every service runs two replicas behind the gateway, as production would, and the identity
service one, seeding the development accounts (tests/tokens.py). The ``client`` fixture is the
operator console (``ops-console``: every order, the kitchen, dead letters; it places orders for
the customer it names); ``ana``, ``bob`` and ``machine`` are the other roles, ``anonymous`` has
no token. Rate limits are per client address: a test that floods connects from 127.0.0.2, its
own budget.

The services export their spans and logs over OTLP/HTTP to a receiver the tests start
(:mod:`tests.e2e.otlp`), in small batches (200 ms), as they would to a collector.

With ``--stack=compose`` (``make test-compose``) the same tests run against a compose project
``saga-e2e`` of this repository's docker-compose.yml (gateway on ``TEST_PORT_BASE`` + 10080, the
same knobs, two replicas of each service), its traces and logs read back from Jaeger and Seq.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from deploy import native
from tests.e2e.otlp import QueryBackends, Receiver
from tests.stacks import ComposeStack, NativeStack, Stack, stack_mode
from tests.tokens import ANA, BOB, MACHINE, OPERATOR, Account, bearer

REPO = Path(__file__).resolve().parents[2]
_BASE = int(os.environ.get("TEST_PORT_BASE", "18000"))
DB_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "_test")
RUN_DIR = REPO / ".run" / f"test{_BASE}"
PORTS = {"GATEWAY_PORT": str(_BASE + 80), "ORDER_HTTP_PORT": str(_BASE + 1),
         "PAYMENT_HTTP_PORT": str(_BASE + 2), "PRODUCTION_HTTP_PORT": str(_BASE + 3),
         "IDENTITY_HTTP_PORT": str(_BASE + 4)}
TERMINAL = {"finished", "cancelled", "refunded"}
# The gateway's limits for this stack, raised above the defaults: every test shares 127.0.0.1's
# budget, and the fuzzer sends as fast as the stack answers. Still low enough that a flood meets
# them (test_hardening.py); the client timeout is short so the slow-client tests are quick.
RATE_LIMIT, RATE_BURST = 200, 100  # per second, per client: far above what one test sends
LIST_RATE_LIMIT, LIST_RATE_BURST = 50, 100
CONN_LIMIT = 32
CLIENT_TIMEOUT = 3  # seconds
REPLICAS = 2
# Admission control's bound for this stack (test_admission.py), low so a test reaches it with a
# few dozen orders, still far above what the other tests ever leave waiting at once.
ADMISSION_BOUND = 40


COMPOSE_PORT_BASE = _BASE + 10000  # gateway 28080, the rest: tests/stacks.py


@pytest.fixture(scope="session")
def otlp(request: pytest.FixtureRequest) -> Iterator[Receiver | QueryBackends]:
    """What the stack's services export (spans, log records): natively as a collector would get
    it (a receiver the tests start), in compose mode as Jaeger and Seq show it."""
    if stack_mode(request.config) == "compose":
        stack = request.getfixturevalue("stack")
        yield QueryBackends(stack.jaeger_url, stack.seq_url)
        return
    receiver = Receiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


# The stack's knobs, the same in both run modes.
KNOBS = {
    "PRODUCTION_PREPARATION_SECONDS": "0",
    # Small pools: this stack shares PostgreSQL's 100 connections with the other test stack
    # and the integration tests' services, replicas included.
    "ORDER_DB_POOL_SIZE": "4",
    "PAYMENT_DB_POOL_SIZE": "4",
    "RETRY_DELAYS_MS": "[50, 200, 1000, 3000]",
    # A session outlives the default 15 minutes in compose mode; the clients keep one token.
    "IDENTITY_TOKEN_TTL_SECONDS": "7200",
    "GATEWAY_RATE_LIMIT": f"{RATE_LIMIT}r/s",
    "GATEWAY_RATE_BURST": str(RATE_BURST),
    "GATEWAY_LIST_RATE_LIMIT": f"{LIST_RATE_LIMIT}r/s",
    "GATEWAY_LIST_RATE_BURST": str(LIST_RATE_BURST),
    "GATEWAY_CONN_LIMIT": str(CONN_LIMIT),
    "GATEWAY_CLIENT_TIMEOUT": f"{CLIENT_TIMEOUT}s",
    # Webhooks to the tests' own receiver on this host (tests/e2e/test_webhooks.py), retried
    # quickly and parked after three attempts.
    "WEBHOOK_ALLOWED_HOSTS": "http://127.0.0.1 http://host.docker.internal",
    "WEBHOOK_MAX_ATTEMPTS": "3",
    "WEBHOOK_BACKOFF_SECONDS": "0.2",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "ORDER_ADMISSION_MAX_WAITING": str(ADMISSION_BOUND),
}


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    if stack_mode(request.config) == "compose":
        compose = ComposeStack("saga-e2e", COMPOSE_PORT_BASE, KNOBS,
                               dict.fromkeys(native.SERVICES, REPLICAS))
        compose.start()
        try:
            yield compose
        finally:
            compose.stop()
        return
    infra = request.getfixturevalue("infra")
    otlp: Receiver = request.getfixturevalue("otlp")
    native.down(RUN_DIR)
    shutil.rmtree(RUN_DIR / "logs", ignore_errors=True)  # the log checks read this session's only
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
        "IDENTITY_DATABASE_URL": infra.postgres_url(f"identity{DB_SUFFIX}", "identity_svc",
                                                    "identity_svc"),
        "PRODUCTION_REDIS_URL": infra.redis_url,
        **KNOBS,
        **{f"{service.upper()}_REPLICAS": str(REPLICAS) for service in native.SERVICES},
    }
    native.drop_service_databases(env)
    redis.Redis.from_url(infra.redis_url).flushdb()
    running = NativeStack(f"http://127.0.0.1:{PORTS['GATEWAY_PORT']}", infra.rabbitmq_url, env,
                          RUN_DIR).start()
    try:
        yield running
    finally:
        running.stop()


def _client_as(stack: Stack, account: Account) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=10,
                      headers=bearer(account.token(stack.base_url))) as http:
        yield http


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[httpx.Client]:
    """The operator console's client: it may do everything, and orders for named customers."""
    yield from _client_as(stack, OPERATOR)


@pytest.fixture(scope="session")
def ana(stack: Stack) -> Iterator[httpx.Client]:
    """Customer Ana Souza (ana@example.com)."""
    yield from _client_as(stack, ANA)


@pytest.fixture(scope="session")
def bob(stack: Stack) -> Iterator[httpx.Client]:
    """Customer Bob Lima (bob@example.com)."""
    yield from _client_as(stack, BOB)


@pytest.fixture(scope="session")
def machine(stack: Stack) -> Iterator[httpx.Client]:
    """The machine client ``loadgen`` (scope orders: its own orders, for customers it names)."""
    yield from _client_as(stack, MACHINE)


@pytest.fixture
def signed_up(stack: Stack) -> Iterator[httpx.Client]:
    """A customer of the test's own, just signed up: what it does touches no other test."""
    tag = uuid.uuid4().hex[:12]
    email, password = f"test.{tag}@example.com", f"test-{tag}-password"
    signed = httpx.post(f"{stack.base_url}/api/v1/customers", timeout=10, json={
        "name": "Test Customer", "email": email, "password": password})
    assert signed.status_code == 201, signed.text
    yield from _client_as(stack, Account("customer", {"grant_type": "password",
                                                      "username": email, "password": password}))


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


def gateway_log(stack: Stack, request_ids: set[str],
                timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """The gateway's access log lines of these requests (nginx writes them just after replying)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for line in stack.gateway_log().splitlines():
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
    payments: list[dict[str, Any]] = response.json()
    return payments


def stock_of(client: httpx.Client, sku: str) -> int:
    rows = client.get("/api/v1/production/stock").json()
    available: int = next(r["available"] for r in rows if r["sku"] == sku)
    return available


def set_stock(client: httpx.Client, sku: str, available: int) -> None:
    response = client.put(f"/api/v1/production/stock/{sku}", json={"available": available})
    assert response.status_code == 200, response.text


# --- Raw HTTP: what no well-behaved client library sends -----------------------------------------


@dataclass
class Raw:
    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# Rate limits are per client address: the flooder connects from another loopback address, so
# its budget is its own (in compose the published port's NAT shows every host client as one).
FLOODER = "127.0.0.2"


def parse_responses(raw: bytes) -> list[Raw]:
    """The HTTP/1.1 responses in `raw`, in order (every answer here has a Content-Length)."""
    responses = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        parsed = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
        length = int(parsed["content-length"])
        responses.append(Raw(int(status_line.split()[1]), parsed, raw[:length]))
        raw = raw[length:]
    return responses


def connect(base_url: str, source: str = "127.0.0.1", timeout: float = 30) -> socket.socket:
    url = urlsplit(base_url)
    assert url.hostname and url.port
    return socket.create_connection((url.hostname, url.port), timeout=timeout,
                                    source_address=(source, 0))


def send_raw(base_url: str, request: bytes, source: str = "127.0.0.1") -> Raw:
    """One request written byte for byte as given; the gateway's one answer to it."""
    with connect(base_url, source) as sock:
        sock.sendall(request)
        raw = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    (response,) = parse_responses(raw)
    return response


def flood(base_url: str, method: str, path: str, headers: dict[str, str],
          count: int, source: str = FLOODER) -> list[Raw]:
    """`count` requests pipelined on one connection: as fast as nginx reads, whatever the client."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (f"{method} {path} HTTP/1.1\r\nHost: {urlsplit(base_url).netloc}\r\n"
               f"Content-Length: 0\r\n{fields}")
    with connect(base_url, source) as sock:
        sock.sendall(f"{request}\r\n".encode() * (count - 1)
                     + f"{request}Connection: close\r\n\r\n".encode())
        raw = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    responses = parse_responses(raw)
    assert len(responses) == count
    return responses


def wait_until_allowed(http: httpx.Client, path: str, timeout: float = 10.0) -> None:
    """Wait until the client's address is let in again, then until its buckets are full.

    Through compose's published port every host client is one address (Docker's proxy), so a
    flood empties the bucket of the tests after it too: one request let in means a bucket with
    room for one, and a page that loads ten files right after would meet a 429."""
    deadline = time.monotonic() + timeout
    while http.get(path).status_code == 429:
        assert time.monotonic() < deadline, "the rate limit never let this client back in"
        time.sleep(0.1)
    time.sleep(max(RATE_BURST / RATE_LIMIT, LIST_RATE_BURST / LIST_RATE_LIMIT))


# --- A real browser: Debian's Chromium driven by Playwright (tests/e2e/test_browser.py) ---------

CHROMIUM = os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium (deploy/bootstrap.sh installs it), never a browser Playwright downloads.
    Missing, it skips the browser tests, and fails them under CI=true.

    Per module, not per session: Playwright's sync API keeps its event loop marked as running
    in the main thread while it is open, and later tests call ``asyncio.run`` there."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: run deploy/bootstrap.sh as root (it apt-get installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class Tab:
    """A fresh browser tab (its own sessionStorage) that records every URL it requests."""

    def __init__(self, browser: Any, base_url: str, **context: Any) -> None:
        self.base_url = base_url
        self.context = browser.new_context(base_url=base_url, **context)
        self.context.set_default_timeout(20_000)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))

    def foreign_requests(self) -> list[str]:
        """Requests that left the gateway's origin (a CDN, a font, a tracker): none may."""
        return [url for url in self.requests if not url.startswith(self.base_url + "/")]


@pytest.fixture
def tab(chromium: Any, stack: Stack) -> Iterator[Tab]:
    """A tab on the gateway; at the end, every request it made must have stayed on the origin."""
    opened = Tab(chromium, stack.base_url)
    try:
        yield opened
        assert opened.foreign_requests() == [], "requests left the gateway's origin"
    finally:
        opened.context.close()

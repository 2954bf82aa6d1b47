"""A stack of its own for the chaos tests, a steady load through nginx, and the books to check.

With ``--stack=compose`` the chaos stack is the compose project ``saga-chaos`` (gateway on
``TEST_PORT_BASE`` + 10580), with the same replicas and knobs; a broker or database restart is
``docker compose stop``/``start`` of its container.

The chaos stack is isolated from the e2e one (both can live in one session): gateway and services
at ``TEST_PORT_BASE`` + 500 (so 18580, 18501-18503 ...), databases ``*<TEST_DB_SUFFIX>_chaos``,
the vhost ``<e2e vhost>_chaos`` and Redis database ``TEST_CHAOS_REDIS_DB`` (default 2). Three
payment replicas compete for the same queue; order and production run two each.

After each scenario :func:`Books.settle` checks what an operator would: every accepted order
reached exactly one terminal status, one approved charge per paid order, at most one refund and
none without a charge, every outbox empty, and each dead-letter queue holding exactly the
poison the scenario injected. The balance of each scenario is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from deploy import native
from tests.stacks import ComposeStack, NativeStack, stack_mode
from tests.tokens import OPERATOR, bearer

REPO = Path(__file__).resolve().parents[2]
_BASE = int(os.environ.get("TEST_PORT_BASE", "18000")) + 500
DB_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "_test") + "_chaos"
REDIS_DB = int(os.environ.get("TEST_CHAOS_REDIS_DB", "2"))
RUN_DIR = REPO / ".run" / f"chaos{_BASE}"
TERMINAL = {"finished", "cancelled", "refunded"}
REPLICAS = {"order": 2, "payment": 3, "production": 2}
# Long enough that an event waiting out a broker or database restart is retried, not parked,
# and that an early event outlasts its predecessor's longest hold-up: a killed kitchen replica's
# unpublished outbox entries wait up to claim_idle_ms + claim_every_seconds (~20 s) for another
# replica to claim them (tests/unit/test_settings_budget.py checks the sum). With 18 s here a
# loaded machine once parked a production.finished whose production.started was still held.
RETRY_DELAYS_MS = "[50, 200, 1000, 2000, 5000, 10000, 20000]"
FULL = os.environ.get("CHAOS_FULL", "") == "1"
# Deselected (tests/conftest.py), not skipped, without CHAOS_FULL=1: a skip in CI reads as a check.
full_only = pytest.mark.full_chaos

BALANCES: list[dict[str, Any]] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``database``: every database server of the run mode (tests/stacks.py ``databases``):
    natively the one PostgreSQL cluster; in compose each service's own, Redis included."""
    if "database" in metafunc.fixturenames:
        compose = stack_mode(metafunc.config) == "compose"
        metafunc.parametrize("database", ["order-db", "payment-db", "redis"] if compose
                             else ["postgresql"])


@dataclass
class ChaosStack:
    """The chaos stack (native or compose: tests/stacks.py) and where its books are kept."""

    stack: NativeStack | ComposeStack
    order_db: str
    payment_db: str
    redis_url: str

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def rabbitmq_url(self) -> str:
        return self.stack.rabbitmq_url

    def restart_missing(self) -> None:
        self.stack.restart_missing()

    def log(self, name: str) -> str:
        return self.stack.log(name)


KNOBS = {
    "PRODUCTION_PREPARATION_SECONDS": "0.02",
    # Small pools: this stack shares PostgreSQL's 100 connections with the other test stack
    # and the integration tests' services, replicas included.
    "ORDER_DB_POOL_SIZE": "4",
    "PAYMENT_DB_POOL_SIZE": "4",
    "RETRY_DELAYS_MS": RETRY_DELAYS_MS,
    "IDENTITY_TOKEN_TTL_SECONDS": "7200",
    # The load is one client sending as fast as the stack takes: no gateway limit in its way.
    "GATEWAY_RATE_LIMIT": "100000r/s",
    "GATEWAY_RATE_BURST": "100000",
    "GATEWAY_LIST_RATE_LIMIT": "100000r/s",
    "GATEWAY_LIST_RATE_BURST": "100000",
    "GATEWAY_CONN_LIMIT": "10000",
}


@pytest.fixture(scope="session")
def chaos(request: pytest.FixtureRequest) -> Iterator[ChaosStack]:
    if stack_mode(request.config) == "compose":
        compose = ComposeStack("saga-chaos", _BASE + 10000, KNOBS, REPLICAS).start()
        try:
            yield ChaosStack(compose, compose.postgres_url("order"),
                             compose.postgres_url("payment"), compose.redis_url)
        finally:
            compose.stop()
        return
    infra = request.getfixturevalue("infra")
    native.down(RUN_DIR)
    vhost_url = infra.fresh_vhost(f"{infra.namespace}_chaos")
    redis_url = infra.redis_db(REDIS_DB)
    order_db = infra.postgres_url(f"orders{DB_SUFFIX}", "order_svc", "order_svc")
    payment_db = infra.postgres_url(f"payments{DB_SUFFIX}", "payment_svc", "payment_svc")
    env = {
        # Nothing is exported (no OTEL_* endpoint): the e2e tests check the telemetry.
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "SAGA_RUN_DIR": str(RUN_DIR),
        "GATEWAY_PORT": str(_BASE + 80), "ORDER_HTTP_PORT": str(_BASE + 1),
        "PAYMENT_HTTP_PORT": str(_BASE + 2), "PRODUCTION_HTTP_PORT": str(_BASE + 3),
        "IDENTITY_HTTP_PORT": str(_BASE + 4),
        "IDENTITY_DATABASE_URL": infra.postgres_url(f"identity{DB_SUFFIX}", "identity_svc",
                                                    "identity_svc"),
        "RABBITMQ_URL": vhost_url,
        "POSTGRES_ADMIN_URL": infra.postgres_admin_url,
        "ORDER_DATABASE_URL": order_db, "PAYMENT_DATABASE_URL": payment_db,
        "PRODUCTION_REDIS_URL": redis_url,
        **KNOBS,
        **{f"{s.upper()}_REPLICAS": str(n) for s, n in REPLICAS.items()},
    }
    native.drop_service_databases(env)
    redis.Redis.from_url(redis_url).flushdb()
    running = NativeStack(f"http://127.0.0.1:{_BASE + 80}", vhost_url, env, RUN_DIR).start()
    try:
        yield ChaosStack(running, order_db, payment_db, redis_url)
    finally:
        running.stop()


@pytest.fixture(scope="session")
def client(chaos: ChaosStack) -> Iterator[httpx.Client]:
    # The operator console: it places orders for the customers it names and reads every order.
    with httpx.Client(base_url=chaos.base_url, timeout=10,
                      headers=bearer(OPERATOR.token(chaos.base_url)),
                      limits=httpx.Limits(max_connections=32)) as http:
        for sku in ("burger-classic", "fries", "lemonade"):
            assert http.put(f"/api/v1/production/stock/{sku}",
                            json={"available": 100_000}).status_code == 200
        yield http


# --- the load ------------------------------------------------------------------------------------

# Seven in ten approve and are cooked, two decline, one asks more truffle risotto than the
# kitchen ever has (5): charged, then refunded.
KINDS = ["approve"] * 7 + ["decline"] * 2 + ["over_stock"]
BODIES = {
    "approve": ([("burger-classic", 1), ("fries", 1)], "tok_visa"),
    "decline": ([("lemonade", 1)], "tok_chargeDeclined"),
    "over_stock": ([("truffle-risotto", 9)], "tok_visa"),
}


def _place(client: httpx.Client, kind: str, deadline: float) -> str:
    """Place one order as a careful client would: the same Idempotency-Key until a 202."""
    items, token = BODIES[kind]
    body = {"customer": {"name": "Chaos", "email": "chaos@example.com"},
            "items": [{"sku": s, "quantity": q} for s, q in items], "payment_token": token}
    key = f"chaos-{uuid.uuid4()}"
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = client.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
            if response.status_code == 202:
                return str(response.json()["id"])
            assert response.status_code >= 500 or response.status_code == 429, response.text
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"an order was never accepted: {last!r}")


@dataclass
class Load:
    """``count`` orders over about ``seconds``, placed from a background thread."""

    client: httpx.Client
    count: int = 40
    seconds: float = 4.0
    orders: dict[str, str] = field(default_factory=dict)  # id -> kind
    placed: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        kinds = [KINDS[i % len(KINDS)] for i in range(self.count)]
        random.shuffle(kinds)
        deadline = time.monotonic() + self.seconds + 60
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = {}
            for i, kind in enumerate(kinds):
                futures[pool.submit(_place, self.client, kind, deadline)] = kind
                if i == self.count // 3:
                    self.placed.set()
                time.sleep(self.seconds / self.count)
            try:
                for future, kind in futures.items():
                    self.orders[future.result()] = kind
            except BaseException as exc:
                self._error = exc
        self.placed.set()

    def wait_started(self) -> None:
        """Until a third of the orders went out: faults hit a system under load."""
        self.placed.wait(30)

    def join(self) -> dict[str, str]:
        assert self._thread is not None
        self._thread.join(self.seconds + 90)
        if self._error is not None:
            raise self._error
        return self.orders


# --- the books ------------------------------------------------------------------------------------


async def _outbox_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox"))
    finally:
        await conn.close()


def outbox_sizes(chaos: ChaosStack) -> dict[str, int]:
    return {
        "order": asyncio.run(_outbox_rows(chaos.order_db)),
        "payment": asyncio.run(_outbox_rows(chaos.payment_db)),
        "production": int(redis.Redis.from_url(chaos.redis_url).xlen("outbox")),
    }


def parked(client: httpx.Client, service: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"/api/v1/ops/{service}/dead-letters", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["messages"]}


def until(condition: Any, what: str | Callable[[], str], timeout: float) -> Any:
    """Wait for ``condition``; ``what`` says what did not happen (a function: worked out only
    then, e.g. the logs of what is still running)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: "
                                 f"{what() if callable(what) else what}")
        time.sleep(0.2)


@dataclass
class Books:
    client: httpx.Client
    chaos: ChaosStack

    def statuses(self, ids: list[str]) -> dict[str, str]:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = pool.map(lambda i: self.client.get(f"/api/v1/orders/{i}").json(), ids)
            return {i: o.get("status", "?") for i, o in zip(ids, found, strict=True)}

    def ledgers(self, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = pool.map(
                lambda i: self.client.get("/api/v1/payments", params={"order_id": i}).json(), ids)
            return dict(zip(ids, found, strict=True))

    def settle(self, scenario: str, orders: dict[str, str],
               poison: dict[str, set[str]] | None = None, deadline: float = 90.0) -> None:
        """Check every invariant of "nothing lost, nothing doubled"; record the balance."""
        ids = list(orders)
        pending = set(ids)

        def all_terminal() -> bool:
            now = self.statuses(sorted(pending))
            pending.difference_update(i for i, s in now.items() if s in TERMINAL)
            return not pending

        def stuck() -> str:  # worked out at the deadline, not when the wait began
            left = self.statuses(sorted(pending))
            return (f"{len(left)} of {len(ids)} orders still not terminal ({scenario}): "
                    f"{dict(Counter(left.values()))}, e.g. {sorted(left)[:3]}")

        until(all_terminal, stuck, deadline)
        statuses = self.statuses(ids)
        ledgers = self.ledgers(ids)
        problems = []
        for order_id in ids:
            status, ledger = statuses[order_id], ledgers[order_id]
            charges = [p for p in ledger if p["kind"] == "charge" and p["status"] == "approved"]
            refunds = [p for p in ledger if p["kind"] == "refund"]
            expected = {"approve": "finished", "decline": "cancelled",
                        "over_stock": "refunded"}[orders[order_id]]
            if status != expected:
                problems.append(f"{order_id} ({orders[order_id]}) ended {status}")
            if len(charges) != (0 if status == "cancelled" else 1):
                problems.append(f"{order_id} {status} with {len(charges)} approved charges")
            if len(refunds) != (1 if status == "refunded" else 0):
                problems.append(f"{order_id} {status} with {len(refunds)} refunds")
            if refunds and not charges:
                problems.append(f"{order_id} refunded without a charge")
        assert not problems, "\n".join(problems)

        until(lambda: not any(outbox_sizes(self.chaos).values()),
              f"outboxes not empty: {outbox_sizes(self.chaos)}", 30)
        expected_parked = poison or {}
        for service in native.SERVICES:
            want = expected_parked.get(service, set())
            until(lambda s=service, w=want: set(parked(self.client, s)) == w,
                  f"{service} dead letters: {sorted(parked(self.client, service))} "
                  f"!= injected {sorted(want)}", 20)
        counts = Counter(statuses.values())
        BALANCES.append({
            "scenario": scenario, "accepted": len(ids), **{s: counts[s] for s in sorted(TERMINAL)},
            "charges": sum(1 for x in ledgers.values() for p in x
                           if p["kind"] == "charge" and p["status"] == "approved"),
            "refunds": sum(1 for x in ledgers.values() for p in x if p["kind"] == "refund"),
            "parked": "/".join(str(len(expected_parked.get(s, ()))) for s in native.SERVICES),
        })
        for service, ids_ in expected_parked.items():  # the operator discards them
            for event_id in ids_:
                assert self.client.delete(
                    f"/api/v1/ops/{service}/dead-letters/{event_id}").status_code == 200


@pytest.fixture
def books(client: httpx.Client, chaos: ChaosStack) -> Books:
    return Books(client, chaos)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not BALANCES:
        return
    columns = list(BALANCES[0])
    widths = {c: max(len(c), *(len(str(b[c])) for b in BALANCES)) for c in columns}
    terminalreporter.section("chaos balance (parked = order/payment/production)")
    terminalreporter.write_line("  ".join(c.ljust(widths[c]) for c in columns))
    for balance in BALANCES:
        terminalreporter.write_line("  ".join(str(balance[c]).ljust(widths[c]) for c in columns))

"""Admission control through the gateway: while the saga lags, new orders are refused with 503,
``Retry-After`` and JSON, before anything is written; once it catches up they are accepted again.

The lag is made the way it happens in production, a hop that stops keeping up: the operator
pauses the order service's outbox relay (its fault switch), so every new order waits in
``pending_payment``; or the kitchen's line stops, so every paid order waits for a cook
(``received``). This stack's bound is low (``ORDER_ADMISSION_MAX_WAITING`` in conftest's
KNOBS) so a test reaches it with a few dozen orders; the default is derived from measured
capacity (order/settings.py, docs/performance.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMISSION_BOUND, TERMINAL, wait_for
from tests.stacks import Stack

pytestmark = pytest.mark.e2e
RELAY = "/api/v1/orders/faults"
# The customer is the token's: no `customer` in the body.
ORDER = {"items": [{"sku": "burger-classic", "quantity": 1}], "payment_token": "tok_visa"}


LINE = "/api/v1/production/line"


@pytest.fixture
def relay_resumed_after(client: httpx.Client, stack: Stack) -> Iterator[None]:
    yield
    assert client.put(RELAY, json={"relay_paused": False}).status_code == 200
    admitting_again(stack)  # the next test's orders must not meet this one's bound


@pytest.fixture
def line_resumed_after(client: httpx.Client, stack: Stack) -> Iterator[None]:
    yield
    assert client.put(LINE, json={"paused": False}).status_code == 200
    admitting_again(stack)


def admitting_again(stack: Stack, timeout: float = 60) -> None:
    """Until every order replica's last sample is within the bound again. Each samples on its own
    (every 0.5 s; behind a busy pool it may be seconds late): wait for all of them, not for
    whichever the gateway picks for a metrics request."""
    deadline = time.monotonic() + timeout
    while any(replica_waiting(text) > ADMISSION_BOUND for text in stack.metrics("order")):
        assert time.monotonic() < deadline, "admission control still refuses after the backlog"
        time.sleep(0.2)


def fill_to_the_bound(client: httpx.Client, customer: httpx.Client, pause: tuple[str, Any],
                      ) -> tuple[list[str], httpx.Response, str]:
    """Pause a hop (``pause``: the fault switch's path and body), then place orders until one is
    refused: the accepted ids, the refusal and its key."""
    before = waiting(client)
    assert before < ADMISSION_BOUND - 5, "leftovers of earlier tests fill the bound"
    assert client.put(pause[0], json=pause[1]).status_code == 200
    accepted: list[str] = []
    for _ in range(ADMISSION_BOUND * 4):
        key = str(uuid.uuid4())
        response = customer.post("/api/v1/orders", json=ORDER,
                                 headers={"Idempotency-Key": key})
        if response.status_code == 503:
            # The sampler looks every 0.5 s: past the bound by at most what arrives meanwhile.
            assert ADMISSION_BOUND - 5 <= before + len(accepted) <= ADMISSION_BOUND * 3
            return accepted, response, key
        assert response.status_code == 202, response.text
        accepted.append(response.json()["id"])
        time.sleep(0.01)
    raise AssertionError(f"{len(accepted)} orders accepted and none refused")


def waiting(client: httpx.Client) -> float:
    """What admission control compares with its bound, from the order service's metrics."""
    return replica_waiting(client.get("/api/v1/ops/order/metrics").text)


def replica_waiting(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("saga_admission_waiting "))
    return float(line.split()[1])


def test_a_lagging_saga_refuses_new_orders_and_creates_none(client, signed_up, stack,
                                                            relay_resumed_after):
    customer: httpx.Client = signed_up
    accepted, refused, refused_key = fill_to_the_bound(client, customer,
                                                       (RELAY, {"relay_paused": True}))

    problem: dict[str, Any] = refused.json()
    assert refused.headers["content-type"].startswith("application/")
    assert problem["status"] == 503 and problem["bound"] == ADMISSION_BOUND
    assert problem["waiting"] > ADMISSION_BOUND
    assert "nothing was created" in problem["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    mine = customer.get("/api/v1/orders", params={"limit": 200}).json()
    assert sorted(o["id"] for o in mine) == sorted(accepted)  # the refused one does not exist

    # Caught up: the relay resumes, everything accepted ends, and the refused request, sent
    # again with its key, is a new order (not a replay of one that was never made).
    assert client.put(RELAY, json={"relay_paused": False}).status_code == 200
    for order_id in accepted:
        assert wait_for(customer, order_id, TERMINAL, timeout=60)["status"] == "finished"
    admitting_again(stack)
    again = customer.post("/api/v1/orders", json=ORDER,
                          headers={"Idempotency-Key": refused_key})
    assert again.status_code == 202, again.text
    assert "Idempotent-Replayed" not in again.headers
    assert wait_for(customer, again.json()["id"], TERMINAL)["status"] == "finished"


def test_orders_waiting_for_a_cook_count_too(client, signed_up, stack, line_resumed_after):
    """The kitchen's line stopped (or too slow for what comes): paid orders queue for a cook,
    ``received``; past the bound new orders are refused, not queued for minutes."""
    customer: httpx.Client = signed_up
    accepted, refused, _ = fill_to_the_bound(client, customer, (LINE, {"paused": True}))
    assert refused.json()["bound"] == ADMISSION_BOUND
    # They wait past the payment and the kitchen's intake: for a cook.
    assert wait_for(customer, accepted[-1], {"received"}, timeout=30)["status"] == "received"
    mine = customer.get("/api/v1/orders", params={"limit": 200}).json()
    assert sorted(o["id"] for o in mine) == sorted(accepted)
    assert client.put(LINE, json={"paused": False}).status_code == 200
    for order_id in accepted:
        assert wait_for(customer, order_id, TERMINAL, timeout=60)["status"] == "finished"

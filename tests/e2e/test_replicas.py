"""Replicas behind the gateway: a dead one is skipped without a client error, and comes back;
natively, a process that crashes is started again by the runner's supervisord, without ``up``."""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TERMINAL, gateway_log, place, wait_for
from tests.stacks import Stack
from tests.tokens import ANA


def _get_products(client, stack: Stack, count: int) -> dict[str, dict[str, Any]]:
    """`count` reads through the gateway; their access log lines, by request id."""
    ids = set()
    for _ in range(count):
        request_id = f"replicas-{uuid.uuid4().hex}"
        response = client.get("/api/v1/products", headers={"X-Request-ID": request_id})
        assert response.status_code == 200, response.text
        ids.add(request_id)
    lines = gateway_log(stack, ids)
    assert len(lines) == count
    return lines


def _served_by(lines: dict[str, dict[str, Any]]) -> set[str]:
    """The replica that answered each request (the last address nginx tried)."""
    return {line["upstream"].split(", ")[-1] for line in lines.values()}


def test_a_dead_replica_is_skipped_without_a_client_error_then_rejoins(client, stack):
    first, second = stack.replicas("order")
    assert _served_by(_get_products(client, stack, 10)) == {first.address, second.address}

    stack.kill(second.name, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stack.running(second.name):
        assert time.monotonic() < deadline, f"{second.name} survived SIGKILL"
        time.sleep(0.05)
    try:
        lines = _get_products(client, stack, 30)  # each one asserted 200
        assert _served_by(lines) == {first.address}
        # nginx did pick the dead replica, failed to connect, and asked the live one instead
        # (in compose mode the gateway may already have dropped it: Docker's DNS forgets a
        # stopped container and the upstream files follow within seconds).
        assert stack.mode == "compose" or any(
            line["upstream"] == f"{second.address}, {first.address}" for line in lines.values())
        # Writes too: a POST that never reached a service is safe to send elsewhere.
        order = place(client, [("fries", 1)])
        assert order.status_code == 202, order.text
        assert wait_for(client, order.json()["id"], TERMINAL)["status"] == "finished"
    finally:
        stack.restart_missing()  # starts what is missing: the dead replica, and waits for it

    assert stack.running(second.name)
    # Compose gives a restarted container a new address, perhaps.
    second = next(r for r in stack.replicas("order") if r.name == second.name)
    # Once its fail_timeout (10 s) is over, nginx sends it requests again.
    deadline = time.monotonic() + 30
    while second.address not in _served_by(_get_products(client, stack, 2)):
        assert time.monotonic() < deadline, f"{second.name} never rejoined the gateway's rotation"
        time.sleep(0.25)


def test_a_killed_service_process_comes_back_by_itself_and_healthy(stack):
    """kill -9 of the identity's one process: supervisord starts it again (a new pid, a new start
    mark in its log), it answers ready through the gateway and issues tokens, and nothing
    called ``up``."""
    if stack.mode != "native":
        pytest.skip("compose restarts no container `docker kill` stopped")
    [identity] = stack.replicas("identity")
    before = stack.pid(identity.name)
    starts = stack.log(identity.name).count("native: starting")
    stack.crash(identity.name, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while stack.pid(identity.name) in (None, before) or httpx.get(
            f"{stack.base_url}/health/identity/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, (
            f"{identity.name} was not restarted:\n{stack.log(identity.name)[-3000:]}")
        time.sleep(0.2)
    assert stack.log(identity.name).count("native: starting") == starts + 1
    assert ANA.token(stack.base_url, timeout=10)


def test_with_every_replica_dead_the_gateway_says_retry(client, stack):
    """No replica of a service answers: its API paths are the gateway's own JSON 502 (its
    probes 503), each with Retry-After, so a client knows to come back (with the same
    Idempotency-Key for an order); the rest of the shop answers as before."""
    replicas = stack.replicas("production")
    for replica in replicas:
        stack.kill(replica.name, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(stack.running(r.name) for r in replicas):
        assert time.monotonic() < deadline, "a replica survived SIGKILL"
        time.sleep(0.05)
    try:
        # 502 where a connect is refused (natively), 504 where it times out (compose: a killed
        # container's address answers nothing until Docker's DNS and nginx forget it)
        for path, statuses in (("/api/v1/production/stock", (502, 504)),
                               ("/health/production/ready", (503,))):
            answer = client.get(path)
            assert answer.status_code in statuses, answer.text
            assert answer.json()["status"] == answer.status_code
            assert answer.headers["retry-after"] == "1"
        assert client.get("/api/v1/products").status_code == 200
    finally:
        stack.restart_missing()

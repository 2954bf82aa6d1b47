"""Replicas behind the gateway: a dead one is skipped without a client error, and comes back."""

from __future__ import annotations

import os
import signal
import time
import uuid

from deploy import native
from tests.e2e.conftest import RUN_DIR, TERMINAL, gateway_log, place, wait_for


def _get_products(client, count: int) -> dict[str, dict]:
    """`count` reads through the gateway; their access log lines, by request id."""
    ids = set()
    for _ in range(count):
        request_id = f"replicas-{uuid.uuid4().hex}"
        response = client.get("/api/v1/products", headers={"X-Request-ID": request_id})
        assert response.status_code == 200, response.text
        ids.add(request_id)
    lines = gateway_log(ids)
    assert len(lines) == count
    return lines


def _served_by(lines: dict[str, dict]) -> set[str]:
    """The replica that answered each request (the last address nginx tried)."""
    return {line["upstream"].split(", ")[-1] for line in lines.values()}


def test_a_dead_replica_is_skipped_without_a_client_error_then_rejoins(client, stack):
    first, second = native.replicas("order", stack.env)
    assert _served_by(_get_products(client, 10)) == {first.address, second.address}

    pid = native.read_pid(RUN_DIR, second.name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while native.read_pid(RUN_DIR, second.name) is not None:
        assert time.monotonic() < deadline, f"{second.name} survived SIGKILL"
        time.sleep(0.05)
    try:
        lines = _get_products(client, 30)  # each one asserted 200
        assert _served_by(lines) == {first.address}
        # nginx did pick the dead replica, failed to connect, and asked the live one instead.
        assert any(line["upstream"] == f"{second.address}, {first.address}"
                   for line in lines.values())
        # Writes too: a POST that never reached a service is safe to send elsewhere.
        order = place(client, [("fries", 1)])
        assert order.status_code == 202, order.text
        assert wait_for(client, order.json()["id"], TERMINAL)["status"] == "finished"
    finally:
        native.up(stack.env, RUN_DIR, timeout=60)  # starts what is missing: the dead replica

    assert native.read_pid(RUN_DIR, second.name) not in (None, pid)
    rows = {row["name"]: row for row in native.status(RUN_DIR)}
    assert rows[second.name]["alive"] and rows[second.name]["ready"]
    # Once its fail_timeout (10 s) is over, nginx sends it requests again.
    deadline = time.monotonic() + 30
    while second.address not in _served_by(_get_products(client, 2)):
        assert time.monotonic() < deadline, f"{second.name} never rejoined the gateway's rotation"
        time.sleep(0.25)

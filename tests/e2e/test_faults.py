"""Fault switches, as an operator uses them: each one's effect goes through the saga's own paths
(a decline, a kitchen failure and its refund, a stalled relay), and every change is audited."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TERMINAL, payments_of, place, wait_for

SWITCHES: dict[str, dict[str, Any]] = {
    "/api/v1/payments/faults": {"decline_rate": 0.0, "latency_ms": 0},
    "/api/v1/production/faults": {"failure_rate": 0.0, "slowness_ms": 0},
    "/api/v1/orders/faults": {"relay_paused": False}}


@pytest.fixture(autouse=True)
def switches_off(client: httpx.Client) -> Iterator[None]:
    """Every test starts and ends with every switch off: the rest of the session shares them."""
    for path, off in SWITCHES.items():
        assert client.put(path, json=off).status_code == 200
    yield
    for path, off in SWITCHES.items():
        assert client.put(path, json=off).status_code == 200


def switch(client: httpx.Client, path: str, **values: Any) -> dict[str, Any]:
    request_id = f"fault-{uuid.uuid4()}"
    response = client.put(path, json=values, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in values} == values
    assert body["changed_by"] and body["changed_at"]
    latest = client.get(f"{path}/history", params={"limit": 1}).json()[0]
    assert latest["request_id"] == request_id
    assert latest["changed_by"] == body["changed_by"]
    assert {k: latest["new"][k] for k in values} == values
    changed: dict[str, Any] = latest
    return changed


def seconds_between(order: dict[str, Any], first: str, then: str) -> float:
    at = {s["status"]: datetime.fromisoformat(s["at"]) for s in order["timeline"]}
    return (at[then] - at[first]).total_seconds()


def test_switches_are_off_by_default_and_only_operators_see_them(client, ana, anonymous):
    for path, off in SWITCHES.items():
        body = client.get(path).json()
        assert {k: body[k] for k in off} == off
        assert ana.get(path).status_code == 403
        assert ana.put(path, json=off).status_code == 403
        assert anonymous.get(path).status_code == 401
        assert ana.get(f"{path}/history").status_code == 403


def test_a_decline_by_fault_is_an_ordinary_decline(client):
    entry = switch(client, "/api/v1/payments/faults", decline_rate=1.0)
    assert (entry["old"]["decline_rate"], entry["new"]["decline_rate"]) == (0.0, 1.0)
    order = wait_for(client, place(client, [("fries", 1)]).json()["id"], TERMINAL)
    assert order["status"] == "cancelled"
    assert "fault: decline_rate" in order["cancellation_reason"]
    assert [(p["status"], p["reason"]) for p in payments_of(client, order["id"])] == [
        ("declined", "fault: decline_rate")]


def test_payment_latency_delays_the_charge(client):
    switch(client, "/api/v1/payments/faults", latency_ms=1500)
    order = wait_for(client, place(client, [("fries", 1)]).json()["id"], TERMINAL)
    assert order["status"] == "finished"
    assert seconds_between(order, "pending_payment", "paid") >= 1.4


def test_a_kitchen_failure_by_fault_is_compensated_with_a_refund(client):
    switch(client, "/api/v1/production/faults", failure_rate=1.0)
    order = wait_for(client, place(client, [("brownie", 1)]).json()["id"], TERMINAL)
    assert order["status"] == "refunded"
    assert "fault: failure_rate" in order["cancellation_reason"]
    ledger = payments_of(client, order["id"])
    assert [(p["kind"], p["status"]) for p in ledger] == [("charge", "approved"),
                                                          ("refund", "refunded")]
    assert ledger[0]["amount"] == ledger[1]["amount"]


def test_kitchen_slowness_lengthens_the_preparation(client):
    switch(client, "/api/v1/production/faults", slowness_ms=1000)
    order = wait_for(client, place(client, [("lemonade", 1)]).json()["id"], TERMINAL)
    assert order["status"] == "finished"
    assert seconds_between(order, "in_production", "finished") >= 0.9


def test_a_paused_relay_holds_new_orders_until_resumed(client):
    switch(client, "/api/v1/orders/faults", relay_paused=True)
    order_id = place(client, [("fries", 1)]).json()["id"]
    time.sleep(1.5)  # the relays look at the switch before every batch: nothing may go out
    assert client.get(f"/api/v1/orders/{order_id}").json()["status"] == "pending_payment"
    assert payments_of(client, order_id) == []
    entry = switch(client, "/api/v1/orders/faults", relay_paused=False)
    assert (entry["old"]["relay_paused"], entry["new"]["relay_paused"]) == (True, False)
    assert wait_for(client, order_id, TERMINAL)["status"] == "finished"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/payments/faults", {"decline_rate": 1.5}, "decline_rate"),
    ("/api/v1/payments/faults", {"decline_rate": -0.1}, "decline_rate"),
    ("/api/v1/payments/faults", {"latency_ms": -1}, "latency_ms"),
    ("/api/v1/payments/faults", {"latency_ms": 10_000_000}, "latency_ms"),
    ("/api/v1/production/faults", {"failure_rate": "often"}, "failure_rate"),
    ("/api/v1/production/faults", {"slowness_ms": 10_001}, "slowness_ms"),
    ("/api/v1/orders/faults", {"relay_paused": "perhaps"}, "relay_paused"),
    ("/api/v1/orders/faults", {"relay_stopped": True}, "relay_stopped"),
    # Strict types: JSON true is no rate (it would decline every charge), "7" is no number.
    ("/api/v1/payments/faults", {"decline_rate": True}, "decline_rate"),
    ("/api/v1/payments/faults", {"latency_ms": "7"}, "latency_ms"),
    ("/api/v1/production/faults", {"failure_rate": True}, "failure_rate"),
    ("/api/v1/orders/faults", {"relay_paused": "yes"}, "relay_paused"),
    ("/api/v1/orders/faults", {"relay_paused": 1}, "relay_paused"),
])
def test_bad_values_are_refused_naming_the_field(client, path, body, field):
    before = client.get(f"{path}/history", params={"limit": 1}).json()
    response = client.put(path, json=body)
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
    assert client.get(f"{path}/history", params={"limit": 1}).json() == before


@pytest.mark.parametrize("path", list(SWITCHES))
def test_a_switch_body_is_strict_json_like_every_other(client, path):
    before = client.get(f"{path}/history", params={"limit": 1}).json()
    name = next(iter(SWITCHES[path]))
    twice = client.put(path, content=f'{{"{name}": 0, "{name}": 0}}'.encode(),
                       headers={"content-type": "application/json"})
    assert twice.status_code == 400 and name in twice.text, twice.text
    text = client.put(path, content=b"relay_paused=true", headers={"content-type": "text/plain"})
    assert text.status_code == 415, text.text
    assert [e["field"] for e in text.json()["errors"]] == ["Content-Type"]
    assert client.get(f"{path}/history", params={"limit": 1}).json() == before


def test_the_history_lists_every_change_newest_first(client):
    switch(client, "/api/v1/production/faults", failure_rate=0.25)
    switch(client, "/api/v1/production/faults", failure_rate=0.5, slowness_ms=10)
    first, second = client.get("/api/v1/production/faults/history",
                               params={"limit": 2}).json()[::-1]
    assert (first["old"]["failure_rate"], first["new"]["failure_rate"]) == (0.0, 0.25)
    assert second["old"] == first["new"]
    assert second["new"] == {"failure_rate": 0.5, "slowness_ms": 10}
    assert first["changed_at"] <= second["changed_at"]

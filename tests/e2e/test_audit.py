"""The operator audit through the gateway: each operator action recorded with who, what, when,
the request id and the outcome; readable by operators only."""

from __future__ import annotations

import uuid
from typing import Any

from tests.e2e.conftest import set_stock, stock_of
from tests.e2e.test_dead_letters import inject_poison, wait_parked

OPS = "/api/v1/ops"


def audit_of(client, service: str, action: str) -> list[dict[str, Any]]:
    response = client.get(f"{OPS}/{service}/audit", params={"action": action})
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["records"]
    return records


def test_replaying_a_dead_letter_leaves_a_record_naming_the_operator(client, stack):
    event_id = inject_poison(stack.rabbitmq_url, "order.created")
    wait_parked(client, "payment", event_id)
    request_id = f"audit-{uuid.uuid4()}"
    replayed = client.post(f"{OPS}/payment/dead-letters/{event_id}/replay",
                           headers={"X-Request-ID": request_id})
    assert replayed.status_code == 200, replayed.text

    record = next(r for r in audit_of(client, "payment", "dead_letter.replay")
                  if r["target"] == event_id)
    assert record["actor"] == "ops-console" and record["actor_kind"] == "client"
    assert record["outcome"] == "succeeded" and record["request_id"] == request_id
    assert record["service"] == "payment" and record["detail"]["queue"]

    wait_parked(client, "payment", event_id)  # poison again: parked again, then discarded
    assert client.delete(f"{OPS}/payment/dead-letters/{event_id}").status_code == 200
    discarded = audit_of(client, "payment", "dead_letter.discard")
    assert any(r["target"] == event_id and r["outcome"] == "succeeded" for r in discarded)


def test_a_failed_action_is_recorded_as_failed(client):
    missing = str(uuid.uuid4())
    assert client.delete(f"{OPS}/order/dead-letters/{missing}").status_code == 404
    record = next(r for r in audit_of(client, "order", "dead_letter.discard")
                  if r["target"] == missing)
    assert record["outcome"] == "failed" and record["detail"]["error"]["status"] == 404


def test_restock_and_the_line_are_audited(client):
    set_stock(client, "fries", stock_of(client, "fries"))
    for paused in (True, False):
        response = client.put("/api/v1/production/line", json={"paused": paused})
        assert response.status_code == 200, response.text
    restock = audit_of(client, "production", "stock.restock")[0]
    assert restock["target"] == "fries" and restock["actor"] == "ops-console"
    assert "available" in restock["detail"]
    assert audit_of(client, "production", "line.pause")[0]["outcome"] == "succeeded"
    newest = client.get(f"{OPS}/production/audit", params={"limit": 2}).json()["records"]
    assert [r["action"] for r in newest] == ["line.resume", "line.pause"]


def test_the_audit_is_for_operators_only(anonymous, ana):
    for service in ("order", "payment", "production"):
        assert anonymous.get(f"{OPS}/{service}/audit").status_code == 401
        assert ana.get(f"{OPS}/{service}/audit").status_code == 403


def test_setting_a_fault_switch_is_audited_in_the_service_that_owns_it(client):
    request_id = f"audit-{uuid.uuid4()}"
    for service, path, body in (("payment", "/api/v1/payments/faults", {"latency_ms": 1}),
                                ("production", "/api/v1/production/faults", {"slowness_ms": 1}),
                                ("order", "/api/v1/orders/faults", {"relay_paused": False})):
        changed = client.put(path, json=body, headers={"X-Request-ID": request_id})
        assert changed.status_code == 200, changed.text
        records = [r for r in audit_of(client, service, "faults.set")
                   if r["request_id"] == request_id]
        assert len(records) == 1, records
        assert records[0]["actor"] == "ops-console" and records[0]["outcome"] == "succeeded"
        assert records[0]["detail"] == body
    # Put the switches back off for the other tests.
    client.put("/api/v1/payments/faults", json={"latency_ms": 0})
    client.put("/api/v1/production/faults", json={"slowness_ms": 0})

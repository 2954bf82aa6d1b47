"""The gateway: docs of every service, JSON errors, request ids."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_each_service_docs_are_reachable_through_the_gateway(client, service):
    ui = client.get(f"/docs/{service}")
    assert ui.status_code == 200 and "swagger" in ui.text.lower()
    spec = client.get(f"/docs/{service}/openapi.json")
    assert spec.status_code == 200 and spec.json()["paths"]
    events = client.get(f"/docs/{service}/asyncapi.json")
    assert events.status_code == 200 and events.json()["asyncapi"].startswith("3.")


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_readiness_through_the_gateway(client, service):
    response = client.get(f"/health/{service}/ready")
    assert response.status_code == 200 and response.json()["status"] == "ready"


def test_unknown_paths_are_json_404(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status"] == 404


def test_request_id_is_generated_or_passed_through_and_echoed(client):
    generated = client.get("/api/v1/products").headers.get("x-request-id")
    assert generated and len(generated) >= 16
    mine = client.get("/api/v1/products", headers={"X-Request-ID": "req-e2e-42"})
    assert mine.headers["x-request-id"] == "req-e2e-42"

"""Customer cancellation (and its refund), and retries made safe by the Idempotency-Key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import (
    TERMINAL,
    newest_order,
    order_body,
    payments_of,
    place,
    stock_of,
    wait_for,
)


@pytest.fixture
def paused_kitchen(client) -> Iterator[None]:
    """Hold the kitchen line so a paid order waits in the queue, where it can be cancelled."""
    assert client.put("/api/v1/production/line", json={"paused": True}).status_code == 200
    try:
        yield
    finally:
        assert client.put("/api/v1/production/line", json={"paused": False}).status_code == 200


def test_cancel_while_queued_refunds_and_frees_the_stock(client, paused_kitchen):
    before = stock_of(client, "salad-caesar")
    order_id = place(client, [("salad-caesar", 2)]).json()["id"]
    wait_for(client, order_id, {"received"})
    assert stock_of(client, "salad-caesar") == before - 2  # reserved for the ticket

    response = client.post(f"/api/v1/orders/{order_id}/cancel")
    assert response.status_code == 202, response.text

    order = wait_for(client, order_id, TERMINAL)
    assert order["status"] == "refunded"
    assert [s["status"] for s in order["timeline"]] == [
        "pending_payment", "paid", "received", "cancelling", "refunded"]
    assert [(p["kind"], p["status"]) for p in payments_of(client, order_id)] == [
        ("charge", "approved"), ("refund", "refunded")]
    tickets = client.get("/api/v1/production/queue").json()
    ticket = next(t for t in tickets if t["order_id"] == order_id)
    assert ticket["status"] == "cancelled"
    assert stock_of(client, "salad-caesar") == before


def test_cancel_after_the_kitchen_finished_is_refused(client):
    order_id = place(client, [("fries", 1)]).json()["id"]
    wait_for(client, order_id, TERMINAL)
    response = client.post(f"/api/v1/orders/{order_id}/cancel")
    assert response.status_code == 409
    assert response.json()["order_status"] == "finished"
    assert len(payments_of(client, order_id)) == 1  # a refused cancel refunds nothing


def test_cancel_twice_is_refused_the_second_time(client, paused_kitchen):
    order_id = place(client, [("fries", 1)]).json()["id"]
    wait_for(client, order_id, {"received"})
    assert client.post(f"/api/v1/orders/{order_id}/cancel").status_code == 202
    assert client.post(f"/api/v1/orders/{order_id}/cancel").status_code == 409
    wait_for(client, order_id, TERMINAL)
    refunds = [p for p in payments_of(client, order_id) if p["kind"] == "refund"]
    assert len(refunds) == 1


def test_cancel_of_an_unknown_order_is_404(client):
    response = client.post(f"/api/v1/orders/{uuid.uuid4()}/cancel")
    assert response.status_code == 404
    assert response.json()["errors"][0]["field"] == "order_id"


def test_the_same_idempotency_key_returns_the_same_order(client):
    key = str(uuid.uuid4())
    first = place(client, [("brownie", 2)], headers={"Idempotency-Key": key})
    again = place(client, [("brownie", 2)], headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    wait_for(client, first.json()["id"], TERMINAL)
    assert len(payments_of(client, first.json()["id"])) == 1


def test_the_same_idempotency_key_with_another_body_is_a_conflict(client):
    key = str(uuid.uuid4())
    assert place(client, [("brownie", 1)], headers={"Idempotency-Key": key}).status_code == 202
    response = client.post("/api/v1/orders", json=order_body([("brownie", 5)]),
                           headers={"Idempotency-Key": key})
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize("key", [
    "", "k" * 201, "key\twith-a-tab", "key\u200bwith-a-zero-width-space".encode(),
    "key\u202ewith-a-bidi-override".encode(), b"key-\xff-not-ascii",
], ids=["empty", "too long", "tab", "zero width", "bidi", "not ascii"])
def test_an_unusable_idempotency_key_is_a_422_and_places_nothing(client, key):
    before = newest_order(client)
    response = client.post("/api/v1/orders", json=order_body([("brownie", 1)]),
                           headers={"Idempotency-Key": key})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert newest_order(client) == before


def test_two_idempotency_keys_are_a_400_and_place_nothing(client):
    before = newest_order(client)
    response = client.post("/api/v1/orders", json=order_body([("brownie", 1)]), headers=[
        ("Idempotency-Key", str(uuid.uuid4())), ("Idempotency-Key", str(uuid.uuid4()))])
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert newest_order(client) == before
    # One key with a blank inside is a key like another (printable ASCII).
    assert place(client, [("brownie", 1)], headers={
        "Idempotency-Key": f"order {uuid.uuid4()}"}).status_code == 202

"""The event archive through the gateway: one order's events, each once per publisher and once
per consumer, with its headers and body, read by operators only."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Any

import httpx

from tests.e2e.conftest import place, wait_for

SERVICES = ("order", "payment", "production")
# The happy path: (event type, publisher's CloudEvents source, its consumer).
HAPPY_PATH = {
    ("order.created", "saga-shop/order", "payment"),
    ("payment.processed", "saga-shop/payment", "order"),
    ("order.received", "saga-shop/order", "production"),
    ("production.queued", "saga-shop/production", "order"),
    ("production.started", "saga-shop/production", "order"),
    ("order.finished", "saga-shop/production", "order"),
}


def archive_of(client: httpx.Client, order_id: str) -> list[dict[str, Any]]:
    """Every service's side of the order's archive (each answers for its own)."""
    events: list[dict[str, Any]] = []
    for service in SERVICES:
        response = client.get(f"/api/v1/ops/{service}/archive", params={"order_id": order_id})
        assert response.status_code == 200, response.text
        side = response.json()["events"]
        assert [e["at"] for e in side] == sorted(e["at"] for e in side), "oldest first"
        events += side
    return events


def wait_archived(client: httpx.Client, order_id: str, n: int,
                  timeout: float = 15.0) -> list[dict[str, Any]]:
    # The publisher's side is written when the relay's publish is confirmed: a moment after the
    # order's last step may be visible.
    deadline = time.monotonic() + timeout
    while len(events := archive_of(client, order_id)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return events


def test_an_orders_archive_lists_each_event_once_per_publisher_and_consumer(client):
    order_id = place(client, [("burger-classic", 1)]).json()["id"]
    order = wait_for(client, order_id, {"finished"})
    events = wait_archived(client, order_id, 2 * len(HAPPY_PATH))

    sides = Counter((e["event_type"], e["direction"], e["publisher"], e["consumer"])
                    for e in events)
    expected: Counter[tuple[str, str, str, str | None]] = Counter()
    for event_type, publisher, consumer in HAPPY_PATH:
        expected[(event_type, "published", publisher, None)] += 1
        expected[(event_type, "consumed", publisher, consumer)] += 1
    assert sides == expected

    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_id.setdefault(e["event_id"], []).append(e)
    assert len(by_id) == len(HAPPY_PATH)
    for copies in by_id.values():
        published = next(e for e in copies if e["direction"] == "published")
        consumed = next(e for e in copies if e["direction"] == "consumed")
        # The published time is the broker's confirm, which the relay may learn after the
        # consumer has committed, so the two are not ordered; both follow the event's making.
        made = datetime.fromisoformat(published["headers"]["ce-time"])
        assert made <= datetime.fromisoformat(published["at"])
        assert made <= datetime.fromisoformat(consumed["at"])
        for e in copies:
            assert e["headers"]["ce-id"] == e["event_id"]
            assert e["headers"]["ce-subject"] == order_id
            assert e["headers"]["ce-specversion"] == "1.0"
            assert e["trace_id"] == order["trace_id"]
            assert e["body"]["order_id"] == order_id and not e["body_withheld"]


def test_the_archive_holds_no_personal_data_of_the_order(client):
    order_id = place(client, [("fries", 1)]).json()["id"]
    wait_for(client, order_id, {"finished"})
    text = str(wait_archived(client, order_id, 2 * len(HAPPY_PATH)))
    assert "Ana" not in text and "ana@example.com" not in text


def test_the_archive_is_for_operators_only(anonymous, ana, client):
    order_id = place(client, [("fries", 1)]).json()["id"]
    for service in SERVICES:
        path = f"/api/v1/ops/{service}/archive"
        assert anonymous.get(path, params={"order_id": order_id}).status_code == 401
        assert ana.get(path, params={"order_id": order_id}).status_code == 403
        bad = client.get(path, params={"order_id": "not-a-uuid"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "order_id"

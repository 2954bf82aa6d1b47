"""Seeing the saga through the gateway: an order's live timeline as Server-Sent Events, and docs
that render with no internet (Swagger UI's assets served by the services, AsyncAPI as HTML)."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import place

pytestmark = pytest.mark.e2e
HAPPY_PATH = ["pending_payment", "paid", "received", "in_production", "finished"]


def _follow(client: httpx.Client, order_id: str, last_event_id: str | None = None,
            timeout: float = 20.0) -> tuple[httpx.Response, list[dict[str, str]]]:
    """Read the stream until the service closes it; its events, each a dict of SSE fields."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/api/v1/orders/{order_id}/events", headers=headers,
                       timeout=httpx.Timeout(timeout, read=timeout)) as response:
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"the stream never ended: {events}"
            if not line:
                if "data" in fields:
                    events.append(fields)
                fields = {}
            elif not line.startswith(":") and ": " in line:
                name, value = line.split(": ", 1)
                fields[name] = value
    return response, events


def _statuses(events: list[dict[str, str]]) -> list[str]:
    return [json.loads(e["data"])["status"] for e in events]


def test_an_order_s_timeline_streams_through_the_gateway_until_it_finishes(client):
    placed = place(client, [("fries", 1)])
    assert placed.status_code == 202, placed.text
    response, events = _follow(client, placed.json()["id"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "x-accel-buffering" not in response.headers  # meant for nginx, consumed there
    assert _statuses(events) == HAPPY_PATH
    assert {e["event"] for e in events} == {"status"}
    # Positions in the order's timeline, not a shop-wide count.
    assert [int(e["id"]) for e in events] == list(range(1, len(HAPPY_PATH) + 1))
    order = client.get(f"/api/v1/orders/{placed.json()['id']}").json()
    assert [json.loads(e["data"])["at"] for e in events] == [
        step["at"] for step in order["timeline"]]


def test_resuming_with_last_event_id_sends_only_the_later_entries(client):
    placed = place(client, [("lemonade", 1)])
    order_id = placed.json()["id"]
    _, events = _follow(client, order_id)
    assert _statuses(events) == HAPPY_PATH
    _, later = _follow(client, order_id, last_event_id=events[1]["id"])
    assert [e["id"] for e in later] == [e["id"] for e in events[2:]]
    assert _statuses(later) == HAPPY_PATH[2:]
    # Past the terminal entry there is nothing left: the stream ends at once, empty.
    _, nothing = _follow(client, order_id, last_event_id=events[-1]["id"], timeout=5)
    assert nothing == []
    # An id past the last entry is none this stream gave (a shop-wide sequence number from
    # before positions, another order's): the whole timeline again, rather than none ever.
    _, again = _follow(client, order_id, last_event_id=str(int(events[-1]["id"]) + 1))
    assert [e["id"] for e in again] == [e["id"] for e in events]


def test_the_stream_of_an_unknown_order_or_a_bad_last_event_id_is_a_json_error(client):
    missing = client.get(f"/api/v1/orders/{uuid.uuid4()}/events")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["field"] == "order_id"
    bad = client.get(f"/api/v1/orders/{uuid.uuid4()}/events",
                        headers={"Last-Event-ID": "-1"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "Last-Event-ID"


# --- Docs that need no internet ------------------------------------------------------------------


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_swagger_ui_names_no_external_url_and_its_assets_come_through_the_gateway(
        anonymous, service):
    page = anonymous.get(f"/docs/{service}")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.search(r"https?://", page.text)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith(f"/docs/{service}/"), asset
        response = anonymous.get(asset)
        assert response.status_code == 200 and response.content, asset
    bundle = next(a for a in assets if a.endswith(".js"))
    assert "javascript" in anonymous.get(bundle).headers["content-type"]


def test_the_asyncapi_page_lists_order_created_and_is_linked(anonymous):
    page = anonymous.get("/docs/order/asyncapi")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<code>order.created</code>" in page.text
    assert "<code>payment.processed</code>" in page.text  # what order consumes, too
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page.text)
    assert 'href="/docs/order/asyncapi"' in anonymous.get("/").text
    description = anonymous.get("/docs/order/openapi.json").json()["info"]["description"]
    assert "/docs/order/asyncapi" in description

"""Each service's docs render with no internet: Swagger UI from local assets, AsyncAPI as HTML."""

from __future__ import annotations

import re

import httpx
import pytest

from order.app import build as build_order
from payment.app import build as build_payment
from production.app import build as build_production

APPS = {"order": build_order(), "payment": build_payment(), "production": build_production()}
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(https?:)?//""", re.IGNORECASE)


def _client(service: str) -> httpx.AsyncClient:
    # No lifespan: the docs need neither the database nor the broker.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=APPS[service]),
                             base_url="http://docs.test")


@pytest.mark.parametrize("service", sorted(APPS))
async def test_swagger_ui_loads_only_assets_the_service_serves(service):
    async with _client(service) as http:
        page = await http.get(f"/docs/{service}")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        assert not re.search(r"https?://", page.text), "the page names an external URL"
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert {a.rsplit("/", 1)[-1] for a in assets} >= {
            "swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}
        for asset in assets:
            response = await http.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset
        assert "validatorUrl" in page.text  # the validator badge (a remote image) is off


@pytest.mark.parametrize(("service", "consumed", "published"), [
    ("order", "payment.processed", "order.created"),
    ("payment", "order.created", "payment.processed"),
    ("production", "order.received", "order.finished"),
])
async def test_the_asyncapi_page_lists_what_a_service_consumes_and_publishes(
        service, consumed, published):
    async with _client(service) as http:
        page = await http.get(f"/docs/{service}/asyncapi")
        spec = (await http.get(f"/docs/{service}/asyncapi.json")).json()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.search(page.text) and "<script" not in page.text
    operations = re.findall(r"<tr><td>(consumes|publishes)</td>.*?</tr>", page.text)
    assert "consumes" in operations and "publishes" in operations
    for event_type in (consumed, published):
        assert f"<code>{event_type}</code>" in page.text
    # Published events are in the machine-readable document too, as "send" operations.
    sends = {op["channel"]["$ref"].rsplit("/", 1)[-1] for op in spec["operations"].values()
             if op["action"] == "send"}
    assert published in sends


async def test_an_event_s_fields_are_listed_with_their_types():
    async with _client("order") as http:
        page = (await http.get("/docs/order/asyncapi")).text
    created = page[page.index('id="schema-OrderCreated"'):]
    created = created[:created.index("</section>")]
    assert "A new order waits for its payment" in created
    for field in ("order_id", "amount", "payment_token", "lines"):
        assert f"<code>{field}</code>" in created
    assert 'array of <a href="#schema-OrderLine">OrderLine</a>' in created


async def test_the_swagger_page_links_the_asyncapi_page():
    async with _client("order") as http:
        openapi = (await http.get("/docs/order/openapi.json")).json()
    assert "(/docs/order/asyncapi)" in openapi["info"]["description"]

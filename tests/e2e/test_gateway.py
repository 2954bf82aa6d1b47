"""The gateway: open reads and docs, API keys for writes, rate limits, JSON errors, request ids."""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import (
    FLOODER,
    RATE_BURST,
    flood,
    newest_order,
    order_body,
    place,
    stock_of,
    wait_until_allowed,
)
from tests.tokens import OPERATOR

# --- Reads and docs are open ---------------------------------------------------------------------


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_each_service_docs_are_reachable_through_the_gateway(anonymous, service):
    ui = anonymous.get(f"/docs/{service}")
    assert ui.status_code == 200 and "swagger" in ui.text.lower()
    spec = anonymous.get(f"/docs/{service}/openapi.json")
    assert spec.status_code == 200 and spec.json()["paths"]
    events = anonymous.get(f"/docs/{service}/asyncapi.json")
    assert events.status_code == 200 and events.json()["asyncapi"].startswith("3.")


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_readiness_through_the_gateway(anonymous, service):
    response = anonymous.get(f"/health/{service}/ready")
    assert response.status_code == 200 and response.json()["status"] == "ready"


# --- Who may pass the gateway -------------------------------------------------------------------

PUBLIC = ["/api/v1/products", "/health", "/health/order/ready", "/health/identity/ready",
          "/docs/order/openapi.json", "/docs/identity/openapi.json", "/.well-known/jwks.json"]


@pytest.mark.parametrize("path", PUBLIC)
def test_public_paths_need_no_token(anonymous, path):
    assert anonymous.get(path).status_code == 200


def test_the_landing_page_links_every_api_doc_and_the_operator_consoles(anonymous):
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for link in ("/docs/order", "/docs/payment", "/docs/production", "/docs/identity",
                 "http://localhost:16686", "http://localhost:5380", "http://localhost:15672"):
        assert f'href="{link}"' in page.text
    assert "dev-secret" not in page.text and "dev-password" not in page.text


# Every one of these is refused by the gateway itself (no bearer token at all) or by the service
# (a bearer token that is not a valid signed token of this stack's identity).
BAD_CREDENTIALS = {
    "none": {},
    "an API key": {"X-API-Key": "dev-key-change-me"},
    "garbage bearer": {"Authorization": "Bearer not-a-token"},
    "a JWT signed by nobody we know": {"Authorization": "Bearer eyJhbGciOiJFZERTQSIsImtpZCI6Ing"
                                       "ifQ.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"},
    "an unsigned JWT": {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4Iiwic2NvcGUiOiJv"
                        "cHMifQ."},
    "a token under another scheme": {"Authorization": "Basic b3BzLWNvbnNvbGU6b3BzLWRldi1zZWNyZXQ="},
    "a bare scheme": {"Authorization": "Bearer"},
}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    assert body.get("request_id") == response.headers["x-request-id"]
    assert [e["field"] for e in body["errors"]] == ["Authorization"]  # the gateway's or a service's


@pytest.mark.parametrize("headers", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_without_a_valid_token_everything_but_the_public_paths_is_401_and_writes_nothing(
        anonymous, client, headers):
    before_order, before_stock = newest_order(client), stock_of(client, "fries")
    assert_unauthorized(anonymous.post("/api/v1/orders", json=order_body([("fries", 1)]),
                                       headers=headers))
    assert_unauthorized(anonymous.get("/api/v1/orders", params={"limit": 500}, headers=headers))
    assert_unauthorized(anonymous.put("/api/v1/production/stock/fries",
                                      json={"available": before_stock + 1}, headers=headers))
    assert_unauthorized(anonymous.put("/api/v1/production/line", json={"paused": True},
                                      headers=headers))
    assert_unauthorized(anonymous.get("/api/v1/production/queue", headers=headers))
    assert_unauthorized(anonymous.get("/api/v1/ops/payment/dead-letters", headers=headers))
    assert newest_order(client) == before_order
    assert stock_of(client, "fries") == before_stock
    assert client.get("/api/v1/production/line").json()["paused"] is False


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_needs_a_token_on_every_protected_api(anonymous, method):
    for path in ("/api/v1/orders", "/api/v1/payments/cards", "/api/v1/production/line",
                 "/api/v1/customers/me"):
        assert_unauthorized(anonymous.request(method, path))


def test_the_bearer_scheme_is_case_insensitive(stack, anonymous):
    token = OPERATOR.token(stack.base_url)
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = anonymous.get("/api/v1/orders", params={"limit": 1},
                                 headers={"Authorization": f"{scheme} {token}"})
        assert response.status_code == 200, response.text


# --- Rate limits ---------------------------------------------------------------------------------


def test_a_flooding_client_gets_429_with_retry_after_and_others_do_not(stack, client):
    # Eight pipelined connections at once: on a loaded machine one connection's round trips to
    # a service can be slower than the limit the flood is meant to exceed.
    with ThreadPoolExecutor(8) as pool:
        batches = pool.map(lambda _: flood(stack.base_url, "GET", "/api/v1/products", {},
                                            count=RATE_BURST),
                           range(8))
        responses = [r for batch in batches for r in batch]
    statuses = {r.status_code for r in responses}
    assert statuses == {200, 429}, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["content-type"].startswith("application/json")
    problem = json.loads(limited.body)
    assert problem["status"] == 429 and problem["title"] == "Too Many Requests"
    assert int(limited.headers["retry-after"]) >= 1
    assert "retry-after" not in next(r for r in responses if r.status_code == 200).headers
    if stack.mode == "native":  # another address has its own budget: untouched
        assert client.get("/api/v1/products").status_code == 200
    with httpx.Client(base_url=stack.base_url,
                      transport=httpx.HTTPTransport(local_address=FLOODER)) as flooder:
        wait_until_allowed(flooder, "/api/v1/products")
    wait_until_allowed(client, "/api/v1/products")


def test_guessing_tokens_is_rate_limited_too(stack, client):
    before = newest_order(client)
    responses = flood(stack.base_url, "POST", "/api/v1/orders",
                       {"Authorization": "Bearer guess"}, count=6 * RATE_BURST)
    assert {r.status_code for r in responses} == {401, 429}
    assert newest_order(client) == before
    with httpx.Client(base_url=stack.base_url,
                      transport=httpx.HTTPTransport(local_address=FLOODER)) as flooder:
        wait_until_allowed(flooder, "/health")  # the address's budget refills for later tests
    wait_until_allowed(client, "/health")


# --- Errors and request ids ----------------------------------------------------------------------


def test_unknown_paths_are_json_404(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status"] == 404
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_a_body_over_64_kib_is_json_413_and_writes_nothing(client):
    before = newest_order(client)
    response = client.post("/api/v1/orders", content=b"{" + b" " * 65 * 1024 + b"}",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status"] == 413
    assert newest_order(client) == before


def test_other_methods_on_the_gateways_own_paths_are_json_405(client):
    response = client.post("/health")
    assert response.status_code == 405 and response.json()["status"] == 405
    assert response.headers["allow"] == "GET, HEAD"  # RFC 9110: a 405 names what is allowed


def test_a_services_405_names_the_methods_its_path_takes(client):
    menu = client.delete("/api/v1/products")
    assert menu.status_code == 405 and menu.json()["status"] == 405
    assert menu.headers.get_list("allow") == ["GET, HEAD"]  # the service's, not the gateway's
    cancel = client.get(f"/api/v1/orders/{uuid.uuid4()}/cancel")
    assert cancel.status_code == 405 and cancel.headers["allow"] == "POST"
    assert menu.json()["errors"][0]["field"] == "method"
    orders = client.patch("/api/v1/orders", json={})  # a GET route and a POST route: both named
    assert orders.status_code == 405 and orders.headers["allow"] == "GET, HEAD, POST"


def test_head_answers_as_get_without_the_body(client):
    """RFC 9110: a server that takes GET takes HEAD, through the gateway too."""
    placed_order = place(client, [("lemonade", 1)]).json()["id"]
    menu, head = client.get("/api/v1/products"), client.head("/api/v1/products")
    assert head.status_code == menu.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == menu.headers["content-type"]
    order = client.head(f"/api/v1/orders/{placed_order}")
    assert order.status_code == 200 and order.content == b""
    assert client.head(f"/api/v1/orders/{uuid.uuid4()}").status_code == 404
    started = time.monotonic()  # a live event stream answers its head and ends
    stream = client.head(f"/api/v1/orders/{placed_order}/events")
    assert stream.status_code == 200 and stream.content == b""
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started < 5


def test_request_id_is_generated_or_passed_through_and_echoed(client):
    generated = client.get("/api/v1/products").headers.get("x-request-id")
    assert generated and len(generated) >= 16
    mine = client.get("/api/v1/products", headers={"X-Request-ID": "req-e2e-42"})
    assert mine.headers["x-request-id"] == "req-e2e-42"
    unsafe = client.get("/api/v1/products", headers={"X-Request-ID": "no spaces or \"quotes\""})
    assert unsafe.headers["x-request-id"] != "no spaces or \"quotes\""


def test_the_service_sees_the_same_request_id(client):
    # The service's own 404 body carries the request id it was given.
    mine = client.get(f"/api/v1/orders/{uuid.uuid4()}", headers={"X-Request-ID": "req-e2e-43"})
    assert mine.status_code == 404 and mine.json()["request_id"] == "req-e2e-43"
    generated = client.get(f"/api/v1/orders/{uuid.uuid4()}")
    assert generated.json()["request_id"] == generated.headers["x-request-id"]


def test_security_and_cache_headers(client):
    api = client.get("/api/v1/products")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["x-frame-options"] == "DENY"
    assert api.headers["referrer-policy"] == "no-referrer"
    assert api.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in api.headers["content-security-policy"]
    assert "www-authenticate" not in api.headers and "retry-after" not in api.headers
    assert client.get("/api/v1/nothing-here").headers["cache-control"] == "no-store"
    docs = client.get("/docs/order")
    assert docs.headers["cache-control"] == "no-cache"
    assert "content-security-policy" not in docs.headers  # Swagger UI loads its own scripts


@pytest.mark.parametrize("path", ["/", "/assets/site.css"])
def test_a_range_of_a_page_is_the_whole_page_with_each_header_once(anonymous, path):
    """A range past the end was nginx's 416, raised after the headers were added: its JSON
    error page then sent every security header twice (and the file's ETag)."""
    whole = anonymous.get(path)
    for asked in ("bytes=999999-", "bytes=0-9"):
        answer = anonymous.get(path, headers={"Range": asked})
        assert answer.status_code == 200 and answer.content == whole.content, asked
        names = [name.lower() for name, _ in answer.headers.raw]
        assert len(names) == len(set(names)), sorted(names)


@pytest.mark.parametrize("path", ["/", "/ops"])
def test_the_shop_pages_load_only_their_own_files(anonymous, path):
    page = anonymous.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-cache"  # revalidated: an edit shows at once
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it anyway
    for asset in re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text):
        served = anonymous.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["cache-control"] == "no-cache"
        assert "etag" in served.headers or "last-modified" in served.headers
    script = anonymous.get("/assets/js/shop.js")
    assert script.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    assert anonymous.post(path).status_code == 405
    assert anonymous.get("/assets/nothing-here.js").status_code == 404

"""The gateway: open reads and docs, API keys for writes, rate limits, JSON errors, request ids."""

from __future__ import annotations

import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import (
    API_KEY,
    FLOOD_KEY,
    RATE_BURST,
    newest_order,
    order_body,
    stock_of,
)

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


@pytest.mark.parametrize("path", ["/api/v1/products", "/api/v1/orders?limit=1",
                                  "/api/v1/production/stock", "/api/v1/production/line",
                                  f"/api/v1/payments?order_id={uuid.UUID(int=0)}"])
def test_reads_need_no_key(anonymous, path):
    assert anonymous.get(path).status_code == 200
    # HEAD passes the gateway too (the services themselves answer it with 405).
    assert anonymous.head(path).status_code != 401


def test_the_landing_page_links_every_api_doc_and_the_operator_consoles(anonymous):
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for link in ("/docs/order", "/docs/payment", "/docs/production",
                 "http://localhost:16686", "http://localhost:5380", "http://localhost:15672"):
        assert f'href="{link}"' in page.text
    assert API_KEY not in page.text


# --- Writes need an API key ----------------------------------------------------------------------

BAD_CREDENTIALS = {
    "none": {},
    "wrong X-API-Key": {"X-API-Key": "not-a-key"},
    "wrong bearer": {"Authorization": "Bearer not-a-key"},
    "a prefix of a key": {"X-API-Key": API_KEY[:-1]},
    "a key and more": {"X-API-Key": API_KEY + "x"},
    "both keys as one": {"X-API-Key": f"{API_KEY}|{FLOOD_KEY}"},
    "a key under another scheme": {"Authorization": f"Basic {API_KEY}"},
    "an empty X-API-Key": {"X-API-Key": ""},
}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_writes_without_a_valid_key_are_401_and_write_nothing(anonymous, client, headers):
    before_order, before_stock = newest_order(client), stock_of(client, "fries")
    assert_unauthorized(anonymous.post("/api/v1/orders", json=order_body([("fries", 1)]),
                                       headers=headers))
    assert_unauthorized(anonymous.put("/api/v1/production/stock/fries",
                                      json={"available": before_stock + 1}, headers=headers))
    assert_unauthorized(anonymous.put("/api/v1/production/line", json={"paused": True},
                                      headers=headers))
    assert newest_order(client) == before_order
    assert stock_of(client, "fries") == before_stock
    assert client.get("/api/v1/production/line").json()["paused"] is False


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_but_get_and_head_needs_a_key_on_every_api(anonymous, method):
    for path in ("/api/v1/orders", "/api/v1/payments/cards", "/api/v1/production/line"):
        assert_unauthorized(anonymous.request(method, path))


@pytest.mark.parametrize("headers", [
    {"X-API-Key": API_KEY},
    {"Authorization": f"Bearer {API_KEY}"},
    {"Authorization": f"bearer {API_KEY}"},
], ids=["X-API-Key", "Bearer", "bearer"])
def test_writes_with_a_valid_key_go_through(anonymous, headers):
    response = anonymous.post("/api/v1/orders", json=order_body([("lemonade", 1)]),
                              headers=headers)
    assert response.status_code == 202, response.text
    assert anonymous.get(f"/api/v1/orders/{response.json()['id']}").status_code == 200


# --- Rate limits ---------------------------------------------------------------------------------


@dataclass
class Raw:
    status_code: int
    headers: dict[str, str]
    body: bytes


def _flood(base_url: str, method: str, path: str, headers: dict[str, str],
           count: int) -> list[Raw]:
    """`count` requests pipelined on one connection: as fast as nginx reads, whatever the client."""
    url = urlsplit(base_url)
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: 0\r\n{fields}"
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(f"{request}\r\n".encode() * (count - 1)
                     + f"{request}Connection: close\r\n\r\n".encode())
        raw = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    responses = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        parsed = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
        length = int(parsed["content-length"])  # every answer here has one (none is chunked)
        responses.append(Raw(int(status_line.split()[1]), parsed, raw[:length]))
        raw = raw[length:]
    assert len(responses) == count
    return responses


def _wait_until_allowed(http: httpx.Client, path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while http.get(path).status_code == 429:
        assert time.monotonic() < deadline, "the rate limit never let this client back in"
        time.sleep(0.1)


def test_a_flooding_client_gets_429_with_retry_after_and_others_do_not(stack, client):
    # Eight pipelined connections at once: on a loaded machine one connection's round trips to
    # a service can be slower than the limit the flood is meant to exceed.
    with ThreadPoolExecutor(8) as pool:
        batches = pool.map(lambda _: _flood(stack.base_url, "GET", "/api/v1/products",
                                            {"X-API-Key": FLOOD_KEY}, count=RATE_BURST),
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
    # Another key has its own budget: untouched.
    assert client.get("/api/v1/products").status_code == 200
    with httpx.Client(base_url=stack.base_url, headers={"X-API-Key": FLOOD_KEY}) as flooder:
        _wait_until_allowed(flooder, "/api/v1/products")


def test_guessing_keys_is_rate_limited_too(stack, anonymous):
    before = newest_order(anonymous)
    responses = _flood(stack.base_url, "POST", "/api/v1/orders", {"X-API-Key": "guess"},
                       count=6 * RATE_BURST)
    assert {r.status_code for r in responses} == {401, 429}
    assert newest_order(anonymous) == before
    _wait_until_allowed(anonymous, "/health")  # the address's budget refills for later tests


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


def test_the_landing_page_shows_each_services_readiness(client):
    page = client.get("/")
    assert page.status_code == 200
    for service in ("order", "payment", "production"):
        assert f'data-ready="{service}"' in page.text
        assert f"/docs/{service}" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    script = client.get("/_gateway/readiness.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("application/javascript")
    assert '"/health/" + el.dataset.ready + "/ready"' in script.text

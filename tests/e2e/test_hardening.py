"""The gateway and the services under a hostile client (issue 13's probe, one test per finding).

Each test sends what a script would, not a browser: floods from one address, headers and bodies
trickled in, request lines no client library writes, bodies two JSON parsers would read apart,
names with invisible characters, credentials in a URL. Rate limits are per client address, so
each flood comes from its own loopback address (127.0.0.x) and the rest of the suite, on
127.0.0.1, keeps its budget.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sagakit.web import BODY_SECONDS
from tests.e2e.conftest import (
    CLIENT_TIMEOUT,
    CONN_LIMIT,
    CUSTOMER,
    LIST_RATE_BURST,
    LIST_RATE_LIMIT,
    RATE_BURST,
    Raw,
    connect,
    flood,
    gateway_log,
    newest_order,
    order_body,
    parse_responses,
    send_raw,
    wait_until_allowed,
)
from tests.stacks import Stack
from tests.tokens import ANA, bearer

# Each flooding test has an address of its own: one test's bucket never empties another's.
LIST_FLOODER, HEALTH_FLOODER, CONN_HOLDER, SLOW_CLIENT = (
    "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")


def _from(stack: Stack, address: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=10,
                        transport=httpx.HTTPTransport(local_address=address), **kwargs)


def _assert_json_problem(response: Raw | httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.headers)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and body["title"]
    assert body["request_id"] == response.headers["x-request-id"]


# --- Limits sized to the stack ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/orders?limit=1", "/metrics/order"])
def test_300_list_calls_in_a_second_from_one_client_meet_429_with_retry_after(stack, client,
                                                                               path):
    """Lists (and the public metrics, each scrape a count over the orders) draw from a
    stricter bucket: 300 calls at once are far beyond its burst."""
    headers = bearer(ANA.token(stack.base_url))
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        batches = pool.map(lambda _: flood(stack.base_url, "GET", path,
                                           headers, count=50, source=LIST_FLOODER), range(6))
        responses = [r for batch in batches for r in batch]
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, set(statuses)
    # No more got through than the bucket holds plus what it refilled meanwhile (tight enough
    # that the general bucket alone, four times the rate, would let more through).
    assert statuses.count(200) <= LIST_RATE_BURST + 2 + LIST_RATE_LIMIT * (elapsed + 0.2)
    limited = next(r for r in responses if r.status_code == 429)
    _assert_json_problem(limited, 429)
    assert int(limited.headers["retry-after"]) >= 1
    if stack.mode == "native":  # another address has its own budget: untouched
        assert client.get(path).status_code == 200
    with _from(stack, LIST_FLOODER, headers=headers) as flooder:
        wait_until_allowed(flooder, path)


def test_another_client_is_unaffected_by_a_flood(stack, anonymous):
    """While one address floods, another's calls pass at once (natively: compose's published
    port shows every host client as one address)."""
    with ThreadPoolExecutor(5) as pool:
        floods = [pool.submit(flood, stack.base_url, "GET", "/api/v1/products", {},
                              RATE_BURST * 2, HEALTH_FLOODER) for _ in range(4)]
        other = [anonymous.get("/api/v1/products").status_code for _ in range(20)]
        flooded = [r.status_code for f in floods for r in f.result()]
    assert 429 in flooded
    if stack.mode == "native":
        assert set(other) == {200}
    with _from(stack, HEALTH_FLOODER) as flooder:
        wait_until_allowed(flooder, "/health")


def test_health_is_rate_limited_too(stack):
    responses = flood(stack.base_url, "GET", "/health", {}, count=RATE_BURST * 4,
                      source=HEALTH_FLOODER)
    statuses = {r.status_code for r in responses}
    assert statuses == {200, 429}, statuses
    _assert_json_problem(next(r for r in responses if r.status_code == 429), 429)
    with _from(stack, HEALTH_FLOODER) as flooder:
        wait_until_allowed(flooder, "/health")


def _slow_sign_up(stack: Stack) -> bytes:
    """The head of a sign-up whose body never comes in full (public: no token needed)."""
    return (f"POST /api/v1/customers HTTP/1.1\r\nHost: {stack.base_url.split('//')[1]}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{").encode()


def test_one_client_may_hold_only_so_many_requests_in_progress(stack, client):
    held = []
    try:
        for _ in range(CONN_LIMIT):
            sock = connect(stack.base_url, CONN_HOLDER)
            sock.sendall(_slow_sign_up(stack))
            held.append(sock)
        # Once nginx has read every head, each of these is a request in progress; on a busy
        # machine (or through Docker's port proxy) that can take a moment: ask until it has.
        deadline = time.monotonic() + CLIENT_TIMEOUT - 0.5  # before nginx drops the held ones
        with _from(stack, CONN_HOLDER) as same:
            response = same.get("/api/v1/products")
            while response.status_code != 429 and time.monotonic() < deadline:
                time.sleep(0.2)
                response = same.get("/api/v1/products")
        _assert_json_problem(response, 429)
        assert response.headers["retry-after"] == "1"
        if stack.mode == "native":
            assert client.get("/api/v1/products").status_code == 200  # another address
    finally:
        for sock in held:
            sock.close()
    with _from(stack, CONN_HOLDER) as same:
        wait_until_allowed(same, "/api/v1/products")


def _seconds_until_closed(sock, trickle: bytes, every: float) -> tuple[float, bytes]:
    """Send `trickle` a byte at a time, `every` seconds apart, until the gateway hangs up."""
    started, answer = time.monotonic(), b""
    sock.settimeout(every)
    for byte in trickle:
        try:
            sock.sendall(bytes([byte]))
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except OSError:  # reset: closed
            break
        answer += chunk
        if not chunk:
            break
    else:
        raise AssertionError("the gateway kept the trickling connection open")
    return time.monotonic() - started, answer


def test_a_header_sent_a_byte_at_a_time_is_cut_off_at_the_deadline(stack):
    with connect(stack.base_url, SLOW_CLIENT) as sock:
        sock.sendall(b"GET /api/v1/products HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        took, answer = _seconds_until_closed(sock, b"a" * 60, every=0.5)
    assert took < CLIENT_TIMEOUT + 3, took
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_a_body_that_stops_coming_is_cut_off_at_the_deadline(stack):
    with connect(stack.base_url, SLOW_CLIENT) as sock:
        sock.sendall(_slow_sign_up(stack))
        # One byte, then a pause longer than the deadline between two reads.
        took, answer = _seconds_until_closed(sock, b" " * 3, every=CLIENT_TIMEOUT + 1.5)
    assert took < 3 * (CLIENT_TIMEOUT + 2), took
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]


@pytest.mark.parametrize(("path", "media_type"), [
    ("/api/v1/customers", "application/json"),
    ("/api/v1/auth/token", "application/x-www-form-urlencoded"),
])
def test_a_body_trickled_in_is_answered_408_at_the_total_deadline(stack, path, media_type):
    """Each byte comes before the pause limit, so only a deadline for the whole body ends it:
    the service's (sagakit.web.BODY_SECONDS), answered as JSON through the gateway."""
    head = (f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: {media_type}\r\n"
            "Content-Length: 200\r\n\r\n{").encode()
    with connect(stack.base_url, SLOW_CLIENT) as sock:
        sock.sendall(head)
        took, answer = _seconds_until_closed(sock, b" " * 199, every=CLIENT_TIMEOUT / 2)
    assert BODY_SECONDS - 1 < took < BODY_SECONDS + CLIENT_TIMEOUT + 3, took
    [response] = parse_responses(answer)
    _assert_json_problem(response, 408)
    assert response.json()["errors"][0]["field"] == "body"


# --- Errors the gateway makes itself are JSON with the request id --------------------------------

HOST = "Host: gateway\r\n"
NGINX_ERRORS = {  # what is sent, the status, the part of the request it blames
    "400 bad request line": (b"get /api/v1/products HTTP/1.1\r\n" + HOST.encode() + b"\r\n", 400,
                             "request"),
    "400 HTTP/1.0 with chunked": ((b"POST /api/v1/customers HTTP/1.0\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, "request"),
    "405 on the gateway's own path": (b"DELETE /health HTTP/1.1\r\n" + HOST.encode()
                                      + b"Connection: close\r\n\r\n", 405, "method"),
    "413 body over 64 KiB": (b"POST /api/v1/customers HTTP/1.1\r\n" + HOST.encode()
                             + b"Content-Type: application/json\r\nContent-Length: 70000\r\n"
                               b"Connection: close\r\n\r\n", 413, "body"),
    "414 URI too long": (b"GET /api/v1/products?q=" + b"a" * 9000 + b" HTTP/1.1\r\n"
                         + HOST.encode() + b"\r\n", 414, "path"),
    "431 header too large": (b"GET /api/v1/products HTTP/1.1\r\n" + HOST.encode()
                             + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers"),
    "501 unknown transfer encoding": (b"POST /api/v1/customers HTTP/1.1\r\n" + HOST.encode()
                                      + b"Transfer-Encoding: gzip\r\n\r\n", 501,
                                      "Transfer-Encoding"),
    "501 TRACE on an API path": (b"TRACE /api/v1/auth/token HTTP/1.1\r\n" + HOST.encode()
                                 + b"Connection: close\r\n\r\n", 501, "method"),
    "501 TRACE on the gateway's own path": (b"TRACE /health HTTP/1.1\r\n" + HOST.encode()
                                            + b"Connection: close\r\n\r\n", 501, "method"),
    # (No 416: the pages are served whole whatever Range asks, test_gateway.py says why.)
    "505 HTTP/2.0 request line": (b"GET / HTTP/2.0\r\n" + HOST.encode()
                                  + b"Connection: close\r\n\r\n", 505, "protocol"),
}


@pytest.mark.parametrize(("request_bytes", "status", "field"), NGINX_ERRORS.values(),
                         ids=NGINX_ERRORS.keys())
def test_every_error_the_gateway_makes_is_json_naming_what_to_blame(stack, request_bytes, status,
                                                                    field):
    response = send_raw(stack.base_url, request_bytes)
    _assert_json_problem(response, status)
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert "allow" not in response.headers or status == 405


@pytest.mark.parametrize("path", ["/api/v1/products", "/health", "/api/v1/orders"])
def test_an_unknown_method_is_json_501(stack, path):
    # Passed on, the services' HTTP parser would answer it with a plain-text 400.
    response = send_raw(stack.base_url, f"BREW {path} HTTP/1.1\r\n{HOST}"
                        "Connection: close\r\n\r\n".encode())
    _assert_json_problem(response, 501)
    assert response.json()["errors"][0]["field"] == "method"


def test_the_gateway_logs_the_method_the_client_sent_even_for_its_own_errors(stack):
    ids = {f"method-{uuid.uuid4().hex[:12]}" for _ in range(2)}
    brew, big = sorted(ids)
    send_raw(stack.base_url, f"BREW /health HTTP/1.1\r\n{HOST}X-Request-ID: {brew}\r\n"
             "Connection: close\r\n\r\n".encode())
    send_raw(stack.base_url, f"POST /api/v1/customers HTTP/1.1\r\n{HOST}X-Request-ID: {big}\r\n"
             "Content-Type: application/json\r\nContent-Length: 70000\r\n"
             "Connection: close\r\n\r\n".encode())
    entries = gateway_log(stack, ids)
    assert (entries[brew]["method"], entries[brew]["status"]) == ("BREW", 501)
    assert (entries[big]["method"], entries[big]["status"]) == ("POST", 413)


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/v1/products HTTP/1.1\r\n" + HOST.encode() + b"X-Note: a\x01b\r\n",
    b"GET /api/v1/products HTTP/1.1\r\n" + HOST.encode() + b"Idempotency-Key: \x7f\r\n",
    b"GET /api/v1/products?x=\xff HTTP/1.1\r\n" + HOST.encode(),
], ids=["control byte in a header", "DEL in a header", "raw byte in the target"])
def test_what_the_services_parser_refuses_is_a_json_400_too(stack, request_bytes):
    # nginx passes these on; the service's HTTP parser refuses them before any app code.
    response = send_raw(stack.base_url, request_bytes + b"Connection: close\r\n\r\n")
    assert response.status_code == 400, response.body[:200]
    assert response.headers["content-type"].startswith("application/json")
    problem = response.json()
    assert problem["status"] == 400 and problem["errors"][0]["field"] == "request"


# --- No redirect built from the client's Host --------------------------------------------------


@pytest.mark.parametrize(("path", "target"), [("/docs/order/", "/docs/order"),
                                              ("/docs/identity/?x=1", "/docs/identity?x=1"),
                                              ("/api/v1/products/", "/api/v1/products"),
                                              ("//evil.example/", "/evil.example")])
def test_a_trailing_slash_redirects_relatively_whatever_the_host_header(stack, anonymous, path,
                                                                       target):
    # The whole URL: httpx would read "//evil.example/" against its base URL as another host.
    response = anonymous.get(stack.base_url + path, headers={"Host": "evil.example"})
    assert response.status_code == 308
    assert response.headers["location"] == target  # a path: never //host or scheme://host
    assert response.headers["content-type"] == "application/json"  # not nginx's HTML page
    assert response.json()["status"] == 308 and response.json()["request_id"]


def test_a_service_reached_directly_builds_no_redirect_either(stack):
    if stack.mode != "native":
        pytest.skip("compose publishes no service port")
    order = stack.replicas("order")[0]
    response = httpx.get(f"http://{order.address}/docs/order/",
                         headers={"Host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers


# --- Credentials never logged --------------------------------------------------------------------


def test_the_access_log_holds_no_credential(stack, anonymous):
    marker = uuid.uuid4().hex
    secrets = {f"{name}={marker}{name}" for name in
               ("access_token", "token", "password", "client_secret", "api_key", "Token",
                "client%5Fsecret", "auth", "jwt", "my_session", "X-Api-Key")}
    ids = set()
    for secret in secrets:
        response = anonymous.get(f"/api/v1/products?limit=1&{secret}",
                                 headers={"Authorization": f"Bearer {marker}bearer"})
        ids.add(response.headers["x-request-id"])
    in_path = anonymous.get(f"/api/v1/products;password={marker}path")  # a matrix parameter
    ids.add(in_path.headers["x-request-id"])
    response = anonymous.get("/api/v1/orders", headers={"Authorization": f"Bearer {marker}x"})
    assert response.status_code == 401
    ids.add(response.headers["x-request-id"])
    entries = gateway_log(stack, ids)
    assert len(entries) == len(ids)
    assert marker not in stack.gateway_log()
    redacted = sorted(e["uri"] for e in entries.values()
                      if e["uri"].startswith("/api/v1/products"))
    assert redacted == ["/api/v1/products;[redacted]"] + ["/api/v1/products?[redacted]"] * len(
        secrets)
    plain = anonymous.get("/api/v1/products?limit=1&status=x")  # nothing to hide: kept whole
    assert gateway_log(stack, {plain.headers["x-request-id"]})[
        plain.headers["x-request-id"]]["uri"] == "/api/v1/products?limit=1&status=x"


# --- Bodies two parsers would read apart, names with invisible characters ----------------------


def _fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json().get("errors", [])]


def test_a_duplicate_key_is_400_naming_the_key_and_writes_nothing(client):
    before = newest_order(client)
    body = json.dumps(order_body([("fries", 1)]))
    twice = body[:-1] + ', "payment_token": "tok_chargeDeclined"}'
    response = client.post("/api/v1/orders", content=twice,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert _fields(response) == ["payment_token"]
    assert newest_order(client) == before


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client, number):
    response = client.put("/api/v1/production/stock/fries",
                          content=f'{{"available": {number}}}',
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert _fields(response) == ["body"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml",
                                          "application/x-www-form-urlencoded"])
def test_a_json_endpoint_refuses_another_media_type_with_415(client, content_type):
    before = newest_order(client)
    response = client.post("/api/v1/orders", content=json.dumps(order_body([("fries", 1)])),
                           headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    assert _fields(response) == ["Content-Type"]
    assert newest_order(client) == before


def test_the_token_endpoint_stays_form_encoded(anonymous):
    as_json = anonymous.post("/api/v1/auth/token", json={"grant_type": "password"})
    assert as_json.status_code == 415
    assert _fields(as_json) == ["Content-Type"]
    as_form = anonymous.post("/api/v1/auth/token", data={
        "grant_type": "password", "username": "ana@example.com", "password": "ana-dev-password"})
    assert as_form.status_code == 200, as_form.text


INVISIBLE = {"CR LF": "\r\n", "right-to-left override": "\u202e", "zero-width space": "\u200b",
             "zero-width joiner": "\u200d", "line separator": "\u2028", "byte order mark": "\ufeff"}


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_names_with_control_or_format_characters_are_refused_naming_the_field(
        client, anonymous, char):
    before = newest_order(client)
    order = client.post("/api/v1/orders", json={
        **order_body([("fries", 1)]), "customer": {**CUSTOMER, "name": f"Ana{char}Souza"}})
    assert order.status_code == 422 and _fields(order) == ["customer.name"], order.text
    assert newest_order(client) == before
    email = f"hygiene-{uuid.uuid4().hex[:8]}@example.com"
    sign_up = anonymous.post("/api/v1/customers", json={
        "name": f"Eve{char}Lima", "email": email, "password": "long-enough-password"})
    assert sign_up.status_code == 422 and _fields(sign_up) == ["name"], sign_up.text
    card = client.post("/api/v1/payments/cards", json={
        "number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123",
        "holder": f"Ana{char}Souza"})
    assert card.status_code == 422 and _fields(card) == ["holder"], card.text


def test_placing_an_order_documents_the_retry_risk_of_no_idempotency_key(anonymous):
    spec = anonymous.get("/docs/order/openapi.json").json()
    place = spec["paths"]["/api/v1/orders"]["post"]
    assert "Idempotency-Key" in place["description"]
    assert "duplicate" in place["description"].lower()

"""Who may do what, checked twice: at the gateway and by each service itself.

The matrix is generated from the services' own OpenAPI documents: every operation declares its
``security`` (sagakit.auth.allow), and every operation × {anonymous, customer, operator, machine}
is called through the gateway and straight on a service replica's port, expecting 401 without a
token, 403 with a token lacking the scope, and neither with one that has it. A new endpoint
without a declaration fails ``test_every_operation_declares_who_may_call_it``.

Then the objects: orders, payments and cards carry their owner, and someone else's is a 404 (an
empty ledger for payments), never their data.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TERMINAL, order_body, wait_for
from tests.stacks import Stack
from tests.tokens import ANA, MACHINE, OPERATOR, bearer

SERVICES = ("order", "payment", "production", "identity")
ROLES = {"anonymous": None, "customer": ANA, "operator": OPERATOR, "machine": MACHINE}
SCOPES = {"anonymous": set(), "customer": {"orders"}, "operator": {"ops"}, "machine": {"orders"}}
METHODS = {"get", "post", "put", "patch", "delete"}


def _operations(stack: Stack) -> list[tuple[str, str, str, list[dict[str, list[str]]] | None]]:
    found = []
    for service in SERVICES:
        spec = httpx.get(f"{stack.base_url}/docs/{service}/openapi.json", timeout=10).json()
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                if method in METHODS:
                    found.append((service, method.upper(), path, operation.get("security")))
    return found


def _expected(security: list[dict[str, list[str]]], role: str) -> str:
    if not security:
        return "open"
    wanted = {scope for requirement in security for scope in requirement.get("OAuth2", [])}
    if role == "anonymous":
        return "401"
    return "allowed" if SCOPES[role] & wanted else "403"


def _concrete(path: str) -> str:
    """Path parameters filled with values that exist nowhere: an allowed call changes nothing."""
    values = {"order_id": str(uuid.uuid4()), "ticket_id": str(uuid.uuid4()),
              "event_id": str(uuid.uuid4()), "token": "tok_nobodys0123", "sku": "no-such-sku",
              "delivery_id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4())}
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"fill the path parameter of {path}"
    return path


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, dict[str, str]]:
    return {role: bearer(account.token(stack.base_url)) if account else {}
            for role, account in ROLES.items()}


def test_every_operation_declares_who_may_call_it(stack: Stack) -> None:
    undeclared = [f"{s} {m} {p}" for s, m, p, security in _operations(stack) if security is None]
    assert not undeclared, f"no security requirement: {undeclared}"
    public = sorted(f"{m} {p}" for _, m, p, security in _operations(stack) if security == [])
    # Anonymous: the menu, health, docs, sign-up and the token endpoint, nothing else.
    assert public == sorted([
        "GET /api/v1/products", "POST /api/v1/customers", "POST /api/v1/auth/token",
        "GET /.well-known/jwks.json",
        *[f"GET /health/{probe}" for probe in ("live", "ready") for _ in SERVICES],
        *[f"GET /docs/{s}/asyncapi{kind}" for s in SERVICES for kind in ("", ".json")],
    ]), public


def _call(base_url: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return httpx.request(method, f"{base_url}{_concrete(path)}", headers=headers, timeout=10,
                         **body)


@pytest.mark.parametrize("where", ["gateway", "service port"])
def test_the_authorization_matrix(stack: Stack, tokens: dict[str, dict[str, str]],
                                  where: str) -> None:
    wrong = []
    calls = 0
    for service, method, path, security in _operations(stack):
        if path.endswith("/dead-letters/replay") or path == "/api/v1/ops/unrouted/replay":
            continue  # an allowed call would replay what other tests parked; covered below
        if (method, path) == ("DELETE", "/api/v1/customers/me"):
            continue  # allowed, it would erase Ana; tests/e2e/test_customer_data.py covers it
        base = stack.base_url if where == "gateway" else \
            f"http://{stack.replicas(service)[0].address}"
        called = (path.replace("/health/", f"/health/{service}/")
                  if where == "gateway" and path.startswith("/health/") else path)
        for role in ROLES:
            expected = _expected(security or [], role)
            status = _call(base, method, called, tokens[role]).status_code
            calls += 1
            ok = (str(status) == expected if expected in ("401", "403")
                  else status not in (401, 403) and status < 500)
            if not ok:
                wrong.append(f"{role:9} {method} {called} via {where}: {status}, want {expected}")
    assert calls > 100
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("role", "status"), [("anonymous", 401), ("customer", 403),
                                              ("machine", 403)])
def test_only_an_operator_replays_dead_letters(stack: Stack, tokens, role, status) -> None:
    for path in ("order/dead-letters", "payment/dead-letters", "production/dead-letters",
                 "identity/dead-letters", "unrouted"):
        response = httpx.post(f"{stack.base_url}/api/v1/ops/{path}/replay",
                              headers=tokens[role], timeout=10)
        assert response.status_code == status, (path, response.text)


# --- objects have owners -------------------------------------------------------------------------


def test_a_customer_orders_for_themselves_and_only_they_see_it(ana, bob, client) -> None:
    placed = ana.post("/api/v1/orders", json={"items": [{"sku": "fries", "quantity": 1}],
                                              "payment_token": "tok_visa"})
    assert placed.status_code == 202, placed.text
    order = placed.json()
    assert order["customer"]["name"] == "Ana Souza"
    finished = wait_for(ana, order["id"], TERMINAL)
    assert finished["status"] == "finished"

    assert bob.get(f"/api/v1/orders/{order['id']}").status_code == 404
    assert bob.post(f"/api/v1/orders/{order['id']}/cancel").status_code == 404
    assert bob.get("/api/v1/payments", params={"order_id": order["id"]}).json() == []
    assert order["id"] not in {o["id"] for o in bob.get("/api/v1/orders",
                                                        params={"limit": 500}).json()}
    assert order["id"] in {o["id"] for o in ana.get("/api/v1/orders",
                                                    params={"limit": 500}).json()}
    ledger = ana.get("/api/v1/payments", params={"order_id": order["id"]}).json()
    assert [p["kind"] for p in ledger] == ["charge"]
    assert client.get(f"/api/v1/orders/{order['id']}").status_code == 200  # the operator


def test_a_customer_cannot_order_under_another_email(ana) -> None:
    response = ana.post("/api/v1/orders", json=order_body([("fries", 1)]) | {
        "customer": {"name": "Bob", "email": "bob@example.com"}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "customer.email"


def test_a_client_must_name_the_customer(machine) -> None:
    response = machine.post("/api/v1/orders", json={"items": [{"sku": "fries", "quantity": 1}],
                                                    "payment_token": "tok_visa"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "customer"
    named = machine.post("/api/v1/orders", json=order_body([("fries", 1)]))
    assert named.status_code == 202, named.text


def test_a_card_is_its_owners_and_pays_only_for_them(ana, bob) -> None:
    card = ana.post("/api/v1/payments/cards", json={
        "number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2040, "cvc": "123",
        "holder": "Ana Souza"})
    assert card.status_code == 201, card.text
    token = card.json()["token"]
    assert ana.get(f"/api/v1/payments/cards/{token}").status_code == 200
    assert bob.get(f"/api/v1/payments/cards/{token}").status_code == 404

    # Bob learned the token: his order with it is declined, Ana's card is never charged.
    stolen = bob.post("/api/v1/orders", json={"items": [{"sku": "fries", "quantity": 1}],
                                              "payment_token": token})
    assert stolen.status_code == 202, stolen.text
    ended = wait_for(bob, stolen.json()["id"], TERMINAL)
    assert ended["status"] == "cancelled"
    ledger = bob.get("/api/v1/payments", params={"order_id": ended["id"]}).json()
    assert [(p["status"], p["reason"]) for p in ledger] == [("declined", "card_not_yours")]


def test_a_customer_token_cannot_run_the_kitchen(ana, client) -> None:
    assert ana.put("/api/v1/production/line", json={"paused": True}).status_code == 403
    assert ana.get("/api/v1/production/queue").status_code == 403
    assert ana.get("/api/v1/ops/payment/dead-letters").status_code == 403
    assert client.get("/api/v1/production/line").json()["paused"] is False


def test_the_same_idempotency_key_from_two_customers_is_two_orders(ana, bob) -> None:
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    body = {"items": [{"sku": "lemonade", "quantity": 1}], "payment_token": "tok_visa"}
    first, second = ana.post("/api/v1/orders", json=body, headers=key), \
        bob.post("/api/v1/orders", json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers


def test_sign_up_then_log_in(anonymous) -> None:
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    made = anonymous.post("/api/v1/customers", json={"name": "Nova Cliente", "email": email,
                                                     "password": "long enough secret"})
    assert made.status_code == 201, made.text
    again = anonymous.post("/api/v1/customers", json={"name": "Nova", "email": email.upper(),
                                                      "password": "another secret"})
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "email"
    wrong = anonymous.post("/api/v1/auth/token", data={"grant_type": "password",
                                                       "username": email, "password": "nope"})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # Both are named: the answer never says which of the two was wrong.
    assert [e["field"] for e in wrong.json()["errors"]] == ["username", "password"]
    token = anonymous.post("/api/v1/auth/token", data={
        "grant_type": "password", "username": email, "password": "long enough secret"})
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    assert token.headers["cache-control"] == "no-store"
    me = anonymous.get("/api/v1/customers/me", headers=bearer(body["access_token"]))
    assert me.json()["email"] == email and me.json()["name"] == "Nova Cliente"


def test_a_password_is_kept_as_typed_spaces_included(anonymous) -> None:
    email = f"spaces-{uuid.uuid4().hex[:8]}@example.com"
    typed = "  two words, spaced  "
    made = anonymous.post("/api/v1/customers", json={"name": " Nova ", "email": email,
                                                     "password": typed})
    assert made.status_code == 201 and made.json()["name"] == "Nova", made.text
    token = anonymous.post("/api/v1/auth/token", data={
        "grant_type": "password", "username": email, "password": typed})
    assert token.status_code == 200, token.text
    trimmed = anonymous.post("/api/v1/auth/token", data={
        "grant_type": "password", "username": email, "password": typed.strip()})
    assert trimmed.status_code == 400 and trimmed.json()["error"] == "invalid_grant"
    # The email, though, is trimmed at sign-up and at login alike (and either case matches).
    padded = anonymous.post("/api/v1/auth/token", data={
        "grant_type": "password", "username": f"  {email.upper()} ", "password": typed})
    assert padded.status_code == 200, padded.text


def test_client_credentials_sent_twice_are_refused(anonymous) -> None:
    """RFC 6749 §2.3: one authentication method per request; which one counted was a guess."""
    response = anonymous.post(
        "/api/v1/auth/token", auth=("loadgen", "loadgen-dev-secret"),
        data={"grant_type": "client_credentials", "client_id": "ops-console",
              "client_secret": "wrong"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    alone = anonymous.post("/api/v1/auth/token", auth=("loadgen", "loadgen-dev-secret"),
                           data={"grant_type": "client_credentials"})
    assert alone.status_code == 200, alone.text


@pytest.mark.parametrize("form", [
    ("grant_type=password&grant_type=client_credentials&client_id=ops-console"
     "&client_secret=ops-dev-secret&username=bob%40example.com&password=bob-dev-password"),
    ("grant_type=password&username=bob%40example.com&username=ana%40example.com"
     "&password=ana-dev-password"),
])
def test_a_token_request_naming_a_parameter_twice_is_refused(anonymous, form) -> None:
    """RFC 6749 §3.1: no parameter more than once; which copy counted was the parser's pick."""
    response = anonymous.post("/api/v1/auth/token", content=form.encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and "access_token" not in body
    assert body["errors"][0]["field"] in ("grant_type", "username")


@pytest.mark.parametrize(("form", "status", "error"), [
    ({"grant_type": "client_credentials", "client_id": "ops-console",
      "client_secret": "wrong"}, 401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "loadgen",
      "client_secret": "loadgen-dev-secret", "scope": "ops"}, 400, "invalid_scope"),
    ({"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type"),
    ({"username": "ana@example.com"}, 400, "invalid_request"),
])
def test_token_endpoint_errors_follow_oauth(anonymous, form, status, error) -> None:
    response = anonymous.post("/api/v1/auth/token", data=form)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["errors"][0]["field"]  # every one names what to look at


def test_a_wrong_client_secret_challenges_only_a_client_that_used_basic(anonymous) -> None:
    """A Basic challenge to a browser's fetch() makes the browser prompt for credentials
    itself (the operator view's log-in with a wrong secret); RFC 6749 §5.2 asks for it only
    when the client authenticated with HTTP Basic."""
    client = f"probe-{uuid.uuid4().hex[:8]}"  # a count of its own (identity.throttle)
    in_form = anonymous.post("/api/v1/auth/token", data={
        "grant_type": "client_credentials", "client_id": client, "client_secret": "no"})
    assert in_form.status_code == 401
    assert "basic" not in in_form.headers.get("www-authenticate", "").lower()
    assert in_form.json()["error"] == "invalid_client"
    in_basic = anonymous.post("/api/v1/auth/token", data={"grant_type": "client_credentials"},
                              auth=(client, "no"))
    assert in_basic.status_code == 401 and in_basic.json()["error"] == "invalid_client"
    assert in_basic.headers["www-authenticate"] == 'Basic realm="saga-shop"'


def _log_in(http: httpx.Client, email: str, password: str) -> httpx.Response:
    return http.post("/api/v1/auth/token", data={"grant_type": "password", "username": email,
                                                 "password": password})


def _waits(response: httpx.Response, error: str, field: str) -> int:
    """A 429 of the per-account throttle: its Retry-After, after checking its shape."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"] == error and "access_token" not in body, body
    assert body["errors"][0]["field"] == field and "try again in" in body["detail"], body
    assert response.headers["cache-control"] == "no-store"
    return int(response.headers["retry-after"])


def test_guessing_a_password_waits_after_five_failures(anonymous) -> None:
    """identity.throttle: five wrong passwords, then each attempt waits (even the right one),
    the wait doubling; a burst while waiting is not counted; a success starts again."""
    email, password = f"guessed-{uuid.uuid4().hex[:8]}@example.com", "the right password"
    assert anonymous.post("/api/v1/customers", json={"name": "Gus", "email": email,
                                                     "password": password}).status_code == 201
    for _ in range(5):
        assert _log_in(anonymous, email, "a wrong guess").status_code == 400
    assert _waits(_log_in(anonymous, email, password), "invalid_grant", "username") == 1
    for _ in range(5):  # not counted: the wait does not grow
        assert _log_in(anonymous, email, "burst").status_code == 429
    time.sleep(1.1)
    assert _log_in(anonymous, email, "a sixth guess").status_code == 400
    assert _waits(_log_in(anonymous, email.upper(), password), "invalid_grant", "username") == 2
    time.sleep(2.1)
    assert _log_in(anonymous, email, password).status_code == 200
    assert _log_in(anonymous, email, "wrong again").status_code == 400  # counted from zero
    assert _log_in(anonymous, email, password).status_code == 200


def test_no_spelling_of_an_email_escapes_its_accounts_wait(anonymous) -> None:
    """The count is kept per account as the database tells emails apart (its lower(), which
    finds the account), not per spelling: where the database folds the Turkish capital dotted
    I (U+0130) to i, as in en_US.utf8, that spelling opens the same account and must wait with
    it; where it does not, it names no account at all. Either way it never logs in while the
    account waits (Python's lower() makes it i + a combining dot: a count of its own)."""
    email, password = f"iris-{uuid.uuid4().hex[:8]}@example.com", "the right password"
    assert anonymous.post("/api/v1/customers", json={"name": "Iris", "email": email,
                                                     "password": password}).status_code == 201
    for _ in range(5):
        assert _log_in(anonymous, email, "a wrong guess").status_code == 400
    assert _waits(_log_in(anonymous, email, password), "invalid_grant", "username") >= 1
    assert _waits(_log_in(anonymous, email.upper(), password), "invalid_grant", "username")
    for spelling in (email.replace("i", "\u0130", 1), email.replace("i", "\u0130")):
        answer = _log_in(anonymous, spelling, password)
        assert answer.status_code in (400, 429), (spelling, answer.text)
        if answer.status_code == 400:  # the database keeps it apart: no account, a 400 alike
            assert answer.json()["error"] == "invalid_grant"


def test_right_log_ins_at_once_never_wait(stack) -> None:
    """Only failures count: a customer's tabs (or a test's workers) logging in together."""
    email, password = f"tabs-{uuid.uuid4().hex[:8]}@example.com", "the right password"
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        assert http.post("/api/v1/customers", json={"name": "Tab", "email": email,
                                                    "password": password}).status_code == 201
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(
            lambda _: httpx.post(f"{stack.base_url}/api/v1/auth/token", timeout=30, data={
                "grant_type": "password", "username": email, "password": password}).status_code,
            range(12)))
    assert statuses == [200] * 12


def test_an_unknown_account_waits_alike(anonymous) -> None:
    """The wait is the same whether the account exists or not: it tells nobody which do."""
    email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(5):
        assert _log_in(anonymous, email, "guess").json()["error"] == "invalid_grant"
    assert _waits(_log_in(anonymous, email, "guess"), "invalid_grant", "username") == 1
    client = {"grant_type": "client_credentials", "client_id": f"bot-{uuid.uuid4().hex[:8]}",
              "client_secret": "guess"}
    for _ in range(5):
        assert anonymous.post("/api/v1/auth/token", data=client).status_code == 401
    assert _waits(anonymous.post("/api/v1/auth/token", data=client), "invalid_client",
                  "client_id") == 1

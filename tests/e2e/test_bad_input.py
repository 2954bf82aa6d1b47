"""Every bad input gets a 4xx with a JSON body naming the field, and writes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.conftest import CUSTOMER, newest_order


def fields(response) -> list[str]:
    return [e["field"] for e in response.json().get("errors", [])]


def good(**changes: Any) -> dict[str, Any]:
    body = {"customer": dict(CUSTOMER), "items": [{"sku": "fries", "quantity": 1}],
            "payment_token": "tok_visa"}
    body.update(changes)
    return body


BAD_ORDERS = [
    ("missing customer", {k: v for k, v in good().items() if k != "customer"}, 422, "customer"),
    ("missing items", {k: v for k, v in good().items() if k != "items"}, 422, "items"),
    ("empty items", good(items=[]), 422, "items"),
    ("bad email", good(customer={"name": "Ana", "email": "not-an-email"}), 422, "customer.email"),
    ("empty name", good(customer={"name": "", "email": "a@b.co"}), 422, "customer.name"),
    ("NUL in name", good(customer={"name": "A\u0000", "email": "a@b.co"}), 422,
     "customer.name"),
    ("NUL in email", good(customer={"name": "A", "email": "a\u0000@b.co"}), 422,
     "customer.email"),
    ("quantity 0", good(items=[{"sku": "fries", "quantity": 0}]), 422, "items[0].quantity"),
    ("negative quantity", good(items=[{"sku": "fries", "quantity": -3}]), 422,
     "items[0].quantity"),
    ("absurd quantity", good(items=[{"sku": "fries", "quantity": 10**9}]), 422,
     "items[0].quantity"),
    ("quantity as text", good(items=[{"sku": "fries", "quantity": "two"}]), 422,
     "items[0].quantity"),
    ("quantity as float", good(items=[{"sku": "fries", "quantity": 1.5}]), 422,
     "items[0].quantity"),
    ("unknown sku", good(items=[{"sku": "fries", "quantity": 1},
                                {"sku": "caviar", "quantity": 1}]), 422, "items[1].sku"),
    ("sku mistyped", good(items=[{"sku": 42, "quantity": 1}]), 422, "items[0].sku"),
    ("malformed token", good(payment_token="visa please"), 422, "payment_token"),
    ("unknown token", good(payment_token="tok_doesNotExist"), 422, "payment_token"),
    ("items not a list", good(items="fries"), 422, "items"),
    ("NUL in callback_url", good(callback_url="http://127.0.0.1/\u0000"), 422, "callback_url"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_ORDERS,
                         ids=[c[0] for c in BAD_ORDERS])
def test_bad_orders_are_rejected_naming_the_field(client, case, body, status, field):
    before = newest_order(client)
    response = client.post("/api/v1/orders", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert field in fields(response), response.json()
    assert newest_order(client) == before  # nothing half-written


def test_malformed_json_is_a_400_naming_the_body(client):
    response = client.post("/api/v1/orders", content=b'{"customer": ',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert fields(response) == ["body"]


def test_json_nested_too_deeply_is_a_400_naming_the_body(client):
    before = newest_order(client)
    response = client.post("/api/v1/orders", content=b"[" * 5000 + b"]" * 5000,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert fields(response) == ["body"]
    assert newest_order(client) == before


@pytest.mark.parametrize("form", [
    {"grant_type": "password", "username": "ana@example.com\u0000", "password": "x" * 8},
    {"grant_type": "password", "username": "ana@example.com", "password": "\u0000" * 8},
    {"grant_type": "client_credentials", "client_id": "ops\u0000", "client_secret": "x"},
])
def test_a_nul_in_the_token_form_is_a_400_naming_the_field(anonymous, form):
    response = anonymous.post("/api/v1/auth/token", data=form)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    field = next(name for name, value in form.items() if "\u0000" in value)
    assert fields(response) == [field]


def test_unknown_and_malformed_order_ids(client):
    unknown = client.get(f"/api/v1/orders/{uuid.uuid4()}")
    assert unknown.status_code == 404 and fields(unknown) == ["order_id"]
    malformed = client.get("/api/v1/orders/not-a-uuid")
    assert malformed.status_code == 422 and fields(malformed) == ["order_id"]


CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123",
        "holder": "Ana"}
BAD_CARDS = [
    ("luhn", {**CARD, "number": "4242424242424241"}, "number"),
    ("letters", {**CARD, "number": "4242abcd42424242"}, "number"),
    ("expired", {**CARD, "exp_year": 2020}, "exp_year"),
    ("month 13", {**CARD, "exp_month": 13}, "exp_month"),
    ("cvc", {**CARD, "cvc": "1"}, "cvc"),
    ("no holder", {k: v for k, v in CARD.items() if k != "holder"}, "holder"),
    ("NUL in holder", {**CARD, "holder": "A\u0000"}, "holder"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_CARDS, ids=[c[0] for c in BAD_CARDS])
def test_bad_cards_are_rejected_without_echoing_the_number(client, case, body, field):
    response = client.post("/api/v1/payments/cards", json=body)
    assert response.status_code == 422, response.text
    assert any(f.startswith(field) for f in fields(response)), response.json()
    assert body["number"] not in response.text


def test_payments_need_a_valid_order_id(client):
    assert fields(client.get("/api/v1/payments")) == ["order_id"]
    assert client.get("/api/v1/payments", params={"order_id": "x"}).status_code == 422
    assert client.get("/api/v1/payments", params={"order_id": str(uuid.uuid4())}).json() == []


def test_stock_updates_are_validated(client):
    assert client.put("/api/v1/production/stock/caviar", json={"available": 1}).status_code == 404
    negative = client.put("/api/v1/production/stock/fries", json={"available": -1})
    assert negative.status_code == 422 and fields(negative) == ["available"]
    text = client.put("/api/v1/production/stock/fries", json={"available": "many"})
    assert text.status_code == 422 and fields(text) == ["available"]
    # a sku is visible text, in a path as in an order: no line break, bidi override, zero-width
    for sku in ("a%0Ab", "a%E2%80%AEb", "a%E2%80%8Bb", "a%09b"):
        for answer in (client.get(f"/api/v1/production/stock/{sku}"),
                       client.put(f"/api/v1/production/stock/{sku}", json={"available": 1})):
            assert answer.status_code == 422 and fields(answer) == ["sku"], (sku, answer.text)

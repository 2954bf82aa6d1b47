"""The saga end to end through nginx, as a client sees it: every outcome and its money trail."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from tests.e2e.conftest import TERMINAL, payments_of, place, set_stock, stock_of, wait_for


def menu_prices(client) -> dict[str, Decimal]:
    return {p["sku"]: Decimal(p["price"]) for p in client.get("/api/v1/products").json()}


def test_the_menu_lists_skus_names_and_prices_as_strings(client):
    response = client.get("/api/v1/products")
    assert response.status_code == 200
    products = response.json()
    assert {"sku", "name", "price"} <= set(products[0])
    assert all(isinstance(p["price"], str) and Decimal(p["price"]) > 0 for p in products)


def test_happy_path_reaches_finished_through_every_status(client):
    set_stock(client, "burger-classic", 100)
    prices = menu_prices(client)
    response = place(client, [("burger-classic", 2), ("fries", 1)])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending_payment"
    assert response.headers["location"] == f"/api/v1/orders/{body['id']}"

    order = wait_for(client, body["id"], TERMINAL)
    assert order["status"] == "finished"
    assert [s["status"] for s in order["timeline"]] == [
        "pending_payment", "paid", "received", "in_production", "finished"]
    times = [datetime.fromisoformat(s["at"]) for s in order["timeline"]]
    assert times == sorted(times)
    expected = prices["burger-classic"] * 2 + prices["fries"]
    assert Decimal(order["total"]) == expected
    assert {i["sku"]: i["quantity"] for i in order["items"]} == {"burger-classic": 2, "fries": 1}

    ledger = payments_of(client, body["id"])
    assert [(p["kind"], p["status"], Decimal(p["amount"])) for p in ledger] == [
        ("charge", "approved", expected)]
    assert stock_of(client, "burger-classic") == 98


def test_prices_come_from_the_menu_not_the_client(client):
    body = {"customer": {"name": "Eve", "email": "eve@example.com"},
            "items": [{"sku": "fries", "quantity": 1, "price": "0.01"}],
            "payment_token": "tok_visa"}
    assert client.post("/api/v1/orders", json=body).status_code == 422  # no price field at all


def test_a_declined_card_cancels_the_order_and_charges_nothing(client):
    order_id = place(client, [("lemonade", 1)], token="tok_chargeDeclined").json()["id"]
    order = wait_for(client, order_id, TERMINAL)
    assert order["status"] == "cancelled"
    assert "card_declined" in order["cancellation_reason"]
    assert [s["status"] for s in order["timeline"]] == ["pending_payment", "cancelled"]
    assert [(p["kind"], p["status"]) for p in payments_of(client, order_id)] == [
        ("charge", "declined")]


def test_insufficient_funds_cancels_with_that_reason(client):
    order_id = place(client, [("brownie", 1)],
                     token="tok_chargeDeclinedInsufficientFunds").json()["id"]
    order = wait_for(client, order_id, TERMINAL)
    assert order["status"] == "cancelled"
    assert "insufficient_funds" in order["cancellation_reason"]
    ledger = payments_of(client, order_id)
    assert [(p["status"], p["reason"]) for p in ledger] == [("declined", "insufficient_funds")]


def test_more_than_the_stock_is_charged_then_refunded(client):
    set_stock(client, "truffle-risotto", 2)
    order_id = place(client, [("truffle-risotto", 3)]).json()["id"]
    order = wait_for(client, order_id, TERMINAL)
    assert order["status"] == "refunded"
    statuses = [s["status"] for s in order["timeline"]]
    assert statuses == ["pending_payment", "paid", "cancelling", "refunded"]
    assert "out of stock" in order["cancellation_reason"]
    ledger = payments_of(client, order_id)
    charge, refund = ledger
    assert (charge["kind"], charge["status"]) == ("charge", "approved")
    assert (refund["kind"], refund["status"], refund["refund_of"]) == (
        "refund", "refunded", charge["id"])
    assert refund["amount"] == charge["amount"] == order["total"]
    assert stock_of(client, "truffle-risotto") == 2  # nothing was reserved


def test_a_tokenized_card_pays_and_its_number_is_never_returned(client):
    card = client.post("/api/v1/payments/cards", json={
        "number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2040, "cvc": "123",
        "holder": "Ana Souza"})
    assert card.status_code == 201, card.text
    assert card.json()["last4"] == "4242" and card.json()["brand"] == "visa"
    assert "4242424242424242" not in card.text and "cvc" not in card.json()
    order_id = place(client, [("fries", 1)], token=card.json()["token"]).json()["id"]
    assert wait_for(client, order_id, TERMINAL)["status"] == "finished"


def test_a_tokenized_declining_card_cancels(client):
    card = client.post("/api/v1/payments/cards", json={
        "number": "4000000000000002", "exp_month": 1, "exp_year": 2041, "cvc": "999",
        "holder": "Bo"}).json()
    order_id = place(client, [("fries", 1)], token=card["token"]).json()["id"]
    assert wait_for(client, order_id, TERMINAL)["status"] == "cancelled"


def test_orders_can_be_listed_by_one_or_several_statuses(client):
    declined = place(client, [("lemonade", 1)], token="tok_chargeDeclined").json()["id"]
    finished = place(client, [("lemonade", 1)]).json()["id"]
    wait_for(client, declined, TERMINAL)
    wait_for(client, finished, TERMINAL)

    def listed(*statuses: str) -> dict[str, str]:
        response = client.get("/api/v1/orders", params={"status": list(statuses), "limit": 500})
        assert response.status_code == 200
        return {o["id"]: o["status"] for o in response.json()}

    assert listed("cancelled")[declined] == "cancelled" and finished not in listed("cancelled")
    both = listed("cancelled", "finished")
    assert (both[declined], both[finished]) == ("cancelled", "finished")
    assert set(both.values()) <= {"cancelled", "finished"}
    response = client.get("/api/v1/orders", params={"status": ["finished", "lost"]})
    assert response.status_code == 422
    assert "status" in response.text

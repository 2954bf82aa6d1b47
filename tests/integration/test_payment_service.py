"""The payment service against a real RabbitMQ and PostgreSQL, as its neighbours see it.

``python -m payment`` runs as a process of its own on a database and a RabbitMQ vhost of its own
(``saga_test_payment``, both re-created each run; see tests/integration/conftest.py), so other
services' processes neither see its events nor take its messages. The tests publish what the
order service would publish, through the same publish path, and watch ``saga.events`` for what
payment announces.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import httpx
import pytest

from sagakit.envelope import OutgoingEvent
from sagakit.events import (
    CardTokenized,
    Event,
    EventType,
    OrderCancelled,
    OrderCreated,
    OrderLine,
)
from tests.conftest import Infra
from tests.integration.conftest import EventTap, ServiceProcess, until

ROLE = "payment_svc"
E = EventType

VISA = "4242424242424242"
DECLINED = "4000000000000002"
INSUFFICIENT = "4000000000009995"


# --- infrastructure -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def database_url(infra: Infra, own_name: str) -> str:
    """A fresh database for this run, owned by the service's role."""
    return infra.fresh_database(own_name, ROLE, ROLE)


@pytest.fixture(scope="module")
def tap_keys() -> Sequence[str]:
    return ("payment.#",)


@pytest.fixture(scope="module")
async def service(rabbitmq_url: str, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    env = {"PAYMENT_DATABASE_URL": database_url, "RABBITMQ_URL": rabbitmq_url,
           "OUTBOX_SWEEP_SECONDS": "600"}  # events go out on a wake-up only (sagakit.units)
    log_path: Path = tmp_path_factory.mktemp("payment") / "service.log"
    async with ServiceProcess("payment", env, log_path) as running:
        yield running


@pytest.fixture(scope="module")
async def db(service: ServiceProcess, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


# --- helpers ------------------------------------------------------------------------------------

def card_body(number: Any = VISA, **overrides: Any) -> dict[str, Any]:
    return {"number": number, "exp_month": 12, "exp_year": datetime.now(UTC).year + 3,
            "cvc": "123", "holder": "Ana Souza", **overrides}


def outgoing(event: Event, order_id: UUID) -> OutgoingEvent:
    return OutgoingEvent.build(event, source="saga-shop/order", subject=str(order_id))


# The operator console owns the cards these tests tokenize (the service's HTTP client is it).
OWNER = "ops-console"


def order_created(token: str, amount: str = "12.50",
                  owner: str | None = OWNER) -> tuple[UUID, OutgoingEvent]:
    order_id = uuid4()
    lines = (OrderLine(sku="burger-classic", name="Classic burger", quantity=1,
                       unit_price=Decimal("8.50")),
             OrderLine(sku="lemonade", name="Lemonade", quantity=1, unit_price=Decimal("4.00")))
    event = OrderCreated(order_id=order_id, amount=Decimal(amount), currency="EUR",
                         payment_token=token, lines=lines, owner=owner)
    return order_id, outgoing(event, order_id)


def order_cancelled(order_id: UUID, reason: str = "cancelled by the customer") -> OutgoingEvent:
    return outgoing(OrderCancelled(order_id=order_id, reason=reason, requested_by="customer"),
                    order_id)


async def ledger(http: httpx.AsyncClient, order_id: UUID) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/payments", params={"order_id": str(order_id)})
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()
    return records


async def tokenize(http: httpx.AsyncClient, number: str) -> str:
    response = await http.post("/api/v1/payments/cards", json=card_body(number))
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


# --- cards --------------------------------------------------------------------------------------

async def test_a_card_is_tokenized_announced_and_never_kept_in_full(
    http: httpx.AsyncClient, tap: EventTap, db: asyncpg.Connection, service: ServiceProcess,
) -> None:
    response = await http.post("/api/v1/payments/cards",
                               json=card_body("4242 4242 4242 4242", cvc="987"))

    assert response.status_code == 201, response.text
    card = response.json()
    assert re.fullmatch(r"tok_[0-9a-f]{24}", card["token"])
    assert card == {"token": card["token"], "brand": "visa", "last4": "4242", "exp_month": 12,
                    "exp_year": datetime.now(UTC).year + 3}
    assert response.headers["Location"] == f"/api/v1/payments/cards/{card['token']}"
    assert (await http.get(response.headers["Location"])).json() == card

    # Its subject names the card without being the token (a credential that can pay).
    subject = CardTokenized.subject_of(card["token"])
    assert card["token"] not in subject
    announced = await tap.next(E.CARD_TOKENIZED, subject)
    assert {k: announced[k] for k in ("token", "brand", "last4")} == {
        "token": card["token"], "brand": "visa", "last4": "4242"}
    assert datetime.fromisoformat(announced["created_at"]).tzinfo is not None

    stored = await db.fetchrow("SELECT * FROM cards WHERE token = $1", card["token"])
    assert set(stored.keys()) == {"token", "brand", "last4", "exp_month", "exp_year", "holder",
                                  "decline_reason", "created_at", "owner"}
    assert not any(VISA in str(value) or str(value) == "987" for value in stored.values())
    log = service.log_path.read_text()
    assert VISA not in log and "4242 4242 4242 4242" not in log and '"987"' not in log


def _expired_month() -> tuple[dict[str, int], str]:
    today = datetime.now(UTC).date()
    if today.month == 1:
        return {"exp_month": 12, "exp_year": today.year - 1}, "exp_year"
    return {"exp_month": today.month - 1, "exp_year": today.year}, "exp_month"


@pytest.mark.parametrize(("body", "field"), [
    (card_body("4242 4242 4242 4241"), "number"),
    (card_body("4242"), "number"),
    (card_body(exp_year=datetime.now(UTC).year - 1), "exp_year"),
    (card_body(**_expired_month()[0]), _expired_month()[1]),
    (card_body(exp_month=13), "exp_month"),
    (card_body(exp_month="12"), "exp_month"),
    (card_body(cvc="12"), "cvc"),
    (card_body("378282246310005", cvc="123"), "cvc"),
    (card_body(holder=" "), "holder"),
    (card_body(number=4242424242424242), "number"),
    (card_body(pin="0000"), "pin"),
])
async def test_an_invalid_card_is_refused_naming_the_field_without_echoing_it(
    http: httpx.AsyncClient, body: dict[str, Any], field: str,
) -> None:
    response = await http.post("/api/v1/payments/cards", json=body)

    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == [field]
    digits = str(body["number"]).replace(" ", "")
    assert digits not in response.text and str(body["number"]) not in response.text
    assert f'"{body["cvc"]}"' not in response.text


async def test_an_unknown_card_is_not_found(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/payments/cards/tok_000000000000000000000000")

    assert response.status_code == 404
    assert response.json()["errors"] == [{"field": "token", "message": "no card with this token"}]


@pytest.mark.parametrize("params", [{}, {"order_id": "not-a-uuid"}])
async def test_the_ledger_needs_an_order_id(http: httpx.AsyncClient,
                                            params: dict[str, str]) -> None:
    response = await http.get("/api/v1/payments", params=params)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["order_id"]


async def test_an_order_never_charged_has_an_empty_ledger(http: httpx.AsyncClient) -> None:
    assert await ledger(http, uuid4()) == []


# --- charging -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("token", "outcome", "reason"), [
    ("tok_visa", "approved", None),
    ("tok_chargeDeclined", "declined", "card_declined"),
    ("tok_chargeDeclinedInsufficientFunds", "declined", "insufficient_funds"),
    ("tok_neverIssued", "declined", "unknown_token"),
])
async def test_an_order_is_charged_once_and_the_decision_announced(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, token: str, outcome: str,
    reason: str | None,
) -> None:
    order_id, created = order_created(token)

    await publish(created)

    processed = await tap.next(E.PAYMENT_PROCESSED, order_id)
    assert processed == {"order_id": str(order_id), "payment_id": processed["payment_id"],
                         "outcome": outcome, "amount": "12.50", "currency": "EUR",
                         "reason": reason}
    [charge] = await ledger(http, order_id)
    assert charge == {"id": processed["payment_id"], "order_id": str(order_id), "kind": "charge",
                      "status": outcome, "amount": "12.50", "currency": "EUR", "reason": reason,
                      "refund_of": None, "created_at": charge["created_at"]}


@pytest.mark.parametrize(("number", "outcome", "reason"), [
    (VISA, "approved", None),
    ("5555 5555 5555 4444", "approved", None),
    (DECLINED, "declined", "card_declined"),
    (INSUFFICIENT, "declined", "insufficient_funds"),
])
async def test_a_tokenized_card_is_charged_as_its_test_number_says(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, number: str, outcome: str,
    reason: str | None,
) -> None:
    order_id, created = order_created(await tokenize(http, number))

    await publish(created)

    processed = await tap.next(E.PAYMENT_PROCESSED, order_id)
    assert (processed["outcome"], processed["reason"]) == (outcome, reason)


@pytest.mark.parametrize("owner", ["someone-else", None])
async def test_a_saved_card_pays_only_for_its_owners_orders(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, owner: str | None,
) -> None:
    order_id, created = order_created(await tokenize(http, VISA), owner=owner)

    await publish(created)

    processed = await tap.next(E.PAYMENT_PROCESSED, order_id)
    assert (processed["outcome"], processed["reason"]) == ("declined", "card_not_yours")


async def test_a_redelivered_order_created_charges_once(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: ServiceProcess,
) -> None:
    order_id, created = order_created("tok_visa")
    await publish(created)
    await tap.next(E.PAYMENT_PROCESSED, order_id)

    await publish(created)  # the same event id again, as after a relay crash

    await service.logged(created.id, "duplicate order.created ignored")
    assert len(await ledger(http, order_id)) == 1
    assert len(tap.bodies(E.PAYMENT_PROCESSED, order_id)) == 1


async def test_an_order_created_twice_under_two_ids_is_still_charged_once(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: ServiceProcess,
) -> None:
    order_id, created = order_created("tok_visa")
    await publish(created)
    await tap.next(E.PAYMENT_PROCESSED, order_id)
    again = outgoing(OrderCreated.model_validate_json(created.body), order_id)

    await publish(again)

    await service.logged(again.id, "the order is charged already")
    assert len(await ledger(http, order_id)) == 1


async def test_an_amount_that_cannot_be_charged_is_parked_not_charged(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: ServiceProcess,
    dead_letters: aio_pika.abc.AbstractQueue,
) -> None:
    order_id, created = order_created("tok_visa", amount="0.00")

    await publish(created)

    await service.logged(created.id, "parked")
    parked = await dead_letters.get(timeout=5)
    await parked.ack()
    assert parked.message_id == str(created.id)
    assert "amount that cannot be charged" in str(parked.headers["x-dead-letter-reason"])
    assert await ledger(http, order_id) == []
    assert tap.bodies(E.PAYMENT_PROCESSED, order_id) == []


# --- compensation -------------------------------------------------------------------------------

async def test_a_cancelled_charged_order_is_refunded_once(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: ServiceProcess,
) -> None:
    order_id, created = order_created("tok_visa")
    await publish(created)
    processed = await tap.next(E.PAYMENT_PROCESSED, order_id)
    cancelled = order_cancelled(order_id)

    await publish(cancelled)

    refunded = await tap.next(E.PAYMENT_REFUNDED, order_id)
    charge, refund = await ledger(http, order_id)
    assert refunded == {"order_id": str(order_id), "payment_id": refund["id"],
                        "refund_of": processed["payment_id"], "amount": "12.50",
                        "currency": "EUR"}
    assert (charge["id"], charge["kind"], charge["status"]) == (
        processed["payment_id"], "charge", "approved")
    assert (refund["kind"], refund["status"], refund["amount"], refund["refund_of"]) == (
        "refund", "refunded", "12.50", charge["id"])

    again = order_cancelled(order_id)
    await publish(cancelled)  # redelivered
    await publish(again)  # a second cancellation of the same order
    await service.logged(cancelled.id, "duplicate order.cancelled ignored")
    await service.logged(again.id, "order cancelled: none")
    assert len(await ledger(http, order_id)) == 2
    assert len(tap.bodies(E.PAYMENT_REFUNDED, order_id)) == 1
    assert tap.bodies(E.PAYMENT_VOIDED, order_id) == []


async def test_a_cancelled_declined_order_is_voided(
    http: httpx.AsyncClient, tap: EventTap, publish: Any,
) -> None:
    order_id, created = order_created("tok_chargeDeclined")
    await publish(created)
    await tap.next(E.PAYMENT_PROCESSED, order_id)

    await publish(order_cancelled(order_id, "payment declined: card_declined"))

    voided = await tap.next(E.PAYMENT_VOIDED, order_id)
    assert voided == {"order_id": str(order_id), "reason": "charge_declined"}
    [charge] = await ledger(http, order_id)
    assert charge["status"] == "declined"
    assert tap.bodies(E.PAYMENT_REFUNDED, order_id) == []


async def test_an_order_cancelled_before_payment_saw_it_is_voided_and_never_charged(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: ServiceProcess,
) -> None:
    order_id, created = order_created("tok_visa")

    await publish(order_cancelled(order_id))
    voided = await tap.next(E.PAYMENT_VOIDED, order_id)
    await publish(created)

    assert voided == {"order_id": str(order_id), "reason": "cancelled_before_charge"}
    await service.logged(created.id, "cancelled before it was charged")
    assert await ledger(http, order_id) == []
    assert tap.bodies(E.PAYMENT_PROCESSED, order_id) == []


async def test_created_and_cancelled_racing_end_in_exactly_one_settlement_per_order(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: ServiceProcess,
) -> None:
    orders = [order_created("tok_visa") for _ in range(20)]

    # Both events of each order at once: the consumer handles deliveries concurrently, so
    # either may win the order's lock.
    await asyncio.gather(*(publish(e) for order_id, created in orders
                           for e in (created, order_cancelled(order_id))))

    for order_id, created in orders:
        await tap.until_any(order_id, E.PAYMENT_REFUNDED, E.PAYMENT_VOIDED)
        refunded = tap.bodies(E.PAYMENT_REFUNDED, order_id)
        voided = tap.bodies(E.PAYMENT_VOIDED, order_id)
        if voided:  # the cancellation came first: the charge must never happen
            await service.logged(created.id, "cancelled before it was charged")
            assert await ledger(http, order_id) == []
            assert voided == [{"order_id": str(order_id), "reason": "cancelled_before_charge"}]
        else:
            charge, refund = await ledger(http, order_id)
            assert (charge["status"], refund["status"]) == ("approved", "refunded")
        assert len(refunded) + len(voided) == 1


# The two handlers of an order serialise on its advisory lock, and each reads the order's state
# in a statement after the one that took the lock: in READ COMMITTED a statement reads with the
# snapshot of its start, so reads in the statement that waited for the lock would miss what the
# previous holder committed. Here the test plays the other handler: it holds the order's lock,
# lets the service queue up behind it, then commits its own effect.

async def _until_waiting_for_an_order_lock(db: asyncpg.Connection) -> None:
    async def waiting() -> bool:
        # pg_locks is live state, not a snapshot: it answers inside the test's transaction too.
        return bool(await db.fetchval(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
        ))

    await until(waiting, "the service waiting for the order's lock")


async def test_a_cancellation_committed_while_the_charge_waited_for_the_lock_prevents_it(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: ServiceProcess,
    db: asyncpg.Connection,
) -> None:
    order_id, created = order_created("tok_visa")

    async with db.transaction():  # as order.cancelled's handler would, holding the lock
        await db.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(order_id))
        await publish(created)
        await _until_waiting_for_an_order_lock(db)
        await db.execute("INSERT INTO order_cancellations (order_id, reason) VALUES ($1, $2)",
                         order_id, "cancelled by the customer")

    await service.logged(created.id, "cancelled before it was charged")
    assert await ledger(http, order_id) == []
    assert tap.bodies(E.PAYMENT_PROCESSED, order_id) == []


async def test_a_charge_committed_while_the_cancellation_waited_for_the_lock_is_refunded(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, db: asyncpg.Connection,
) -> None:
    order_id, charge_id = uuid4(), uuid4()

    async with db.transaction():  # as order.created's handler would, holding the lock
        await db.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(order_id))
        await publish(order_cancelled(order_id))
        await _until_waiting_for_an_order_lock(db)
        await db.execute(
            "INSERT INTO payments (id, order_id, kind, status, amount, currency, payment_token)"
            " VALUES ($1, $2, 'charge', 'approved', 12.50, 'EUR', 'tok_visa')",
            charge_id, order_id)

    refunded = await tap.next(E.PAYMENT_REFUNDED, order_id)
    assert (refunded["refund_of"], refunded["amount"]) == (str(charge_id), "12.50")
    assert [r["kind"] for r in await ledger(http, order_id)] == ["charge", "refund"]
    assert tap.bodies(E.PAYMENT_VOIDED, order_id) == []

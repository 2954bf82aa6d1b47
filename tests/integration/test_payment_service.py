"""The payment service against a real RabbitMQ and PostgreSQL, as its neighbours see it.

``python -m payment`` runs as a process of its own on a throwaway database (``payments_it``,
re-created per run) and a RabbitMQ vhost of its own (``pay_dev``), so other services' processes
neither see its events nor take its messages. The tests publish what the order service would
publish, through the same publish path, and watch ``saga.events`` for what payment announces.

A missing server fails the run. Override the defaults with ``PAYMENT_IT_RABBITMQ_URL`` and
``PAYMENT_IT_ADMIN_DSN`` (a PostgreSQL superuser); the vhost is created once with
``rabbitmqctl add_vhost pay_dev && rabbitmqctl set_permissions -p pay_dev guest '.*' '.*' '.*'``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import httpx
import pytest
import pytest_asyncio
from faststream.rabbit import RabbitBroker

from sagakit.envelope import OutgoingEvent
from sagakit.events import Event, EventType, OrderCancelled, OrderCreated, OrderLine
from sagakit.outbox import EventPublisher

RABBITMQ_URL = os.environ.get("PAYMENT_IT_RABBITMQ_URL",
                              "amqp://guest:guest@127.0.0.1:5672/pay_dev")
ADMIN_DSN = os.environ.get("PAYMENT_IT_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "payments_it"
ROLE = "payment_svc"
DEADLINE = 15.0  # seconds any awaited outcome may take
E = EventType

VISA = "4242424242424242"
DECLINED = "4000000000000002"
INSUFFICIENT = "4000000000009995"


# --- infrastructure -----------------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module")
async def database_url() -> str:
    """A fresh database for this run, owned by the service's role (created if missing)."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc!r}")
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE):
            await admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE}'")
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    finally:
        await admin.close()
    host = ADMIN_DSN.split("@", 1)[1].split("/", 1)[0]
    return f"postgresql://{ROLE}:{ROLE}@{host}/{DATABASE}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Service:
    """The running ``python -m payment`` process and its JSON log."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, base_url: str) -> None:
        self.process, self.log_path, self.base_url = process, log_path, base_url

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                lines.append({"message": raw})
        return lines

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-count:])

    async def logged(self, event_id: UUID, words: str) -> None:
        """Wait until the service logs ``words`` while handling the event ``event_id``."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if any(line.get("event_id") == str(event_id) and words in line.get("message", "")
                   for line in self.log_lines()):
                return
            await asyncio.sleep(0.05)  # a file gives no event to wait on: poll it
        pytest.fail(f"no log line '{words}' for event {event_id}; log:\n{self.tail()}")


@pytest.fixture(scope="module")
def service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("payment") / "service.log"
    env = {
        **os.environ,
        "PAYMENT_DATABASE_URL": database_url,
        "RABBITMQ_URL": RABBITMQ_URL,
        "PAYMENT_HTTP_HOST": "127.0.0.1",
        "PAYMENT_HTTP_PORT": str(port),
        "LOG_LEVEL": "INFO",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "payment"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    running = Service(process, log_path, f"http://127.0.0.1:{port}")
    try:
        _wait_until_ready(running)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(service: Service) -> None:
    deadline = time.monotonic() + 30
    last: object = None
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"python -m payment exited with {service.process.returncode}:\n"
                        f"{service.tail()}")
        try:
            response = httpx.get(f"{service.base_url}/health/ready", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)  # nothing to wait on before it listens
    pytest.fail(f"payment never became ready ({last!r}):\n{service.tail()}")


@pytest_asyncio.fixture(scope="module")
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
        yield client


@pytest_asyncio.fixture(scope="module")
async def db(service: Service, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest_asyncio.fixture(scope="module")
async def publish(service: Service) -> AsyncIterator[Any]:
    """Publish as the order service does: its relay's publish path, on the test vhost."""
    broker = RabbitBroker(RABBITMQ_URL)
    await broker.connect()
    publisher = EventPublisher(broker)
    yield publisher.publish
    await broker.stop()


class EventTap:
    """A temporary queue bound to everything payment announces."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self.seen: list[aio_pika.abc.AbstractIncomingMessage] = []
        self._arrived = asyncio.Event()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        self.seen.append(message)
        self._arrived.set()

    def bodies(self, event_type: str, subject: object) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.seen
                if m.routing_key == event_type and m.headers.get("ce-subject") == str(subject)]

    async def until_any(self, subject: object, *event_types: str) -> None:
        """Wait until one of ``event_types`` about ``subject`` has arrived."""
        try:
            async with asyncio.timeout(DEADLINE):
                while not any(self.bodies(t, subject) for t in event_types):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            pytest.fail(f"none of {event_types} for {subject}; saw "
                        f"{[(m.routing_key, m.headers.get('ce-subject')) for m in self.seen]}")

    async def next(self, event_type: str, subject: object) -> dict[str, Any]:
        """The first ``event_type`` about ``subject``, waiting for it if need be."""
        await self.until_any(subject, event_type)
        return self.bodies(event_type, subject)[0]


@pytest_asyncio.fixture(scope="module")
async def tap(service: Service) -> AsyncIterator[EventTap]:
    try:
        connection = await aio_pika.connect(RABBITMQ_URL)
    except Exception as exc:
        pytest.fail(f"RabbitMQ is not reachable at {RABBITMQ_URL} (does the vhost exist?): "
                    f"{exc!r}")
    channel = await connection.channel()
    exchange = await channel.get_exchange("saga.events")  # declared by the service at start
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key="payment.#")
    tapped = EventTap(channel)
    await queue.consume(tapped.on_message)
    yield tapped
    await connection.close()


@pytest_asyncio.fixture
async def dead_letters(tap: EventTap) -> aio_pika.abc.AbstractQueue:
    """The service's parking queue, emptied of what earlier runs left in it."""
    queue = await tap.channel.get_queue("payment.dead-letters")
    await queue.purge()
    return queue


# --- helpers ------------------------------------------------------------------------------------

def card_body(number: Any = VISA, **overrides: Any) -> dict[str, Any]:
    return {"number": number, "exp_month": 12, "exp_year": datetime.now(UTC).year + 3,
            "cvc": "123", "holder": "Ana Souza", **overrides}


def outgoing(event: Event, order_id: UUID) -> OutgoingEvent:
    return OutgoingEvent.build(event, source="saga-shop/order", subject=str(order_id))


def order_created(token: str, amount: str = "12.50") -> tuple[UUID, OutgoingEvent]:
    order_id = uuid4()
    lines = (OrderLine(sku="burger-classic", name="Classic burger", quantity=1,
                       unit_price=Decimal("8.50")),
             OrderLine(sku="lemonade", name="Lemonade", quantity=1, unit_price=Decimal("4.00")))
    event = OrderCreated(order_id=order_id, amount=Decimal(amount), currency="EUR",
                         payment_token=token, lines=lines)
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
    http: httpx.AsyncClient, tap: EventTap, db: asyncpg.Connection, service: Service,
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

    announced = await tap.next(E.CARD_TOKENIZED, card["token"])
    assert {k: announced[k] for k in ("token", "brand", "last4")} == {
        "token": card["token"], "brand": "visa", "last4": "4242"}
    assert datetime.fromisoformat(announced["created_at"]).tzinfo is not None

    stored = await db.fetchrow("SELECT * FROM cards WHERE token = $1", card["token"])
    assert set(stored.keys()) == {"token", "brand", "last4", "exp_month", "exp_year", "holder",
                                  "decline_reason", "created_at"}
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


async def test_a_redelivered_order_created_charges_once(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: Service,
) -> None:
    order_id, created = order_created("tok_visa")
    await publish(created)
    await tap.next(E.PAYMENT_PROCESSED, order_id)

    await publish(created)  # the same event id again, as after a relay crash

    await service.logged(created.id, "duplicate order.created ignored")
    assert len(await ledger(http, order_id)) == 1
    assert len(tap.bodies(E.PAYMENT_PROCESSED, order_id)) == 1


async def test_an_order_created_twice_under_two_ids_is_still_charged_once(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: Service,
) -> None:
    order_id, created = order_created("tok_visa")
    await publish(created)
    await tap.next(E.PAYMENT_PROCESSED, order_id)
    again = outgoing(OrderCreated.model_validate_json(created.body), order_id)

    await publish(again)

    await service.logged(again.id, "the order is charged already")
    assert len(await ledger(http, order_id)) == 1


async def test_an_amount_that_cannot_be_charged_is_parked_not_charged(
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: Service,
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
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: Service,
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
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: Service,
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
    http: httpx.AsyncClient, tap: EventTap, publish: Any, service: Service,
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

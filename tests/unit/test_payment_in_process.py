"""The payment service's saga steps in process: its real handlers, middleware and use cases on
FastStream's in-memory broker (TestRabbitBroker), over an in-memory ledger. Milliseconds each.

What this layer proves: order.created and order.cancelled reach their handlers through the
service's real bindings and filters; the use case lets payment.domain decide (the issuer's
answer, the decline-rate switch, refund or void) and hands the store what it decided with the
event it announces; the order's lock comes first; a cancellation's tombstone stops a later
charge, and a redelivery changes nothing. What it leaves to tests/integration: the SQL
(payment.store: one statement per step), the outbox relay, the customer-data handlers (they
run their SQL themselves) and the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from uuid import UUID, uuid4

import pytest
from faststream.rabbit import TestRabbitBroker

from payment import handlers, service, store
from payment.domain import FAULT_DECLINE, Card, Charge, Outcome, PaymentFaults, tokenize
from payment.settings import PaymentSettings
from sagakit.consuming import Poison
from sagakit.envelope import EventMeta, OutgoingEvent
from sagakit.events import (
    Event,
    OrderCancelled,
    OrderCreated,
    OrderLine,
    PaymentProcessed,
    PaymentRefunded,
    PaymentVoided,
)
from sagakit.runtime import Messaging
from tests.in_process import Bus, FakeConnection, FakeFaults, FakePool, envelope

OWNER = "customer-1"


@dataclass
class FakeLedger:
    """payment.store's saga functions, in memory, with the same contract: an inbox of
    consumed event ids shared by both handlers, an order's one charge, its refund, the
    cancellation's tombstone, and the outbox; a charge or cancellation only under the order's
    lock."""

    cards: dict[str, Card] = field(default_factory=dict)
    charges: dict[UUID, Charge] = field(default_factory=dict)  # by order
    refunds: dict[UUID, UUID] = field(default_factory=dict)  # order -> refund id
    cancelled: set[UUID] = field(default_factory=set)
    inbox: set[UUID] = field(default_factory=set)
    outbox: list[OutgoingEvent] = field(default_factory=list)

    def add_card(self, number: str, owner: str | None = OWNER) -> str:
        token = f"tok_{uuid4().hex[:12]}"
        card = tokenize(token, number=number, exp_month=12, exp_year=datetime.now(UTC).year + 1,
                        cvc="123", holder="Ada Lovelace", today=datetime.now(UTC).date())
        self.cards[token] = replace(card, owner=owner)
        return token

    async def lock_order(self, conn: FakeConnection, order_id: UUID) -> None:
        conn.locks.add(order_id)

    async def lock_order_and_find_card(self, conn: FakeConnection, order_id: UUID,
                                       token: str) -> Card | None:
        conn.locks.add(order_id)
        return self.cards.get(token)

    def _first_delivery(self, meta: EventMeta) -> bool:
        first = meta.id not in self.inbox
        self.inbox.add(meta.id)
        return first

    async def charge_once(self, conn: FakeConnection, meta: EventMeta, charge: store.NewCharge,
                          announce: OutgoingEvent) -> store.NotCharged | None:
        assert charge.order_id in conn.locks, "charge_once without the order's lock"
        if not self._first_delivery(meta):
            return store.NotCharged.DUPLICATE
        if charge.order_id in self.cancelled:
            return store.NotCharged.CANCELLED
        if charge.order_id in self.charges:
            return store.NotCharged.CHARGED_ALREADY
        self.charges[charge.order_id] = Charge(charge.payment_id, charge.outcome, charge.amount,
                                               charge.currency, charge.payment_token, False)
        self.outbox.append(announce)
        return None

    async def record_cancellation(self, conn: FakeConnection, meta: EventMeta, order_id: UUID,
                                  reason: str) -> tuple[bool, Charge | None]:
        assert order_id in conn.locks, "record_cancellation without the order's lock"
        first = self._first_delivery(meta)
        if first:
            self.cancelled.add(order_id)
        charge = self.charges.get(order_id)
        if charge is not None:
            charge = replace(charge, refunded=order_id in self.refunds)
        return first, charge

    async def refund(self, conn: FakeConnection, *, refund_id: UUID, order_id: UUID,
                     charge: Charge, reason: str, announce: OutgoingEvent) -> None:
        self.refunds[order_id] = refund_id
        self.outbox.append(announce)

    async def add_to_outbox(self, conn: FakeConnection, *events: OutgoingEvent) -> None:
        self.outbox.extend(events)

    def announced(self) -> list[Event]:
        kinds: dict[str, type[Event]] = {"payment.processed": PaymentProcessed,
                                         "payment.refunded": PaymentRefunded,
                                         "payment.voided": PaymentVoided}
        return [kinds[e.type].model_validate_json(e.body) for e in self.outbox]


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> FakeLedger:
    fake = FakeLedger()
    for name in ("lock_order", "lock_order_and_find_card", "charge_once",
                 "record_cancellation", "refund"):
        monkeypatch.setattr(store, name, getattr(fake, name))
    # The void goes straight to the outbox (sagakit.postgres), as service.py imported it.
    monkeypatch.setattr(service, "add_to_outbox", fake.add_to_outbox)
    return fake


@pytest.fixture
def faults() -> FakeFaults:
    return FakeFaults(**PaymentFaults().model_dump())  # off, as the service starts


@pytest.fixture
async def bus(ledger: FakeLedger, faults: FakeFaults) -> AsyncIterator[Bus]:
    """The payment service's consumers, middleware and handlers on an in-memory broker."""
    messaging = Messaging("payment", PaymentSettings(), handlers.QUEUES)
    handlers.router.include(messaging, SimpleNamespace(pool=FakePool(), faults=faults))
    async with TestRabbitBroker(messaging.broker) as broker:
        yield Bus(broker, handlers.QUEUES)


def created(token: str, amount: str = "12.00", owner: str | None = OWNER,
            order_id: UUID | None = None) -> OutgoingEvent:
    order_id = order_id or uuid4()
    return envelope(OrderCreated(
        order_id=order_id, amount=Decimal(amount), currency="EUR", payment_token=token,
        lines=(OrderLine(sku="burger", name="Burger", quantity=1, unit_price=Decimal(amount)),),
        owner=owner), order_id)


def order_of(event: OutgoingEvent) -> UUID:
    return UUID(event.subject)


def cancelled(order_id: UUID) -> OutgoingEvent:
    return envelope(OrderCancelled(order_id=order_id, reason="cancelled by the customer",
                                   requested_by="customer"), order_id)


async def test_an_approved_charge_is_recorded_and_announced(ledger: FakeLedger,
                                                             bus: Bus) -> None:
    order = created(ledger.add_card("4242 4242 4242 4242"), amount="23.50")
    await bus.publish(order)
    charge = ledger.charges[order_of(order)]
    assert (charge.outcome, charge.amount) == (Outcome.APPROVED, Decimal("23.50"))
    (processed,) = ledger.announced()
    assert isinstance(processed, PaymentProcessed)
    assert (processed.order_id, processed.payment_id, processed.outcome, processed.reason,
            processed.amount) == (order_of(order), charge.id, "approved", None, Decimal("23.50"))


@pytest.mark.parametrize(("token", "reason"), [
    (lambda ledger: "tok_chargeDeclined", "card_declined"),  # a test token all environments know
    (lambda ledger: ledger.add_card("4000 0000 0000 9995"), "insufficient_funds"),  # a test number
    (lambda ledger: ledger.add_card("4242424242424242", owner="customer-2"), "card_not_yours"),
    (lambda ledger: "tok_never_tokenized", "unknown_token"),
])
async def test_a_declined_charge_is_recorded_and_announced_with_its_reason(
    ledger: FakeLedger, bus: Bus, token: Callable[[FakeLedger], str], reason: str,
) -> None:
    order = created(token(ledger))
    await bus.publish(order)
    assert ledger.charges[order_of(order)].outcome is Outcome.DECLINED
    (processed,) = ledger.announced()
    assert isinstance(processed, PaymentProcessed)
    assert (processed.outcome, processed.reason) == ("declined", reason)


async def test_the_decline_rate_switch_declines_an_approval_as_an_ordinary_decline(
    ledger: FakeLedger, faults: FakeFaults, bus: Bus,
) -> None:
    faults.values["decline_rate"] = 1.0
    approvable, declining = created("tok_visa"), created("tok_chargeDeclined")
    await bus.publish(approvable)
    await bus.publish(declining)  # a decline stays the issuer's own
    assert [(p.outcome, p.reason) for p in ledger.announced()
            if isinstance(p, PaymentProcessed)] == [("declined", FAULT_DECLINE),
                                                    ("declined", "card_declined")]


async def test_a_cancellation_before_the_charge_voids_and_a_late_order_charges_nothing(
    ledger: FakeLedger, bus: Bus,
) -> None:
    order = created("tok_visa")
    await bus.publish(cancelled(order_of(order)))
    await bus.publish(order)
    assert ledger.charges == {}
    (voided,) = ledger.announced()
    assert isinstance(voided, PaymentVoided)
    assert (voided.order_id, voided.reason) == (order_of(order), "cancelled_before_charge")


async def test_a_cancellation_after_an_approved_charge_refunds_it(ledger: FakeLedger,
                                                                   bus: Bus) -> None:
    order = created("tok_visa", amount="9.99")
    await bus.publish(order)
    await bus.publish(cancelled(order_of(order)))
    charge = ledger.charges[order_of(order)]
    _processed, refunded = ledger.announced()
    assert isinstance(refunded, PaymentRefunded)
    assert (refunded.order_id, refunded.refund_of, refunded.amount, refunded.payment_id) == (
        order_of(order), charge.id, Decimal("9.99"), ledger.refunds[order_of(order)])


async def test_a_cancellation_after_a_declined_charge_voids(ledger: FakeLedger,
                                                             bus: Bus) -> None:
    order = created("tok_chargeDeclined")
    await bus.publish(order)
    await bus.publish(cancelled(order_of(order)))
    assert ledger.refunds == {}
    _processed, voided = ledger.announced()
    assert isinstance(voided, PaymentVoided) and voided.reason == "charge_declined"


async def test_a_second_cancellation_after_the_refund_announces_nothing_more(
    ledger: FakeLedger, bus: Bus,
) -> None:
    order = created("tok_visa")
    await bus.publish(order)
    await bus.publish(cancelled(order_of(order)))
    refund_id = ledger.refunds[order_of(order)]
    await bus.publish(cancelled(order_of(order)))  # another event: a new id, the same order
    assert ledger.refunds == {order_of(order): refund_id}
    assert [e.type for e in ledger.outbox] == ["payment.processed", "payment.refunded"]


async def test_a_redelivered_event_changes_nothing(ledger: FakeLedger, bus: Bus) -> None:
    order = created("tok_visa")
    cancel = cancelled(order_of(order))
    for event in (order, order, cancel, cancel):
        await bus.publish(event)
    assert [e.type for e in ledger.outbox] == ["payment.processed", "payment.refunded"]


async def test_a_redelivered_cancellation_of_an_order_never_charged_voids_once(
    ledger: FakeLedger, bus: Bus,
) -> None:
    cancel = cancelled(uuid4())
    await bus.publish(cancel)
    await bus.publish(cancel)
    assert [e.type for e in ledger.outbox] == ["payment.voided"]


async def test_a_second_order_created_for_a_charged_order_charges_nothing(
    ledger: FakeLedger, bus: Bus,
) -> None:
    first = created("tok_visa")
    await bus.publish(first)
    charge = ledger.charges[order_of(first)]
    await bus.publish(created("tok_visa", order_id=order_of(first)))  # a new event id
    assert ledger.charges == {order_of(first): charge}
    assert len(ledger.outbox) == 1


async def test_an_amount_that_cannot_be_charged_is_poison(ledger: FakeLedger,
                                                          faults: FakeFaults) -> None:
    order = OrderCreated(order_id=uuid4(), amount=Decimal("0.001"), currency="EUR",
                         payment_token="tok_visa", lines=())
    meta = EventMeta(id=uuid4(), type="order.created", subject=str(order.order_id), attempt=1)
    with pytest.raises(Poison):
        await service.charge_order(FakePool(), order, meta, faults)
    assert ledger.charges == {} and ledger.inbox == set() and ledger.outbox == []

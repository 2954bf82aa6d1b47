"""The event contract: the only thing one saga-shop service knows about another.

Every event type has exactly one publisher. Bodies are the JSON of the pydantic models below
(the CloudEvents ``data``); the CloudEvents attributes travel as AMQP headers and properties
(see :mod:`sagakit.envelope`). Schemas evolve additively only: a new optional field keeps the
version, anything that would break a reader is a new event type.

The saga, read top to bottom::

    order.created          order      -> payment     charge this order
    payment.processed      payment    -> order       approved | declined (with reason)
    order.received         order      -> production  a paid order for the kitchen
    production.queued      production -> order       ticket queued, stock reserved
    production.started     production -> order       the kitchen started cooking
    order.finished         production -> order       ready: the saga's happy end
    production.failed      production -> order       cannot make it (e.g. out of stock)
    order.cancellation_requested  order -> production  the customer wants out: drop the ticket?
    production.cancelled   production -> order       ticket dropped (or never made): compensate
    production.cancel_refused  production -> order   the kitchen already started: no cancel
    order.cancelled        order      -> payment, production   compensate: refund / drop ticket
    payment.refunded       payment    -> order       the charge was reversed
    payment.voided         payment    -> order       nothing was charged, nothing will be
    payment.card_tokenized payment    -> order       a card token the order API may accept
                                                     (its subject: the card, not an order)

A customer's data (right of access and erasure), outside the saga; the subject is the customer:

    customer.data_requested     identity -> order, payment, production   export what you hold
    <service>.customer_data     order | payment | production -> identity  my part (personal)
    customer.erasure_requested  identity -> order, payment, production   anonymise it
    <service>.customer_erased   order | payment | production -> identity  done (counts only)
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

# Money is Decimal end to end and a string in JSON ("12.50"), never a float.
Money = Annotated[Decimal, PlainSerializer(lambda v: f"{v:.2f}", return_type=str, when_used="json")]


# Payment tokens every environment knows, for demos and tests (like a card network's test cards).
TEST_CARD_TOKENS: dict[str, str | None] = {
    "tok_visa": None,  # always approved
    "tok_chargeDeclined": "card_declined",
    "tok_chargeDeclinedInsufficientFunds": "insufficient_funds",
}


class EventType(StrEnum):
    ORDER_CREATED = "order.created"
    PAYMENT_PROCESSED = "payment.processed"
    ORDER_RECEIVED = "order.received"
    PRODUCTION_QUEUED = "production.queued"
    PRODUCTION_STARTED = "production.started"
    ORDER_FINISHED = "order.finished"
    PRODUCTION_FAILED = "production.failed"
    ORDER_CANCELLATION_REQUESTED = "order.cancellation_requested"
    PRODUCTION_CANCELLED = "production.cancelled"
    PRODUCTION_CANCEL_REFUSED = "production.cancel_refused"
    ORDER_CANCELLED = "order.cancelled"
    PAYMENT_REFUNDED = "payment.refunded"
    PAYMENT_VOIDED = "payment.voided"
    CARD_TOKENIZED = "payment.card_tokenized"
    CUSTOMER_DATA_REQUESTED = "customer.data_requested"
    ORDER_CUSTOMER_DATA = "order.customer_data"
    PAYMENT_CUSTOMER_DATA = "payment.customer_data"
    PRODUCTION_CUSTOMER_DATA = "production.customer_data"
    CUSTOMER_ERASURE_REQUESTED = "customer.erasure_requested"
    ORDER_CUSTOMER_ERASED = "order.customer_erased"
    PAYMENT_CUSTOMER_ERASED = "payment.customer_erased"
    PRODUCTION_CUSTOMER_ERASED = "production.customer_erased"


class Event(BaseModel):
    """Base of every event body. Unknown fields are ignored so producers may add fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: ClassVar[EventType]
    version: ClassVar[int] = 1
    # True for an event whose body carries personal data (a customer's data export): it is
    # flagged in its headers and the event archive keeps its headers only (sagakit.archive).
    personal: ClassVar[bool] = False

    @classmethod
    def dataschema(cls) -> str:
        return f"urn:saga-shop:event:{cls.type}:v{cls.version}"


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sku: str
    name: str
    quantity: int = Field(ge=1)
    unit_price: Money


class OrderCreated(Event):
    """A new order waits for its payment. Published by order, consumed by payment."""

    type: ClassVar[EventType] = EventType.ORDER_CREATED
    order_id: UUID
    amount: Money
    currency: str
    payment_token: str
    lines: tuple[OrderLine, ...]
    # Who placed it (the token's sub): payment charges a saved card only for its owner and
    # shows the ledger to the owner only. Optional, so v1 events without it still parse.
    owner: str | None = None


class PaymentProcessed(Event):
    """The charge decision for an order. Published by payment, consumed by order."""

    type: ClassVar[EventType] = EventType.PAYMENT_PROCESSED
    order_id: UUID
    payment_id: UUID
    outcome: Literal["approved", "declined"]
    amount: Money
    currency: str
    reason: str | None = None


class OrderReceived(Event):
    """A paid order handed to the kitchen. Published by order, consumed by production."""

    type: ClassVar[EventType] = EventType.ORDER_RECEIVED
    order_id: UUID
    lines: tuple[OrderLine, ...]


class ProductionQueued(Event):
    type: ClassVar[EventType] = EventType.PRODUCTION_QUEUED
    order_id: UUID
    ticket_id: UUID


class ProductionStarted(Event):
    type: ClassVar[EventType] = EventType.PRODUCTION_STARTED
    order_id: UUID
    ticket_id: UUID


class OrderFinished(Event):
    type: ClassVar[EventType] = EventType.ORDER_FINISHED
    order_id: UUID
    ticket_id: UUID


class MissingStock(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sku: str
    requested: int
    available: int


class ProductionFailed(Event):
    """The kitchen cannot make the order; nothing was reserved."""

    type: ClassVar[EventType] = EventType.PRODUCTION_FAILED
    order_id: UUID
    reason: str
    missing: tuple[MissingStock, ...] = ()


class OrderCancellationRequested(Event):
    """The customer asks to cancel a paid order; the kitchen decides, since it may have started.

    Compensating first (refunding) and asking second would refund food already made.
    """

    type: ClassVar[EventType] = EventType.ORDER_CANCELLATION_REQUESTED
    order_id: UUID
    reason: str


class ProductionCancelled(Event):
    """The kitchen dropped the order's ticket (stock back) or never had one; it will not make it."""

    type: ClassVar[EventType] = EventType.PRODUCTION_CANCELLED
    order_id: UUID
    ticket_id: UUID | None = None


class ProductionCancelRefused(Event):
    """The kitchen had already started (or finished) the order: it goes on, nothing is refunded."""

    type: ClassVar[EventType] = EventType.PRODUCTION_CANCEL_REFUSED
    order_id: UUID
    ticket_id: UUID | None = None
    reason: str


class OrderCancelled(Event):
    """The order is abandoned: payment must refund or void, production must drop the ticket."""

    type: ClassVar[EventType] = EventType.ORDER_CANCELLED
    order_id: UUID
    reason: str
    requested_by: Literal["customer", "production"]


class PaymentRefunded(Event):
    type: ClassVar[EventType] = EventType.PAYMENT_REFUNDED
    order_id: UUID
    payment_id: UUID
    refund_of: UUID
    amount: Money
    currency: str


class PaymentVoided(Event):
    """No charge exists for the order and none will be made."""

    type: ClassVar[EventType] = EventType.PAYMENT_VOIDED
    order_id: UUID
    reason: str


class CardTokenized(Event):
    """A card was tokenized; the order API may accept its token.

    Its subject is :meth:`subject_of` the token, not the token: a token can pay, and an
    event's subject travels where its body does not (every log line and span of its delivery,
    the ``correlation_id``, dead-letter listings)."""

    type: ClassVar[EventType] = EventType.CARD_TOKENIZED
    token: str
    brand: str
    last4: str
    created_at: datetime

    @staticmethod
    def subject_of(token: str) -> str:
        """``card-`` and a digest of the token: one card's events share it; it pays nothing."""
        return "card-" + hashlib.sha256(token.encode()).hexdigest()[:32]


class CustomerDataRequested(Event):
    """Export what you hold about this customer. Published by identity (the data export)."""

    type: ClassVar[EventType] = EventType.CUSTOMER_DATA_REQUESTED
    export_id: UUID
    customer_id: str = Field(description="the customer's id (their tokens' sub)")


class CustomerData(Event):
    """One service's part of a data export; consumed by identity, which assembles it.

    The one kind of event that carries personal data (names, emails, card holders): flagged
    ``personal``, so the event archive keeps its headers only.
    """

    personal: ClassVar[bool] = True
    export_id: UUID
    customer_id: str
    service: str
    data: dict[str, Any] = Field(description="what this service holds, as JSON")


class OrderCustomerData(CustomerData):
    type: ClassVar[EventType] = EventType.ORDER_CUSTOMER_DATA


class PaymentCustomerData(CustomerData):
    type: ClassVar[EventType] = EventType.PAYMENT_CUSTOMER_DATA


class ProductionCustomerData(CustomerData):
    type: ClassVar[EventType] = EventType.PRODUCTION_CUSTOMER_DATA


class CustomerErasureRequested(Event):
    """Anonymise this customer's personal data; keep orders, amounts, statuses and the ledger.

    Published by identity. Each service confirms with its ``<service>.customer_erased``; the
    order service first waits for the customer's sagas in flight to end.
    """

    type: ClassVar[EventType] = EventType.CUSTOMER_ERASURE_REQUESTED
    erasure_id: UUID
    customer_id: str


class CustomerErased(Event):
    """A service anonymised what it held of the customer (counts, no data)."""

    erasure_id: UUID
    customer_id: str
    service: str
    erased: dict[str, int] = Field(default_factory=dict,
                                   description="rows or records anonymised, by kind")


class OrderCustomerErased(CustomerErased):
    type: ClassVar[EventType] = EventType.ORDER_CUSTOMER_ERASED


class PaymentCustomerErased(CustomerErased):
    type: ClassVar[EventType] = EventType.PAYMENT_CUSTOMER_ERASED


class ProductionCustomerErased(CustomerErased):
    type: ClassVar[EventType] = EventType.PRODUCTION_CUSTOMER_ERASED


EVENT_MODELS: dict[EventType, type[Event]] = {
    model.type: model
    for model in (
        OrderCreated,
        PaymentProcessed,
        OrderReceived,
        ProductionQueued,
        ProductionStarted,
        OrderFinished,
        ProductionFailed,
        OrderCancellationRequested,
        ProductionCancelled,
        ProductionCancelRefused,
        OrderCancelled,
        PaymentRefunded,
        PaymentVoided,
        CardTokenized,
        CustomerDataRequested,
        OrderCustomerData,
        PaymentCustomerData,
        ProductionCustomerData,
        CustomerErasureRequested,
        OrderCustomerErased,
        PaymentCustomerErased,
        ProductionCustomerErased,
    )
}

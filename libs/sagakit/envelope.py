"""How an event travels: CloudEvents 1.0 attributes as AMQP headers/properties, data as JSON body.

``OutgoingEvent`` is what the outbox stores and the relay publishes; ``EventMeta`` is what a
consumer learns about the delivery it handles. An event is built inside the span of the work
that causes it and keeps that span's W3C trace context (``traceparent``) in its headers, so the
relay can publish it in the same trace later (see :mod:`sagakit.telemetry`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import orjson

from sagakit import telemetry
from sagakit.events import Event

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
# A CloudEvents extension attribute: the body holds personal data (see Event.personal), so the
# event archive keeps this event's headers and never its body (sagakit.archive).
PERSONAL_DATA = "ce-personaldata"


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    id: UUID
    type: str
    subject: str
    body: bytes
    headers: dict[str, str]

    @classmethod
    def build(cls, event: Event, *, source: str, subject: str) -> OutgoingEvent:
        """Wrap ``event`` for publication, continuing the current trace (OpenTelemetry context)."""
        event_id = uuid4()
        headers = {
            "ce-specversion": SPECVERSION,
            "ce-id": str(event_id),
            "ce-source": source,
            "ce-type": str(event.type),
            "ce-time": datetime.now(UTC).isoformat(),
            "ce-subject": subject,
            "ce-datacontenttype": CONTENT_TYPE,
            "ce-dataschema": event.dataschema(),
            **({PERSONAL_DATA: "true"} if event.personal else {}),
            **telemetry.trace_headers(),
        }
        body = event.__pydantic_serializer__.to_json(event)
        return cls(id=event_id, type=str(event.type), subject=subject, body=body, headers=headers)

    def amqp_properties(self, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for a publish: the AMQP properties mirror the CloudEvents ones.

        ``headers`` replaces the stored headers (the relay sends its publish span's context).
        """
        return {
            "message_id": str(self.id),
            "correlation_id": self.subject,
            "message_type": self.type,
            "content_type": CONTENT_TYPE,
            "headers": self.headers if headers is None else headers,
        }

    def to_record(self) -> dict[str, Any]:
        """A JSON-able form for stores that keep the event as one value (e.g. a Redis stream)."""
        return {
            "id": str(self.id),
            "type": self.type,
            "subject": self.subject,
            "body": self.body.decode(),
            "headers": orjson.dumps(self.headers).decode(),
        }

    @classmethod
    def from_record(cls, record: dict[str, str]) -> OutgoingEvent:
        return cls(
            id=UUID(record["id"]),
            type=record["type"],
            subject=record["subject"],
            body=record["body"].encode(),
            headers=orjson.loads(record["headers"]),
        )



@dataclass(frozen=True, slots=True)
class EventSource:
    """A service as the CloudEvents ``source`` of the events it announces; the one way a
    service makes an event for its outbox: ``SOURCE.event(OrderCreated(...), order_id)``."""

    service: str

    @property
    def uri(self) -> str:
        return f"saga-shop/{self.service}"

    def event(self, event: Event, subject: object) -> OutgoingEvent:
        """``event`` about ``subject`` (an order, a customer), in the current trace."""
        return OutgoingEvent.build(event, source=self.uri, subject=str(subject))

@dataclass(frozen=True, slots=True)
class EventMeta:
    """What a consumer knows of the delivery in hand, beyond its parsed body.

    ``consumer``, ``headers`` and ``body`` are what the event archive records of a consumed
    event (:mod:`sagakit.archive`), in the transaction that records it in the inbox.
    """

    id: UUID
    type: str
    subject: str
    attempt: int
    consumer: str = ""
    headers: Mapping[str, Any] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def from_headers(cls, headers: dict[str, Any], message_id: str | None, *,
                     consumer: str = "", body: bytes = b"") -> EventMeta:
        raw_id = headers.get("ce-id") or message_id
        if not raw_id:
            raise ValueError("event has no ce-id header and no message_id")
        return cls(
            id=UUID(str(raw_id)),
            type=str(headers.get("ce-type", "")),
            subject=str(headers.get("ce-subject", "")),
            attempt=int(headers.get("x-attempt", 1)),
            consumer=consumer,
            headers=headers,
            body=body,
        )


def jsonable(value: Any) -> Any:
    """AMQP header values (bytes, datetimes, nested tables) as JSON values."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def message_name(message_id: str | None, headers: Mapping[str, Any] | None, body: bytes) -> str:
    """The id a message is known by where it is parked: its AMQP message id, else its ``ce-id``,
    else (a foreign message with neither) ``sha256:`` and a digest of its body, so that the same
    message is named the same in every listing, and when it is parked again after a replay."""
    found = message_id or (headers or {}).get("ce-id")
    if found:
        return str(jsonable(found))
    return "sha256:" + hashlib.sha256(body).hexdigest()[:32]

"""One logger set-up for every service: JSON lines on stdout, with the context of the work.

Every line carries the service, the trace and span ids of the current OpenTelemetry span, and
the order/event/request ids of the work in progress (kept in context variables, so handlers need
not pass them around). With an OTLP endpoint the same records are also exported, carrying the
same ids (see :mod:`sagakit.telemetry`). Card data and e-mail addresses are never put into log
records by the services; :func:`mask_email` exists for the places that need to mention a
customer.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

order_id_var: ContextVar[str | None] = ContextVar("order_id", default=None)
event_id_var: ContextVar[str | None] = ContextVar("event_id", default=None)
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def work_ids() -> dict[str, str]:
    """The ids of the work in progress that are known: order_id, event_id, request_id."""
    ids = {"order_id": order_id_var.get(), "event_id": event_id_var.get(),
           "request_id": request_id_var.get()}
    return {name: value for name, value in ids.items() if value is not None}


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "color_message",
}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        span = trace.get_current_span().get_span_context()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": trace.format_trace_id(span.trace_id) if span.is_valid else None,
            "span_id": trace.format_span_id(span.span_id) if span.is_valid else None,
            **work_ids(),
        }
        line.update({key: value for key, value in record.__dict__.items()
                     if key not in _RESERVED and not key.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps({k: v for k, v in line.items() if v is not None}, default=str).decode()


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def mask_email(email: str) -> str:
    """``ana@example.com`` -> ``a***@example.com``: enough to recognise, not to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"

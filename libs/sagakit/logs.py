"""One logger set-up for every service: JSON lines on stdout, with the context of the work.

Every line carries the service, the trace id, and the order/event/request ids of the work in
progress (kept in context variables, so handlers need not pass them around). Card data and
e-mail addresses are never put into log records by the services; :func:`mask_email` exists for
the places that need to mention a customer.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from sagakit import tracecontext

order_id_var: ContextVar[str | None] = ContextVar("order_id", default=None)
event_id_var: ContextVar[str | None] = ContextVar("event_id", default=None)
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "color_message",
}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        traceparent = tracecontext._current.get()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": traceparent.split("-")[1] if traceparent else None,
            "span_id": traceparent.split("-")[2] if traceparent else None,
            "order_id": order_id_var.get(),
            "event_id": event_id_var.get(),
            "request_id": request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
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

"""W3C trace context carried from HTTP requests into events and from events into the next events.

One order is one trace: the request that creates it starts (or continues) a trace, every event
published on its behalf carries a ``traceparent`` whose trace id is the order's, and every
consumer continues that trace in what it publishes.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_current: ContextVar[str | None] = ContextVar("traceparent", default=None)


def parse(traceparent: str | None) -> tuple[str, str] | None:
    """(trace_id, parent span id) of a valid ``traceparent`` header, else None."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if not match or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1), match.group(2)


def continue_from(traceparent: str | None) -> str:
    """Enter a new span under ``traceparent`` (or a new trace) and return its traceparent."""
    parsed = parse(traceparent)
    trace_id = parsed[0] if parsed else secrets.token_hex(16)
    current = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    _current.set(current)
    return current


def current() -> str:
    """The traceparent of the work in progress; starts a trace when there is none."""
    value = _current.get()
    return value if value is not None else continue_from(None)


def child() -> str:
    """A traceparent for something this span causes (an outgoing event)."""
    trace_id = current().split("-")[1]
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def trace_id() -> str:
    return current().split("-")[1]

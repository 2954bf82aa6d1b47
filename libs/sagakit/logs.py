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
import queue
import sys
import threading
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


# The last lines of a stop uvicorn was signalled to make: (logger, message format).
STOP_LINES = frozenset({("uvicorn.error", "Application shutdown complete."),
                        ("uvicorn.error", "Finished server process [%d]")})


class OffLoopHandler(logging.Handler):
    """Formats each record in the caller's thread and hands the line to a writer thread.

    At most ``capacity`` lines wait; past that a line is dropped (and the drop counted in a
    line of its own once the writer catches up) rather than letting a stuck reader hold the
    service. :meth:`close` (at exit, through :func:`logging.shutdown`) writes what waits, for
    at most ``close_seconds``: the last lines of a graceful stop are kept, a dead pipe cannot
    keep the process from exiting.

    A line of ``waited_for`` (uvicorn's last lines of a stop) is waited for until written,
    ``close_seconds`` at most, and only until one such wait times out (the reader is stuck:
    no further waits): uvicorn ends a stop it was signalled to make by raising the signal
    again, which ends the process without any exit hook, so those lines, and all before them,
    must be out by then. No other line ever waits, so a request that uvicorn logs as invalid
    cannot hold the loop.
    """

    def __init__(self, stream: Any, capacity: int = 10_000, close_seconds: float = 3.0,
                 waited_for: frozenset[tuple[str, str]] = STOP_LINES) -> None:
        super().__init__()
        self.stream = stream
        self.capacity = capacity
        self.close_seconds = close_seconds
        self.waited_for = waited_for
        self._stuck = False
        self._dropped = 0
        self._count_lock = threading.Lock()  # the dropped count: emitters add, the writer takes
        # Lines, None (the end) or an Event the writer sets once everything before it is out.
        self._lines: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_lines, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if not self._writer.is_alive():  # closed: write it here, as a plain handler would
            self._write([line])
            return
        waited = (record.name, record.msg) in self.waited_for and not self._stuck
        if self._lines.qsize() >= self.capacity and not waited:
            with self._count_lock:
                self._dropped += 1
            return
        self._lines.put(line)
        if waited:
            written = threading.Event()
            self._lines.put(written)
            if not written.wait(self.close_seconds):
                self._stuck = True

    def _taken_drops(self) -> int:
        with self._count_lock:
            dropped, self._dropped = self._dropped, 0
        return dropped

    def _write_lines(self) -> None:
        while True:
            batch = [self._lines.get()]
            while len(batch) < 512:  # everything waiting, in one write
                try:
                    batch.append(self._lines.get_nowait())
                except queue.Empty:
                    break
            done = None in batch
            lines = [line for line in batch if isinstance(line, str)]
            if dropped := self._taken_drops():
                notice = logging.LogRecord(
                    "sagakit.logs", logging.WARNING, __file__, 0,
                    "%d log lines dropped: the log reader fell behind", (dropped,), None)
                lines.append(self.format(notice))
            self._write(lines)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if done:
                return

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the reader is gone (closed pipe, closed file): nothing left to tell

    def close(self) -> None:
        if self._writer.is_alive():
            self._lines.put(None)
            self._writer.join(self.close_seconds)
        super().close()


def configure(service: str, level: str = "INFO") -> None:
    handler = OffLoopHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    configure_library_loggers()


# Libraries that say too much at INFO: uvicorn's access log (the gateway keeps one), the AMQP
# clients' connection chatter, and httpx, which logs every request with its whole URL: a
# webhook's query string may hold its receiver's secret (the gateway redacts query strings
# from its own log for the same reason); what the webhook sender has to say it says itself.
QUIET_LIBRARIES = ("uvicorn.access", "aiormq", "aio_pika", "httpx", "httpcore")


def configure_library_loggers() -> None:
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def mask_email(email: str) -> str:
    """``ana@example.com`` -> ``a***@example.com``: enough to recognise, not to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"

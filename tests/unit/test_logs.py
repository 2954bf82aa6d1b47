"""The log handler never blocks the event loop: lines are written by a thread of their own."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from uuid import uuid4

import pytest

from sagakit.consuming import order_of
from sagakit.envelope import EventMeta
from sagakit.logs import JsonFormatter, OffLoopHandler


class StuckPipe(io.StringIO):
    """A stdout whose reader has stopped reading: every write waits until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-logs-{id(handler)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


def test_a_stuck_reader_does_not_block_the_caller_and_loses_nothing_once_it_reads() -> None:
    pipe = StuckPipe()
    handler = OffLoopHandler(pipe)
    handler.setFormatter(JsonFormatter("order"))
    log = _logger(handler)
    started = time.monotonic()
    for n in range(100):
        log.info("line %d", n)
    assert time.monotonic() - started < 1.0  # a blocking write would have taken 10 s
    pipe.release.set()
    handler.close()
    messages = [json.loads(line)["message"] for line in pipe.getvalue().splitlines()]
    assert messages == [f"line {n}" for n in range(100)]


def test_past_its_capacity_lines_are_dropped_and_the_drop_is_said() -> None:
    pipe = StuckPipe()
    handler = OffLoopHandler(pipe, capacity=5)
    handler.setFormatter(JsonFormatter("order"))
    log = _logger(handler)
    log.info("first")  # taken by the writer, which then waits on the pipe
    time.sleep(0.2)
    for n in range(20):
        log.info("line %d", n)
    pipe.release.set()
    handler.close()
    lines = [json.loads(line) for line in pipe.getvalue().splitlines()]
    messages = [line["message"] for line in lines]
    assert messages[:6] == ["first", *(f"line {n}" for n in range(5))]
    assert "15 log lines dropped: the log reader fell behind" in messages
    notice = next(line for line in lines if "dropped" in line["message"])
    assert (notice["service"], notice["level"]) == ("order", "warning")


def test_close_gives_up_on_a_reader_that_never_reads() -> None:
    pipe = StuckPipe()
    handler = OffLoopHandler(pipe, close_seconds=0.2)
    handler.setFormatter(JsonFormatter("order"))
    _logger(handler).info("never read")
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 2.0
    pipe.release.set()


def test_the_line_carries_the_callers_context() -> None:
    from sagakit import logs

    out = io.StringIO()
    handler = OffLoopHandler(out)
    handler.setFormatter(JsonFormatter("order"))
    token = logs.order_id_var.set("o-1")
    try:
        _logger(handler).info("placed")
    finally:
        logs.order_id_var.reset(token)
    handler.close()
    assert json.loads(out.getvalue())["order_id"] == "o-1"


def test_uvicorns_lifecycle_lines_are_out_before_the_call_returns() -> None:
    """uvicorn ends a signalled stop by raising the signal again: no exit hook runs after its
    last line, so that line (and all before it) must be written when logging it returns."""
    out = io.StringIO()
    handler = OffLoopHandler(out)
    handler.setFormatter(JsonFormatter("order"))
    _logger(handler).info("order paid -> received")
    lifecycle = logging.getLogger("uvicorn.error")
    lifecycle.propagate, saved, level = False, lifecycle.handlers[:], lifecycle.level
    lifecycle.handlers[:] = [handler]
    lifecycle.setLevel(logging.INFO)
    try:
        lifecycle.info("Application shutdown complete.")
    finally:
        lifecycle.handlers[:] = saved
        lifecycle.propagate = True
        lifecycle.setLevel(level)
    messages = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert messages == ["order paid -> received", "Application shutdown complete."]
    handler.close()


def test_no_other_uvicorn_line_waits_and_a_stuck_reader_is_waited_for_once() -> None:
    """uvicorn logs an invalid request on the same logger, from the event loop: it must not
    wait; and once a stop line found the reader stuck, the next one does not wait again."""
    pipe = StuckPipe()
    handler = OffLoopHandler(pipe, close_seconds=0.3)
    handler.setFormatter(JsonFormatter("order"))
    lifecycle = logging.getLogger("uvicorn.error")
    lifecycle.propagate, saved, level = False, lifecycle.handlers[:], lifecycle.level
    lifecycle.handlers[:] = [handler]
    lifecycle.setLevel(logging.INFO)
    try:
        started = time.monotonic()
        for _ in range(5):
            lifecycle.warning("Invalid HTTP request received.")
        assert time.monotonic() - started < 0.2
        started = time.monotonic()
        lifecycle.info("Application shutdown complete.")  # waits its 0.3 s, then knows
        lifecycle.info("Finished server process [%d]", 7)  # no second wait
        assert 0.25 < time.monotonic() - started < 0.6
    finally:
        lifecycle.handlers[:] = saved
        lifecycle.propagate = True
        lifecycle.setLevel(level)
        pipe.release.set()
        handler.close()


@pytest.mark.parametrize(("event_type", "subject", "order_id"), [
    ("payment.processed", "o-1", "o-1"),
    ("customer.erasure_requested", "c-1", None),  # a customer's id is no order's
    ("payment.customer_erased", "c-1", None),
    ("payment.card_tokenized", "card-3f2a", None),  # a card is no order either
    ("order.created", "", None),
])
def test_a_deliverys_log_lines_name_its_order_only_when_it_is_about_one(
    event_type: str, subject: str, order_id: str | None,
) -> None:
    meta = EventMeta(id=uuid4(), type=event_type, subject=subject, attempt=1)
    assert order_of(meta) == order_id


def test_an_ack_lost_with_its_channel_is_a_warning_not_a_critical_alarm() -> None:
    """FastStream logs a failed ack as CRITICAL with a traceback; a channel that closed under
    it (a broker node stopped) loses nothing: the broker delivers the message again."""
    from aiormq.exceptions import ChannelInvalidStateError

    from order.settings import OrderSettings
    from sagakit.consuming import LOST_ACKS
    from sagakit.runtime import Messaging

    Messaging("order", OrderSettings(), ())
    broker_log = logging.getLogger("order.broker")
    assert broker_log.filters.count(LOST_ACKS) == 1
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    broker_log.addHandler(keep)
    try:
        for error in (ChannelInvalidStateError("closed"), RuntimeError("something else")):
            try:
                raise error
            except Exception as caught:  # as FastStream's ack middleware does
                broker_log.log(logging.CRITICAL, repr(caught), exc_info=caught)
    finally:
        broker_log.removeHandler(keep)
    lost, other = seen
    assert (lost.levelname, lost.exc_info) == ("WARNING", None)
    assert "delivers it again" in lost.getMessage()
    assert other.levelname == "CRITICAL" and other.exc_info is not None

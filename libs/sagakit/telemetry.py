"""OpenTelemetry for a saga-shop service: traces, exported logs, and the spans of its messages.

Configured only by the standard ``OTEL_*`` variables (``OTEL_SERVICE_NAME``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` ...).
Spans, and so trace ids, exist whether or not anything is exported: the JSON logs and the order
API show real trace ids in every run mode. Spans and log records leave the process, over
OTLP/HTTP, only when an endpoint is configured.

Which traces are recorded is :mod:`sagakit.sampling`'s choice (by default every order placed at
a person's pace, about ten a second under load). Inside a trace that is not recorded, the
database and Redis clients' instrumentation is switched off (:func:`span`,
:class:`QuietUnlessSampled`): their spans would be dropped anyway, and making them is most of
what tracing costs per saga (measured in docs/performance.md). The trace context still travels,
so the order's trace id is the same everywhere, recorded or not.

One order is one trace. Its trace context travels in every event's ``traceparent`` header: the
outbox stores the context the event was created in, the relay publishes it inside a PRODUCER
span that continues it (:func:`publishing`), and the consumer handles it inside a CONSUMER span
that is the publish span's child (:func:`consuming`). FastStream's own telemetry middleware is
not used: it would start the trace at the relay, long after (and apart from) the request.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from opentelemetry import context, propagate, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    format_span_id,
    format_trace_id,
)

from sagakit import logs, sampling

if TYPE_CHECKING:
    from aio_pika import IncomingMessage
    from fastapi import FastAPI


log = logging.getLogger("sagakit.telemetry")
tracer = trace.get_tracer("sagakit")

_providers: list[TracerProvider | LoggerProvider] = []
_log_handler: logging.Handler | None = None


def setup(service: str) -> None:
    """Trace this process as ``service`` (``OTEL_SERVICE_NAME`` wins) and export when asked."""
    global _log_handler  # noqa: PLW0603  # one handler per process, as the providers
    if _providers:
        return  # once per process: OpenTelemetry's global providers cannot be replaced
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
        log.warning("only OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf is supported; using it")
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service})

    traces = TracerProvider(resource=resource, sampler=sampling.from_env())
    if _exporting("traces"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        traces.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(traces)
    _providers.append(traces)

    if _exporting("logs"):
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        records = LoggerProvider(resource=resource)
        records.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
        set_logger_provider(records)
        _providers.append(records)
        with warnings.catch_warnings():
            # Deprecated in favour of opentelemetry-instrumentation-logging's handler, which
            # does the same; this one needs no further dependency.
            warnings.simplefilter("ignore", DeprecationWarning)
            _log_handler = LoggingHandler(logger_provider=records)
        _log_handler.addFilter(_with_work_ids)
        logging.getLogger().addHandler(_log_handler)

    # A span per SQL statement or Redis command: the standard switch turns them off (say,
    # OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=asyncpg) while the message and request spans stay.
    disabled = {name.strip() for name in
                os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if "asyncpg" not in disabled:
        # The asyncpg instrumentation's __init__ is unannotated (opentelemetry-python-contrib).
        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    if "redis" not in disabled:
        RedisInstrumentor().instrument()


def shutdown() -> None:
    """Flush what is still buffered and stop exporting (the end of the service's lifespan)."""
    global _log_handler  # noqa: PLW0603  # one handler per process, as the providers
    if _log_handler is not None:
        logging.getLogger().removeHandler(_log_handler)
        _log_handler = None
    for provider in _providers:
        provider.shutdown()


def _exporting(signal: str) -> bool:
    """OTLP export of ``signal`` is on when an endpoint is set and the exporter is not "none"."""
    env, name = os.environ, signal.upper()
    if env.get(f"OTEL_{name}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get(f"OTEL_EXPORTER_OTLP_{name}_ENDPOINT"))


def _with_work_ids(record: logging.LogRecord) -> bool:
    """Exported log records carry the order/event/request ids as attributes, as JSON lines do."""
    record.__dict__.update(logs.work_ids())
    return True


class QuietUnlessSampled:
    """ASGI middleware inside the server span: a request whose trace is not recorded (or a
    probe or scrape, which has no span) runs with the client instrumentation switched off.
    The lifespan is left alone: the tasks it starts would inherit the switch."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or trace.get_current_span().is_recording():
            await self.app(scope, receive, send)
            return
        with suppress_instrumentation():
            await self.app(scope, receive, send)


def instrument_app(app: FastAPI) -> None:
    """A server span per request (probes and scrapes excepted), with its X-Request-ID."""
    app.add_middleware(QuietUnlessSampled)
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="/health/,/metrics",
        exclude_spans=["receive", "send"],
        http_capture_headers_server_request=["x-request-id"],
    )


@contextmanager
def untraced() -> Iterator[None]:
    """No spans from the database and Redis clients inside: for polling loops, probes, scrapes.

    Work that continues a message's trace (:func:`span` with ``parent``) is traced again.
    """
    with suppress_instrumentation():
        yield


# --- the trace as it travels with events -----------------------------------------------------


def trace_headers() -> dict[str, str]:
    """The W3C trace context of the current span (``traceparent``, maybe ``tracestate``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def trace_id() -> str:
    """The current trace id in hex (32 zeros outside any trace)."""
    return format_trace_id(trace.get_current_span().get_span_context().trace_id)


def recorded() -> bool:
    """Whether the current trace is recorded (sampled): only a recorded one reaches Jaeger."""
    return bool(trace.get_current_span().get_span_context().trace_flags.sampled)


def span_id() -> str:
    """The current span's id in hex (16 zeros outside any trace)."""
    return format_span_id(trace.get_current_span().get_span_context().span_id)


@contextmanager
def joining(name: str, trace_id: str, parent_span_id: str, recorded: bool) -> Iterator[Span]:
    """A span in another trace, under the span ``parent_span_id`` of it, linked to the current
    span: for a request about something whose trace began earlier (the customer's cancel of an
    order continues the order's trace under the POST that placed it, and links the cancel's
    own request). What the block writes and announces carries that trace."""
    here = trace.get_current_span().get_span_context()
    parent = {"traceparent": f"00-{trace_id}-{parent_span_id}-{'01' if recorded else '00'}"}
    with span(name, parent=parent, links=[trace.Link(here)] if here.is_valid else ()) as current:
        yield current


@contextmanager
def in_trace(trace_id: str) -> Iterator[None]:
    """Log lines inside belong to the trace ``trace_id`` (a 32-hex id), with no span made: for
    work of an order done outside any span of its own (the webhook sender), so its lines carry
    the order's trace id wherever they go (the JSON lines, the OTLP log records Seq filters
    on). What the current context suppresses stays suppressed."""
    here = trace.SpanContext(trace_id=int(trace_id, 16), span_id=random.getrandbits(64) or 1,
                             is_remote=True, trace_flags=trace.TraceFlags(0))
    token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(here)))
    try:
        yield
    finally:
        context.detach(token)


@contextmanager
def span(
    name: str, *, parent: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    links: Sequence[trace.Link] = (),
) -> Iterator[Span]:
    """A span, current inside the block; failures that escape it mark it as an error.

    ``attributes`` may be a function that makes them: called only if the span is recorded.
    Inside a span that is not recorded, the client libraries' instrumentation is off.

    With ``parent`` (headers holding a ``traceparent``, e.g. a message's) the span continues
    that trace instead of the current one, and runs in that context alone: what a message
    causes is traced even when the loop that fetched it is :func:`untraced`.
    """
    token = context.attach(propagate.extract(parent)) if parent is not None else None
    try:
        with tracer.start_as_current_span(name, kind=kind, links=links) as current:
            if current.is_recording():
                if attributes:
                    current.set_attributes(attributes() if callable(attributes) else attributes)
                yield current
            else:  # not recorded: neither are the client spans inside, so make none
                with suppress_instrumentation():
                    yield current
    finally:
        if token is not None:
            context.detach(token)


def _messaging(operation: str, event_type: str, headers: Mapping[str, Any],
               message_id: str | None, exchange: str, routing_key: str) -> dict[str, Any]:
    """OpenTelemetry's messaging (RabbitMQ) and CloudEvents attributes of one event."""
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation,
        "messaging.operation.name": "publish" if operation == "send" else operation,
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": message_id,
        "cloudevents.event_id": headers.get("ce-id"),
        "cloudevents.event_type": event_type,
        "cloudevents.event_source": headers.get("ce-source"),
        "cloudevents.event_subject": headers.get("ce-subject"),
    }
    return {k: str(v) for k, v in attributes.items() if v is not None}


class Publishable(Protocol):
    """What a publish span needs of an event (:class:`sagakit.envelope.OutgoingEvent` is one;
    a protocol, so that this module, which the envelope uses, does not import it back)."""

    @property
    def type(self) -> str: ...
    @property
    def id(self) -> UUID: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


@contextmanager
def publishing(event: Publishable, exchange: str) -> Iterator[dict[str, Any]]:
    """The PRODUCER span of one publish; yields the headers to send, which name this span.

    Its parent is the context the event was created in (the ``traceparent`` the outbox kept),
    so the publish joins the order's trace however long after the request it happens.
    """
    def attributes() -> dict[str, Any]:
        return _messaging("send", event.type, event.headers, str(event.id), exchange,
                          event.type)

    with span(f"{event.type} publish", parent=event.headers, kind=SpanKind.PRODUCER,
              attributes=attributes):
        headers = dict(event.headers)
        propagate.inject(headers)
        yield headers


@contextmanager
def consuming(message: IncomingMessage, queue: str) -> Iterator[Span]:
    """The CONSUMER span of one delivery, a child of the span that published it.

    Retried and parked copies keep the original headers, so every attempt at an event is a
    child of that event's one publish span, in the same trace.
    """
    headers: Mapping[str, Any] = message.headers or {}
    event_type = str(headers.get("ce-type") or message.routing_key or "")
    def attributes() -> dict[str, Any]:
        made = _messaging("process", event_type, headers, message.message_id,
                          message.exchange or "", message.routing_key or "")
        made["messaging.destination.subscription.name"] = queue
        made["saga.attempt"] = int(headers.get("x-attempt", 1))
        return made

    with span(f"{event_type} process", parent=headers, kind=SpanKind.CONSUMER,
              attributes=attributes) as current:
        yield current


def mark_failed(failed: Span, exc: BaseException) -> None:
    """Status ERROR, the exception as a span event, and its type as ``error.type``."""
    failed.record_exception(exc)
    failed.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
    failed.set_attribute("error.type", type(exc).__qualname__)

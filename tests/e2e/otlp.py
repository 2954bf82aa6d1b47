"""A small OTLP/HTTP receiver: where the e2e stack exports its spans and logs, kept for asserts.

It stands in for the OpenTelemetry Collector of compose mode (no Jaeger or Seq here): it
accepts ``POST /v1/traces`` and ``POST /v1/logs`` (protobuf, gzipped or not), decodes them with
the OTLP protobuf classes, and keeps every span and log record in memory.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status

T = TypeVar("T")
SERVER, PRODUCER, CONSUMER = SpanProto.SPAN_KIND_SERVER, SpanProto.SPAN_KIND_PRODUCER, \
    SpanProto.SPAN_KIND_CONSUMER
ERROR = Status.STATUS_CODE_ERROR


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for the root of a trace
    name: str
    kind: int
    attributes: dict[str, Any]
    status: int
    status_message: str
    events: tuple[str, ...]


@dataclass(frozen=True)
class LogRecord:
    service: str
    trace_id: str
    span_id: str
    body: str
    severity: str
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _service(resource: Resource) -> str:
    return str(_attributes(resource.attributes).get("service.name", ""))


class Receiver:
    """Start with :meth:`start`; ``endpoint`` is what OTEL_EXPORTER_OTLP_ENDPOINT gets."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.logs: list[LogRecord] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def receive(self, path: str, payload: bytes) -> bytes:
        """Decode one export request; returns the (empty) response message to send back."""
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(payload)
            spans = [
                Span(_service(rs.resource), s.trace_id.hex(), s.span_id.hex(),
                     s.parent_span_id.hex(), s.name, s.kind, _attributes(s.attributes),
                     s.status.code, s.status.message, tuple(e.name for e in s.events))
                for rs in traces.resource_spans for ss in rs.scope_spans for s in ss.spans
            ]
            with self._lock:
                self.spans.extend(spans)
            answer: bytes = ExportTraceServiceResponse().SerializeToString()
            return answer
        logs = ExportLogsServiceRequest.FromString(payload)
        records = [
            LogRecord(_service(rl.resource), r.trace_id.hex(), r.span_id.hex(),
                      str(_value(r.body)), r.severity_text, _attributes(r.attributes))
            for rl in logs.resource_logs for sl in rl.scope_logs for r in sl.log_records
        ]
        with self._lock:
            self.logs.extend(records)
        logged: bytes = ExportLogsServiceResponse().SerializeToString()
        return logged

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def logs_of(self, trace_id: str) -> list[LogRecord]:
        with self._lock:
            return [r for r in self.logs if r.trace_id == trace_id]

    def wait_for(self, what: str, found: Callable[[], T | None], timeout: float = 15.0) -> T:
        """Poll ``found`` until it returns something truthy (exports come in batches)."""
        deadline = time.monotonic() + timeout
        while not (result := found()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the services never exported {what}")
            time.sleep(0.05)
        return result


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class OtlpHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path not in ("/v1/traces", "/v1/logs"):
                self.send_error(404)
                return
            payload = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                payload = gzip.decompress(payload)
            answer = receiver.receive(self.path, payload)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows what matters

    return OtlpHandler


# --- compose mode: the same questions, asked of Jaeger and Seq ------------------------------------

_KINDS = {"server": SpanProto.SPAN_KIND_SERVER, "client": SpanProto.SPAN_KIND_CLIENT,
          "producer": PRODUCER, "consumer": CONSUMER, "internal": SpanProto.SPAN_KIND_INTERNAL}
_STATUS = {"OK": Status.STATUS_CODE_OK, "ERROR": ERROR}
_NOT_ATTRIBUTES = {"span.kind", "otel.status_code", "otel.status_description", "error",
                   "otel.scope.name", "otel.scope.version", "internal.span.format"}


def span_from_jaeger(span: dict[str, Any], processes: dict[str, Any]) -> Span:
    """One span of Jaeger's query API (its JSON model) as the receiver's :class:`Span`."""
    tags = {t["key"]: t["value"] for t in span.get("tags") or []}
    parents = [r["spanID"] for r in span.get("references") or [] if r["refType"] == "CHILD_OF"]
    events = tuple(str(f["value"]) for log in span.get("logs") or []
                   for f in log.get("fields") or [] if f["key"] == "event")
    return Span(
        service=processes[span["processID"]]["serviceName"],
        trace_id=span["traceID"].rjust(32, "0"), span_id=span["spanID"].rjust(16, "0"),
        parent_id=parents[0].rjust(16, "0") if parents else "",
        name=span["operationName"], kind=_KINDS.get(str(tags.get("span.kind")), 0),
        attributes={k: v for k, v in tags.items() if k not in _NOT_ATTRIBUTES},
        status=_STATUS.get(str(tags.get("otel.status_code")), 0),
        status_message=str(tags.get("otel.status_description", "")), events=events)


def log_from_seq(event: dict[str, Any]) -> LogRecord:
    """One event of Seq's API (``/api/events?render=true``) as the receiver's :class:`LogRecord`."""
    resource = {p["Name"]: p["Value"] for p in event.get("Resource") or []}
    return LogRecord(
        service=str(resource.get("service.name", "")), trace_id=event.get("TraceId") or "",
        span_id=event.get("SpanId") or "", body=str(event.get("RenderedMessage") or ""),
        severity=str(event.get("Level") or ""),
        attributes={p["Name"]: p["Value"] for p in event.get("Properties") or []})


class QueryBackends:
    """What the compose stack's collector delivered, read back from Jaeger's query API
    (``/api/traces/{id}``) and Seq's events API: the receiver's interface, so the tracing tests
    are the same functions in both run modes."""

    SERVICES = ("order", "payment", "production")

    def __init__(self, jaeger_url: str, seq_url: str) -> None:
        self.jaeger = jaeger_url.rstrip("/")
        self.seq = seq_url.rstrip("/")

    def trace(self, trace_id: str) -> list[Span]:
        response = httpx.get(f"{self.jaeger}/api/traces/{trace_id}", timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [span_from_jaeger(s, t["processes"]) for t in response.json()["data"] or []
                for s in t["spans"]]

    @property
    def spans(self) -> list[Span]:
        """Every span Jaeger holds of the three services (the last hour, up to 1500 traces)."""
        found: dict[str, Span] = {}
        for service in self.SERVICES:
            response = httpx.get(f"{self.jaeger}/api/traces", timeout=30, params={
                "service": service, "limit": 1500, "lookback": "1h"})
            response.raise_for_status()
            for trace in response.json()["data"] or []:
                for span in trace["spans"]:
                    found[span["spanID"]] = span_from_jaeger(span, trace["processes"])
        return list(found.values())

    def _events(self, filter_: str | None, count: int) -> list[LogRecord]:
        params: dict[str, Any] = {"count": count, "render": "true"}
        if filter_:
            params["filter"] = filter_
        response = httpx.get(f"{self.seq}/api/events", params=params, timeout=30)
        response.raise_for_status()
        return [log_from_seq(e) for e in response.json()]

    def logs_of(self, trace_id: str) -> list[LogRecord]:
        return self._events(f"@TraceId = '{trace_id}'", 1000)

    @property
    def logs(self) -> list[LogRecord]:
        return self._events(None, 10000)

    def wait_for(self, what: str, found: Callable[[], T | None], timeout: float = 30.0) -> T:
        deadline = time.monotonic() + timeout
        while not (result := found()):
            if time.monotonic() > deadline:
                raise AssertionError(f"Jaeger/Seq never showed {what}")
            time.sleep(0.3)
        return result

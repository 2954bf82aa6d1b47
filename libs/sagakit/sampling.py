"""Which traces are recorded: every one at a person's pace, a few per second under load.

The default sampler is ``ParentBased(root=PerOperationRateLimit(10))``: a trace that starts here
(a request, nearly always ``POST /api/v1/orders``) is recorded while its operation (the span's
name: method and route) has started fewer than about ``per_second`` recorded traces a second in
this process, with a burst of ``burst`` allowed; everything the request causes follows that
decision through the ``traceparent`` of its events (the parent-based part). A person placing
orders by hand, a demo, a test: every order recorded. A benchmark at 100 orders a second: about
one in ten, and the rest cost almost nothing (:func:`sagakit.telemetry.span` and
:class:`sagakit.telemetry.QuietUnlessSampled` switch the database and Redis client spans off
inside a trace that is not recorded).

Every order still has its trace id (a span that is not recorded still has one: it is in the
order, its timeline, every event's ``traceparent`` and every log line, so Seq finds all of an
order's logs either way). To record one that would be dropped, send a W3C ``traceparent`` whose
flags say sampled (``00-<32 hex>-<16 hex>-01``): the parent-based sampler follows the caller.

This is the rate-limiting strategy of Jaeger's samplers and AWS X-Ray's reservoir, per
operation so that one busy route (a poll) cannot use up another's share. It is written here
because OpenTelemetry's Python SDK has no rate-limiting sampler, and it is a token bucket: a
dozen lines. ``OTEL_TRACES_SAMPLER`` (``always_on``, ``parentbased_traceidratio`` ...) replaces
it, as the standard says; ``OTEL_TRACES_SAMPLER=parentbased_rate_limited`` with
``OTEL_TRACES_SAMPLER_ARG=<traces per second>`` changes only the rate (0 records none).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

RATE_LIMITED = "parentbased_rate_limited"
DEFAULT_PER_SECOND = 10.0


class PerOperationRateLimit(Sampler):
    """At most about ``per_second`` recorded traces a second per span name (``burst`` at once).

    ``clock`` is for tests. The names are a service's routes, a handful; past ``max_names``
    buckets (a client inventing names) a new name shares one bucket with the other strangers.
    """

    def __init__(self, per_second: float, burst: float | None = None, max_names: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = max(per_second, 0.0)
        self.burst = max(burst if burst is not None else 5 * self.per_second, 1.0)
        self.max_names = max_names
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # name -> [tokens, last refill]
        self._lock = threading.Lock()  # spans may start in exporter or worker threads too

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: object = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self._take(name) else Decision.DROP,
                              attributes if attributes else None)

    def _take(self, name: str) -> bool:
        if self.per_second == 0.0:
            return False
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(name)
            if bucket is None:
                if len(self._buckets) >= self.max_names:
                    name = "\0others"
                bucket = self._buckets.setdefault(name, [self.burst, now])
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
            bucket[1] = now
            if tokens < 1.0:
                bucket[0] = tokens
                return False
            bucket[0] = tokens - 1.0
            return True

    def get_description(self) -> str:
        return f"PerOperationRateLimit{{{self.per_second:g}/s, burst {self.burst:g}}}"


def from_env() -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER``/``_ARG`` ask for; unset, the rate-limited default."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", RATE_LIMITED).strip().lower() or RATE_LIMITED
    if name != RATE_LIMITED:
        return _get_from_env_or_default()
    try:
        per_second = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG") or DEFAULT_PER_SECOND)
    except ValueError:
        per_second = DEFAULT_PER_SECOND
    return ParentBased(root=PerOperationRateLimit(per_second))


__all__ = ["DEFAULT_PER_SECOND", "RATE_LIMITED", "PerOperationRateLimit", "from_env"]

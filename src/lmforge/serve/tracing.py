"""OpenTelemetry tracing for the HTTP server, cheap when a request is not sampled.

One `Tracing` per app, with its own TracerProvider (never the global one, so several apps in
one process, as in tests, keep their spans apart). The sampler is
`ParentBased(TraceIdRatioBased(sample_ratio))`: an incoming W3C `traceparent` that is sampled
is continued, an unsampled one is not, and a new root is kept with probability `sample_ratio`.

Why the fast path: a non-recording span from the SDK still costs an id draw, a sampler call,
a context attach/detach and several objects: 10-25 µs a span on a busy 2-core box, while
this module's whole unsampled path (a request span and two children) adds ~0.5 µs over
tracing disabled (bench/tracing_overhead.py, "micro"). So `request_span` makes the root
decision itself, on the same rule the SDK's `TraceIdRatioBased` applies (low 64 bits of the
trace id below a bound), and for the ~99 % of requests that lose the draw returns a shared
no-op context manager: no SDK call, no context change, no attribute dict built (pass
`attributes` as a zero-argument callable for that). A winning draw hands its trace id to the
SDK through a tiny id generator, so the SDK's own sampler reaches the same decision on the
same id. `span()` is a no-op outside a sampled span of ours, so children of an unsampled
request cost one ContextVar read.

A sampled request is the SDK's full price (~100 µs for three spans on that box, more when
rare and cache-cold), so at 1 % it adds a few µs per request on average: a few % of a
real request, more on a pipeline that does nothing else (see the bench).

Usage (ASGI middleware and handlers):

    attrs = lambda: {"http.route": route}  # built only if the request is sampled
    with tracing.request_span("POST /v1/predict", scope["headers"], attrs) as sp:
        with tracing.span("queue_wait"):
            ...
        if sp.is_recording():
            sp.set_attribute("lmforge.texts", n)
        mark_http_status(sp, status)
"""

from __future__ import annotations

import contextvars
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lmforge.config import TracingConfig
from lmforge.errors import ConfigError

log = logging.getLogger("lmforge.serve.tracing")

Attributes = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None

_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()
# The trace id a won root draw wants the SDK to use; read by _PresetTraceIds only.
_PRESET_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "lmforge_preset_trace_id", default=None
)
# True inside a recording span of ours: one ContextVar read tells span() whether to do
# anything, cheaper than asking OpenTelemetry for the current span (several calls deep).
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lmforge_span_recording", default=False
)
_getrandbits = random.getrandbits


class _NoopSpanContext(AbstractContextManager):
    """`with` on it yields the invalid (non-recording) span and does nothing else.

    Stateless, so one shared instance serves every unsampled request at once.
    """

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> bool:
        return False


_NOOP = _NoopSpanContext()


class _RecordingSpanContext(AbstractContextManager):
    """Makes `span` current, marks the context as recording, ends the span on exit.

    What `trace.use_span(span, end_on_exit=True)` does (an Exception is recorded on the span
    and sets its status to ERROR; BaseExceptions such as cancellation are not errors), minus
    the generator machinery, which is a measurable part of a sampled request's cost.
    """

    __slots__ = ("_otel_token", "_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: contextvars.Token[bool] | None = None
        self._otel_token: object = None

    def __enter__(self) -> Span:
        self._token = _RECORDING.set(True)
        self._otel_token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        span = self._span
        try:
            if isinstance(exc, Exception) and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
        finally:
            otel_context.detach(self._otel_token)  # type: ignore[arg-type]
            if self._token is not None:
                _RECORDING.reset(self._token)
        return False


class _PresetTraceIds(IdGenerator):
    """Random ids, except a root trace id that `request_span` already drew for its sampling."""

    def generate_span_id(self) -> int:
        return _getrandbits(64) or 1  # 0 is the invalid id (odds 2**-64)

    def generate_trace_id(self) -> int:
        preset = _PRESET_TRACE_ID.get()
        if preset is not None:
            return preset
        return _getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


def _make_exporter(cfg: TracingConfig) -> SpanExporter:
    if cfg.exporter == "console":
        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise ConfigError(
            "tracing.exporter is 'otlp' but the OTLP exporter is not installed: "
            "run `pip install opentelemetry-exporter-otlp-proto-http`, or set "
            "tracing.exporter to 'console' or 'none'"
        ) from e
    if cfg.otlp_endpoint:
        return OTLPSpanExporter(endpoint=cfg.otlp_endpoint)
    return OTLPSpanExporter()  # its default endpoint, or OTEL_EXPORTER_OTLP_* from the env


class Tracing:
    """Spans for one app; `enabled=False` makes every method a no-op."""

    def __init__(self, cfg: TracingConfig, service_name: str = "lmforge-serve") -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self._memory: InMemorySpanExporter | None = None
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        ratio = cfg.sample_ratio
        # Same bound as TraceIdRatioBased, so our draw and the SDK's sampler always agree.
        self._bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        if not self.enabled:
            return
        batching = cfg.exporter in ("console", "otlp")
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(ratio)),
            resource=Resource.create({"service.name": service_name}),
            id_generator=_PresetTraceIds(),
            # The atexit hook flushes batched spans; without a batch there is nothing to flush
            # and the hook would keep every test's provider alive.
            shutdown_on_exit=batching,
        )
        if batching:
            provider.add_span_processor(BatchSpanProcessor(_make_exporter(cfg)))
        elif cfg.exporter == "memory":
            self._memory = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(self._memory))
        # "none": spans are still sampled and recorded (trace ids reach the logs) but go nowhere.
        self._provider = provider
        self._tracer = provider.get_tracer("lmforge.serve")

    def request_span(
        self,
        name: str,
        headers: Iterable[tuple[bytes, bytes]] | None,
        attributes: Attributes = None,
    ) -> AbstractContextManager[Span]:
        """A context manager around one request, yielding its span (a SERVER span).

        Continues a sampled W3C `traceparent` from `headers` (ASGI's lowercased byte pairs);
        without a usable one it starts a root kept with probability `sample_ratio`. When not
        sampled it yields the non-recording INVALID_SPAN at almost no cost. `attributes` may
        be a callable so the dict is only built for sampled requests.
        """
        tracer = self._tracer
        if tracer is None:
            return _NOOP
        traceparent = tracestate = None
        if headers:
            for key, value in headers:
                if key == _TRACEPARENT:
                    traceparent = value
                elif key == _TRACESTATE:
                    tracestate = value
        if traceparent is not None:
            parent = self._extract(traceparent, tracestate)
            if parent is not None:
                parent_sc = trace.get_current_span(parent).get_span_context()
                if not parent_sc.trace_flags.sampled:
                    return _NOOP  # ParentBased would drop it too: honour the caller's choice
                span = tracer.start_span(
                    name, context=parent, kind=SpanKind.SERVER, attributes=_resolve(attributes)
                )
                return _RecordingSpanContext(span)
        low = _getrandbits(64)
        if low >= self._bound:
            return _NOOP
        trace_id = (_getrandbits(64) << 64) | low
        if trace_id == 0:
            trace_id = 1 << 64  # keeps the low bits (and so the decision); 0 is invalid
        attrs = _resolve(attributes)
        # start_span, not start_as_current_span: the latter creates its span only on __enter__,
        # after the preset id would be gone. An empty Context: a root even if a span is current.
        token = _PRESET_TRACE_ID.set(trace_id)
        try:
            span = tracer.start_span(
                name, context=Context(), kind=SpanKind.SERVER, attributes=attrs
            )
        finally:
            _PRESET_TRACE_ID.reset(token)
        return _RecordingSpanContext(span)

    def span(
        self, name: str, attributes: Attributes = None, *, parent: Span | None = None
    ) -> AbstractContextManager[Span]:
        """A context manager for a child of the current span (or of `parent`, if given).

        A no-op unless it runs inside a sampled `request_span` (or `span`) of this module, or
        `parent` records: spans inside unsampled requests cost one ContextVar read. Pass
        `parent` where the work runs in another task than the request, e.g. a batch worker
        (its context is the worker's, not the request's).
        """
        tracer = self._tracer
        if tracer is None:
            return _NOOP
        if parent is None:
            if not _RECORDING.get():
                return _NOOP
            child = tracer.start_span(name, attributes=_resolve(attributes))
        elif parent.is_recording():
            child = tracer.start_span(
                name, context=trace.set_span_in_context(parent), attributes=_resolve(attributes)
            )
        else:
            return _NOOP
        return _RecordingSpanContext(child)

    def current_trace_id(self) -> str | None:
        """The 32-hex-digit trace id of the current sampled span, or None (for log lines)."""
        return current_trace_id()

    def finished_spans(self) -> list[ReadableSpan]:
        """Spans ended so far; only with exporter "memory" (tests)."""
        if self._memory is None:
            raise ConfigError(
                f"finished_spans() needs tracing.exporter 'memory' and tracing.enabled true; "
                f"this Tracing has exporter {self.cfg.exporter!r}, enabled {self.enabled}"
            )
        return list(self._memory.get_finished_spans())

    def shutdown(self) -> None:
        """Flushes and stops the exporter; later spans are dropped. Safe to call twice."""
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is not None:
            provider.shutdown()

    def _extract(self, traceparent: bytes, tracestate: bytes | None) -> Context | None:
        carrier = {"traceparent": traceparent.decode("latin-1")}
        if tracestate is not None:
            carrier["tracestate"] = tracestate.decode("latin-1")
        ctx = _PROPAGATOR.extract(carrier)
        # A malformed header extracts to no span: treat it as absent, as W3C says.
        if not trace.get_current_span(ctx).get_span_context().is_valid:
            return None
        return ctx


def current_trace_id() -> str | None:
    """The trace id (hex) of the current span when it is sampled, else None."""
    sc = trace.get_current_span().get_span_context()
    if sc.trace_id and sc.trace_flags.sampled:
        return format(sc.trace_id, "032x")
    return None


def mark_http_status(span: Span, status: int) -> None:
    """Puts the response status on a request span; 5xx marks the span as an error."""
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def _resolve(attributes: Attributes) -> Mapping[str, Any] | None:
    if callable(attributes):
        return attributes()
    return attributes

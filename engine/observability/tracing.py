"""OpenTelemetry tracing: off unless ``[tracing]`` turns it on, and then one server span
per RPC (continuing the caller's W3C ``traceparent``), one child span per channel call,
and spans for fusion and for the encoders.

OpenTelemetry is an optional extra (``pip install 'recall-engine[tracing]'``): nothing
here imports it until :func:`configure` turns tracing on, so a server with tracing off
runs without the packages, and turning it on without them is a start-up error that
names the extra (:class:`TracingUnavailable`).

Off costs nothing measurable: every hook on the request path is guarded by the
module-level flag :data:`ENABLED` (``if tracing.ENABLED:``, one attribute read), so no
span, context or attribute object is made. On, spans below the server span are made
only when their parent is recording (sampled), so a request the sampler dropped costs a
few flag checks too; and code that runs outside any request (the micro-batcher's own
thread, offline evaluation) never starts a trace of its own.

Channel calls run on their bulkhead's worker threads, which do not inherit the event
loop's context: the engine captures :func:`parent_context` on the loop and hands it
over explicitly (:func:`start_span`, :func:`activate`).

The helpers here take and return OpenTelemetry objects but import nothing from the
gRPC layer (the runtime layer, which may import no gRPC, uses them too); the server
interceptor is :mod:`recall_engine.serving.trace_interceptor`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanProcessor
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "ENABLED",
    "EXPORTERS",
    "TracingUnavailable",
    "activate",
    "child_span",
    "configure",
    "current_ids",
    "deactivate",
    "end_span",
    "parent_context",
    "perf_to_ns",
    "server_span",
    "set_rpc_status",
    "shutdown",
    "start_span",
]

#: True while tracing is on. Read as ``tracing.ENABLED`` (never imported by name: it
#: changes when :func:`configure` or :func:`shutdown` runs).
ENABLED = False

#: What ``[tracing] exporter`` may say.
EXPORTERS = ("none", "otlp", "console")

_EXTRA = "pip install 'recall-engine[tracing]'"
# gRPC status codes a server span reports as an error (OpenTelemetry's semantic
# conventions for RPC servers: the server's fault, not the caller's).
_SERVER_ERROR_CODES = frozenset({2, 4, 12, 13, 14, 15})

# Bound by configure(): the opentelemetry modules and our tracer. None while off.
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_trace: Any = None  # opentelemetry.trace
_context: Any = None  # opentelemetry.context
_propagate: Any = None  # opentelemetry.propagate
_Status: Any = None  # opentelemetry.trace.Status
_StatusCode: Any = None  # opentelemetry.trace.StatusCode
_SERVER: Any = None  # SpanKind.SERVER


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the OpenTelemetry packages are not installed."""


def configure(
    *,
    exporter: str,
    endpoint: str | None = None,
    sampling_ratio: float = 1.0,
    service_name: str = "recall-engine",
    service_version: str = "",
    span_exporter: SpanExporter | None = None,
    span_processor: SpanProcessor | None = None,
    install_global: bool = False,
) -> None:
    """Turn tracing on (``exporter`` ``"otlp"`` or ``"console"``) or off (``"none"``),
    replacing what an earlier call set up (its spans are flushed first).

    ``otlp`` sends spans over gRPC to ``endpoint`` (``http://HOST:PORT`` plaintext,
    ``https://`` with TLS; None: the exporter's default, ``OTEL_EXPORTER_OTLP_ENDPOINT``
    or ``localhost:4317``), ``console`` prints them as JSON to stdout; both from a
    background thread, in batches. ``sampling_ratio`` is the share of traces started here
    that are kept; a caller's sampling decision (``traceparent``) is followed either way
    (``ParentBased(TraceIdRatioBased(ratio))``). ``span_exporter`` or ``span_processor``
    replace the one ``exporter`` names (tests: an ``InMemorySpanExporter``, exported
    synchronously).
    ``install_global`` also makes ours the process's global tracer provider, so that
    spans a plugin starts with ``opentelemetry.trace.get_tracer`` join the same traces
    (the first call that asks wins: OpenTelemetry sets it once per process).

    Raises :class:`TracingUnavailable`, naming the ``[tracing]`` extra, when the
    packages the exporter needs are not installed, and ``ValueError`` for an unknown
    exporter. Leaves tracing off when it raises."""
    global ENABLED, _tracer, _provider
    if exporter not in EXPORTERS:
        raise ValueError(f"tracing exporter must be one of {EXPORTERS}, got {exporter!r}")
    shutdown()
    if exporter == "none":
        return
    _bind_api(exporter)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if span_processor is None:
        if span_exporter is not None:
            span_processor = SimpleSpanProcessor(span_exporter)
        else:
            span_processor = BatchSpanProcessor(_exporter(exporter, endpoint))
    attributes = {"service.name": service_name}
    if service_version:
        attributes["service.version"] = service_version
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sampling_ratio)),
        resource=Resource.create(attributes),
    )
    provider.add_span_processor(span_processor)
    if install_global:
        _trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("recall_engine", service_version or None)
    ENABLED = True


def _bind_api(exporter: str) -> None:
    """Import the OpenTelemetry API and SDK, or raise naming the extra."""
    global _trace, _context, _propagate, _Status, _StatusCode, _SERVER
    try:
        import opentelemetry.sdk.trace  # noqa: F401 - the SDK, checked here
        from opentelemetry import context, propagate, trace
    except ImportError as e:
        raise TracingUnavailable(
            f"tracing.exporter = {exporter!r} needs the OpenTelemetry packages, which are "
            f"not installed ({e.name or e}): {_EXTRA} (the [tracing] extra), or set "
            "tracing.exporter = 'none'"
        ) from None
    _trace, _context, _propagate = trace, context, propagate
    _Status, _StatusCode, _SERVER = trace.Status, trace.StatusCode, trace.SpanKind.SERVER


def _exporter(exporter: str, endpoint: str | None) -> SpanExporter:
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise TracingUnavailable(
            "tracing.exporter = 'otlp' needs the OTLP exporter "
            f"(opentelemetry-exporter-otlp-proto-grpc), which is not installed ({e.name or e}): "
            f"{_EXTRA} (the [tracing] extra)"
        ) from None
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


def shutdown() -> None:
    """Turn tracing off; spans already ended are exported first (bounded by the
    exporter's own timeout). Idempotent."""
    global ENABLED, _tracer, _provider
    provider, _provider = _provider, None
    ENABLED, _tracer = False, None
    if provider is not None:
        provider.shutdown()


# --------------------------------------------------------------------------- spans
# Callers check ENABLED first; these are only called while tracing is on.


@contextlib.contextmanager
def server_span(
    name: str, metadata: Sequence[tuple[str, Any]] | None, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """The current span for one RPC, a child of the caller's trace context when its
    ``metadata`` carries one (W3C ``traceparent`` / ``tracestate``), else a new trace.
    Exceptions are not recorded here: the interceptor sets the status from the call's
    gRPC code (an abort is an exception too, and not the server's fault)."""
    tracer = _tracer
    if tracer is None:  # turned off meanwhile
        yield _trace.INVALID_SPAN
        return
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    parent = _propagate.extract(carrier) if carrier else None
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=_SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def set_rpc_status(span: Span, code: int, details: str | None) -> None:
    """The call's gRPC status on its server span: ``rpc.grpc.status_code`` always, an
    error status for the codes that are the server's fault."""
    span.set_attribute("rpc.grpc.status_code", code)
    if code in _SERVER_ERROR_CODES:
        span.set_status(_Status(_StatusCode.ERROR, details or None))


@contextlib.contextmanager
def child_span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A span under the current one, made current, when the current one is recording;
    else a no-op span (setting attributes on it does nothing). An exception leaving the
    block is recorded and marks the span an error."""
    tracer = _tracer
    if tracer is None or not _trace.get_current_span().is_recording():
        yield _trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def parent_context() -> Context | None:
    """The current context when its span is recording (None otherwise): what the event
    loop hands to work it starts on another thread (see :func:`start_span`)."""
    if not _trace.get_current_span().is_recording():
        return None
    return _context.get_current()


def start_span(
    name: str,
    parent: Context,
    attributes: Mapping[str, Any] | None = None,
    start_perf: float | None = None,
) -> Span:
    """Start (not make current) a span under ``parent``, from :func:`parent_context`.
    ``start_perf``: when it started, a ``time.perf_counter()`` instant (default: now)."""
    tracer = _tracer
    if tracer is None:  # turned off meanwhile
        return _trace.INVALID_SPAN
    start = perf_to_ns(start_perf) if start_perf is not None else None
    return tracer.start_span(name, context=parent, attributes=attributes, start_time=start)


def activate(span: Span) -> object:
    """Make ``span`` current on this thread; returns the token for :func:`deactivate`."""
    return _context.attach(_trace.set_span_in_context(span))


def deactivate(token: object) -> None:
    _context.detach(token)


def end_span(
    span: Span,
    attributes: Mapping[str, Any] | None = None,
    *,
    error: str | None = None,
    exception: BaseException | None = None,
) -> None:
    """Set ``attributes``, mark the span an error when ``error`` (the description) or
    ``exception`` (recorded as an event) is given, and end it."""
    if attributes:
        span.set_attributes(attributes)
    if exception is not None:
        span.record_exception(exception)
    if error is not None or exception is not None:
        span.set_status(_Status(_StatusCode.ERROR, error or repr(exception)))
    span.end()


def perf_to_ns(instant: float) -> int:
    """A ``time.perf_counter()`` instant as wall-clock nanoseconds (span timestamps)."""
    return time.time_ns() - int((time.perf_counter() - instant) * 1e9)


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span as lower-case hex (32 and 16
    digits, as in ``traceparent``), or None when there is none."""
    ctx = _trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

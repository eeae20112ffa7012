"""One logging set-up: JSON lines in production, the console renderer on a terminal.

Per-request fields (request id, experiment, variant) are bound with contextvars by the
servicer, so every event logged while serving a request carries them; with tracing on,
so do ``trace_id`` and ``span_id`` of the span current when the event is logged
(:func:`add_trace_ids`).
"""

from __future__ import annotations

import logging
import sys

import structlog

from recall_engine.observability import tracing


def configure(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog, and route the standard library's warnings and errors
    through it (:func:`_route_stdlib_logging`). ``json=None`` picks JSON unless stderr
    is a terminal."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            truncate_long_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging()


#: What libraries log through the standard library (gRPC, OpenTelemetry's exporters,
#: boto3, Ray) reaches the service's log from this level up: their warnings and errors
#: (an exporter that cannot reach its collector), not their chatter.
STDLIB_LEVEL = logging.WARNING


class _ToStructlog(logging.Handler):
    """Hands a standard-library record to structlog, so that it is a line like every
    other (JSON in production) with the library's logger name, not plain text between
    JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, object] = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _route_stdlib_logging() -> None:
    """One :class:`_ToStructlog` on the root logger (again on every ``configure``,
    replacing the earlier one), at :data:`STDLIB_LEVEL`."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    handler = _ToStructlog(STDLIB_LEVEL)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > STDLIB_LEVEL:
        root.setLevel(STDLIB_LEVEL)


def add_trace_ids(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """``trace_id`` and ``span_id`` of the current span (hex, as in ``traceparent``), so
    that a log line can be found from its trace and the other way round. Nothing while
    tracing is off or outside a span."""
    if tracing.ENABLED:
        ids = tracing.current_ids()
        if ids is not None:
            event.setdefault("trace_id", ids[0])
            event.setdefault("span_id", ids[1])
    return event


#: Longest string a log field keeps; the rest is replaced by a count. Requests are
#: validated before they are logged, but a log line must stay a line whatever reaches it.
MAX_FIELD_CHARS = 1024


def truncate_long_values(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Cut every string field (the event name included) to :data:`MAX_FIELD_CHARS`."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            event[key] = f"{value[:MAX_FIELD_CHARS]}...[{len(value) - MAX_FIELD_CHARS} more chars]"
    return event


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now* (pytest and embedding
    applications swap it), unlike a PrintLogger bound to the stream at set-up.

    One ``write`` per line, newline included: the processes of ``serve --processes N``
    share one stderr, and ``print`` writes the line and its newline separately, so two
    processes logging at the same instant could glue their lines together (seen as
    ``{...}{...}`` in a log collector). A write of under ``PIPE_BUF`` bytes to a pipe is
    atomic, and logged fields are truncated (:data:`MAX_FIELD_CHARS`)."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _StderrLoggerFactory:
    def __call__(self, *args: object) -> _StderrLogger:
        return _StderrLogger()


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)

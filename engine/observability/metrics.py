"""Prometheus metrics, defined once here and imported by whoever records them.

Served over HTTP by :func:`start_http` (``server.metrics_addr`` in the config).

A labelled series exists only once its label values were first used, and ``increase()``
or ``rate()`` see a change only between two samples of one series: a series that
appears at 1 hides its first event (the first failed reload of a process would never
raise RecallEngineReloadFailed). So every label combination known up front is created at
0 before it can be counted (Prometheus' instrumentation guidance): the fixed ones here,
at import; each channel's by :func:`channel_series` when it loads; each experiment
variant's by :func:`variant_series`; the admin methods' refusals by
:func:`admin_auth_series`. Error statuses of requests are not: the alerts read them as a
ratio over minutes, where one missed first event does not matter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "recall_requests_total", "Recall requests by method and gRPC status", ["method", "status"]
)
REQUEST_LATENCY = Histogram(
    "recall_request_seconds",
    "Recall request latency by method and status",
    ["method", "status"],
    buckets=_LATENCY_BUCKETS,
)
VARIANT_REQUESTS = Counter(
    "recall_variant_requests_total", "Requests per experiment variant", ["experiment", "variant"]
)
CHANNEL_LATENCY = Histogram(
    "recall_channel_seconds",
    "Channel call latency",
    ["channel", "status"],
    buckets=_LATENCY_BUCKETS,
)
CHANNEL_CANDIDATES = Histogram(
    "recall_channel_candidates",
    "Candidates a channel returned",
    ["channel"],
    buckets=(0, 1, 10, 50, 100, 200, 500, 1000, 5000),
)
CHANNEL_ERRORS = Counter("recall_channel_errors_total", "Channel calls that raised", ["channel"])
CHANNEL_TIMEOUTS = Counter(
    "recall_channel_timeouts_total", "Channel calls that timed out", ["channel"]
)
CHANNEL_REJECTED = Counter(
    "recall_channel_rejected_total",
    "Channel calls not started: the channel's bound on calls in flight was reached",
    ["channel"],
)
CHANNEL_ABANDONED = Counter(
    "recall_channel_abandoned_total",
    "Channel calls still running when their timeout passed (left to finish on their thread)",
    ["channel"],
)
CHANNEL_HUNG = Gauge(
    "recall_channel_hung_calls",
    "Channel calls running past their timeout right now (they hold a bulkhead slot)",
    ["channel"],
)
CHANNEL_BAD_OUTPUT = Counter(
    "recall_channel_bad_output_total",
    "Channel answers refused by the engine's output check (non-finite scores, duplicates...)",
    ["channel"],
)
CHANNEL_IN_FLIGHT = Gauge(
    "recall_channel_in_flight", "Channel calls in flight (bulkhead occupancy)", ["channel"]
)
REQUESTS_IN_FLIGHT = Gauge(
    "recall_engine_requests_in_flight", "Requests admitted into the engine and not finished"
)
ADMISSION_LIMIT = Gauge(
    "recall_engine_admission_limit",
    "The bound on requests in flight in force (adapts to the event loop's lag; 0: no bound)",
)
ADMISSION_QUEUE = Gauge(
    "recall_engine_admission_queue",
    "Requests waiting in line for a slot at the bound ([overload] queue_ms; 0: none)",
)
LOOP_LAG = Gauge(
    "recall_engine_loop_lag_seconds",
    "How late the serving event loop runs a timer (EWMA; admission adapts to it; 0: unwatched)",
)
REQUESTS_SHED = Counter(
    "recall_requests_shed_total",
    "Requests refused with RESOURCE_EXHAUSTED by admission control",
    ["reason"],
)
CHANNEL_ITEMS = Gauge("recall_channel_items", "Items a loaded channel can recall", ["channel"])
ENCODER_BATCH_SIZE = Histogram(
    "recall_encoder_batch_size",
    "Texts per encoder batch",
    ["encoder"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ENCODER_QUEUE_SECONDS = Histogram(
    "recall_encoder_queue_seconds",
    "Time an encode call waited for its batch",
    ["encoder"],
    buckets=_LATENCY_BUCKETS,
)
ENCODER_SECONDS = Histogram(
    "recall_encoder_seconds", "Encoder batch run time", ["encoder"], buckets=_LATENCY_BUCKETS
)
ENCODER_BATCHER_RESTARTS = Counter(
    "recall_encoder_batcher_restarts_total",
    "Micro-batcher threads found dead and restarted",
    ["encoder"],
)
ENCODER_EXPIRED = Counter(
    "recall_encoder_expired_total",
    "Encode calls dropped before running: their caller's deadline had passed or it gave up",
    ["encoder"],
)
CONFIG_GENERATION = Gauge("recall_config_generation", "Config generation being served")
RELOADS = Counter(
    "recall_reloads_total",
    "Config reloads (kind=config) and artifact reloads (kind=artifacts) by outcome (ok, failed)",
    ["kind", "outcome"],
)
CATALOG_SYNCED_AT = Gauge(
    "recall_catalog_last_sync_timestamp_seconds",
    "Unix time the last catalogue sync round (other processes' updates applied) ended; 0: none",
)
CATALOG_SYNC_FAILURES = Counter(
    "recall_catalog_sync_failures_total", "Catalogue sync rounds that raised (retried next round)"
)
CATALOG_SYNC_OPERATIONS = Counter(
    "recall_catalog_sync_operations_total",
    "Item upserts and deletes applied from the update log that other processes wrote",
)
SERVING = Gauge("recall_serving", "1 while health says SERVING; 0 while loading or draining")

ADMIN_AUTH_FAILURES = Counter(
    "recall_admin_auth_failures_total",
    "AdminService calls refused before any work: no token configured, none sent, or wrong",
    ["method", "code"],
)
WORKER_RESTARTS = Gauge(
    "recall_worker_restarts",
    "serve --processes N: how many times the parent restarted this worker slot",
)


#: ``recall_reloads_total``'s label values (``kind``, ``outcome``).
RELOAD_KINDS = ("config", "artifacts")
RELOAD_OUTCOMES = ("ok", "failed")
#: The methods ``recall_requests_total`` counts (serving/servicer.py).
RECALL_METHODS = ("Recall", "BatchRecall")
#: ``recall_channel_seconds``' ``status`` values (serving/engine.py).
CHANNEL_STATUSES = ("ok", "timeout", "error")
#: The codes an AdminService call is refused with before any work (serving/auth.py).
ADMIN_AUTH_CODES = ("FAILED_PRECONDITION", "UNAUTHENTICATED", "PERMISSION_DENIED")


def _fixed_series() -> None:
    """Every reload kind and outcome, and each recall method's OK status, at 0."""
    for kind in RELOAD_KINDS:
        for outcome in RELOAD_OUTCOMES:
            RELOADS.labels(kind, outcome)
    for method in RECALL_METHODS:
        REQUESTS.labels(method, "OK")
        REQUEST_LATENCY.labels(method, "OK")


_fixed_series()


def channel_series(channel: str) -> None:
    """Create the series of channel ``channel`` at 0 (when it loads), so that its first
    timeout, error, refusal or hung call is a change the rules and the dashboard see."""
    for counter in (
        CHANNEL_TIMEOUTS,
        CHANNEL_ERRORS,
        CHANNEL_REJECTED,
        CHANNEL_ABANDONED,
        CHANNEL_BAD_OUTPUT,
    ):
        counter.labels(channel)
    CHANNEL_HUNG.labels(channel)
    CHANNEL_CANDIDATES.labels(channel)
    for status in CHANNEL_STATUSES:
        CHANNEL_LATENCY.labels(channel, status)


def variant_series(variants: Iterable[tuple[str, str]]) -> None:
    """Create ``recall_variant_requests_total`` at 0 for each (experiment, variant)."""
    for experiment, variant in variants:
        VARIANT_REQUESTS.labels(experiment, variant)


def admin_auth_series(methods: Iterable[str]) -> None:
    """Create ``recall_admin_auth_failures_total`` at 0 for each admin method and each
    code it can be refused with."""
    for method in methods:
        for code in ADMIN_AUTH_CODES:
            ADMIN_AUTH_FAILURES.labels(method=method, code=code)


@contextlib.contextmanager
def reload_outcome(kind: str) -> Iterator[None]:
    """Count the reload in the ``with`` block: ``ok``, or ``failed`` when it raises."""
    try:
        yield
    except BaseException:
        RELOADS.labels(kind, "failed").inc()
        raise
    RELOADS.labels(kind, "ok").inc()


@contextlib.contextmanager
def catalog_sync_round() -> Iterator[None]:
    """Time-stamp a catalogue sync round that ends without raising; count one that raises
    (the sync lag an operator alerts on is now minus the stamp)."""
    try:
        yield
    except BaseException:
        CATALOG_SYNC_FAILURES.inc()
        raise
    CATALOG_SYNCED_AT.set_to_current_time()


def start_http(addr: str) -> int:
    """Serve ``/metrics`` on ``HOST:PORT`` (port 0 picks a free one); return the port."""
    host, _, port = addr.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0")
    return int(server.server_port)

"""Service configuration: one TOML file, parsed with :mod:`tomllib`, checked at start-up
against the classes below (pydantic v2 under :func:`recall_engine.sdk.params.parse`).

Every error is a :class:`ConfigError` whose message starts with the key path of the
offending value and shows the value (``channels.cf.timeout_ms: must be a positive
integer, got -1``), so an operator can find it in the file. Unknown keys are errors at
every level (typos must not silently fall back to defaults). ``[channels.<name>.params]``
belongs to the channel's plugin: the engine checks it against the plugin's declared
``Params`` at start-up (:func:`recall_engine.serving.registry.prepare`).
``deploy/config.example.toml`` documents every key.

The values are frozen dataclasses with read-only mappings: a config is shared by every
request thread and replaced as a whole on reload, never edited in place.

Adding a setting is one annotated line with its default in the class of its table, e.g.
``drain_s: NonNegativeFloat = 5.0`` in :class:`ServerConfig`: the type (from
:mod:`recall_engine.sdk.params` or :mod:`.fields`) is the check and names the error.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from annotated_types import Ge, Interval
from pydantic import AfterValidator

from recall_engine.config.errors import ConfigError
from recall_engine.config.fields import (
    Address,
    ConfigPath,
    FrozenTable,
    LogLevel,
    OptionalAddress,
    OptionalExistingFile,
    OptionalStr,
    Port,
    Share,
    Version,
    empty_table,
    resolve_path,
)
from recall_engine.config.fusion import DEFAULT_FUSION
from recall_engine.config.plans import (
    Experiment,
    ExperimentTable,
    Plan,
    PlanTable,
    Variant,
    build_experiments,
    resolve_plan,
)
from recall_engine.runtime.catalog import COMPACT_BYTES, COMPACT_RECORDS
from recall_engine.sdk.params import (
    DERIVED,
    Describe,
    KeyError_,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    parse,
)

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_TOKEN_ENV",
    "AdminConfig",
    "ChannelConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "Experiment",
    "Plan",
    "OverloadConfig",
    "PluginsConfig",
    "RemoteArtifactsConfig",
    "ServerConfig",
    "TLSConfig",
    "TracingConfig",
    "Variant",
    "default_config",
    "load_config",
    "parse_config",
]

DEFAULT_TOKEN_ENV = "RECALL_ENGINE_ADMIN_TOKEN"
# Channel names appear in weights, metric labels and artifact folder names.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


# --------------------------------------------------------------------------- values


@dataclass(slots=True, frozen=True, kw_only=True)
class ServerConfig:
    """``[server]``: listening addresses, limits and process settings."""

    addr: Address = "127.0.0.1:50051"
    metrics_addr: OptionalAddress = "127.0.0.1:9464"  # "" in the file: no Prometheus endpoint
    # serve --processes N: process i also listens alone on addr's host at this port + i,
    # so clients can balance per call (0: only the shared addr);
    # docs/reports/2026-12-05-issue-14-speed-per-core.md, "One process per core by default"
    worker_port_base: Port = 0
    # how often a process applies what the other processes of serve --processes N did on
    # admin calls: catalogue updates, artifact and config reloads (0: never)
    catalog_sync_ms: NonNegativeInt = 1000
    # the catalogue's update log is compacted into a new snapshot once it holds this many
    # rows or bytes, so a restart replays a bounded log whatever the number of updates
    catalog_compact_records: PositiveInt = COMPACT_RECORDS
    catalog_compact_bytes: PositiveInt = COMPACT_BYTES
    request_timeout_ms: PositiveInt = 500
    max_k: PositiveInt = 1000
    max_history: NonNegativeInt = 1000
    max_exclude: NonNegativeInt = 10000
    max_batch: PositiveInt = 256
    # input caps: free text longer than this is cut before tokenising (the encoders keep
    # a few hundred tokens anyway); ids and categories over their caps are refused
    max_text_chars: PositiveInt = 8192
    max_id_chars: PositiveInt = 256
    max_categories: NonNegativeInt = 64
    grace_s: NonNegativeFloat = 5.0
    # SIGTERM: health NOT_SERVING for this long while calls are still answered, so load
    # balancers move traffic away before the listener closes (SIGINT skips it)
    drain_s: NonNegativeFloat = 5.0
    # AdminService on its own address (None, "" in the file: beside RecallService on addr)
    admin_addr: OptionalAddress = None
    # gRPC connection limits (0 turns the idle and age limits off)
    max_connection_idle_s: NonNegativeFloat = 300.0
    max_connection_age_s: NonNegativeFloat = 1800.0
    max_connections: PositiveInt = 1000
    max_concurrent_streams: PositiveInt = 100
    max_receive_bytes: Annotated[int, Ge(1024)] = 4 * 1024 * 1024
    allow_weight_override: bool = False
    log_level: LogLevel = "INFO"


@dataclass(slots=True, frozen=True, kw_only=True)
class AdminConfig:
    """``[admin]``: the admin token, resolved at load (``None``: admin calls refused).
    ``token = ""`` in the file reads the environment variable ``token_env``."""

    token: OptionalStr = field(default=None, repr=False)  # never in logs
    token_env: str = DEFAULT_TOKEN_ENV


@dataclass(slots=True, frozen=True, kw_only=True)
class TLSConfig:
    """``[tls]``: absolute paths, or ``None`` when unset (plaintext when no cert)."""

    cert: OptionalExistingFile = None
    key: OptionalExistingFile = None
    client_ca: OptionalExistingFile = None  # set: clients must present a certificate

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise KeyError_(missing, "cert and key must be set together")
        if self.client_ca is not None and self.cert is None:
            raise KeyError_("client_ca", "needs tls.cert and tls.key (server certificate)")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(slots=True, frozen=True, kw_only=True)
class ChannelConfig:
    """``[channels.<name>]``: one recall channel and how to load it. ``name`` is the
    table's name; ``plugin`` defaults to it and ``artifacts`` to
    ``<artifacts.root>/<name>``."""

    name: str = field(metadata=DERIVED)
    plugin: NonEmptyStr
    artifacts: ConfigPath
    enabled: bool = True
    required: bool = False
    timeout_ms: PositiveInt = 100
    k: PositiveInt = 200
    version: Version = None
    params: FrozenTable = field(default_factory=empty_table)  # checked by the plugin's Params


@dataclass(slots=True, frozen=True, kw_only=True)
class OverloadConfig:
    """``[overload]``: admission control and bulkheads (the engine's side is
    :class:`recall_engine.serving.admission.OverloadSettings`; its docstring says what
    each knob does). Zero means "sized from the machine" where noted."""

    # requests inside the engine at once; past it a request is shed at once with
    # RESOURCE_EXHAUSTED and a retry hint (0: 4 per CPU core)
    max_in_flight: NonNegativeInt = 0
    # the floor the bound adapts down to (0: 1)
    min_in_flight: NonNegativeInt = 0
    # the event-loop lag above which the bound shrinks (0: no lag signal)
    target_loop_lag_ms: NonNegativeFloat = 2.0
    # the bound shrinks while admitted requests take more than this many times a request
    # alone, grows while under half as much more (0: no latency signal; else > 1);
    # with target_loop_lag_ms = 0 too, the bound is fixed
    latency_tolerance: NonNegativeFloat = 2.0
    # calls in flight per channel, its bulkhead (0: max_in_flight); per channel below
    channel_max_in_flight: NonNegativeInt = 0
    channel_limits: Mapping[str, PositiveInt] = field(default_factory=dict)
    # the channel that answers every admitted request, with a reserve of its own
    # ("": none); fallback_max_in_flight 0: max_in_flight plus the channel bound
    fallback: str = "popular"
    fallback_max_in_flight: NonNegativeInt = 0
    # BatchRecall items in flight at once per batch (0: a quarter of max_in_flight)
    batch_parallelism: NonNegativeInt = 0
    retry_after_ms_min: PositiveInt = 1
    retry_after_ms_max: PositiveInt = 5000
    # while nearly every refused client the retry hints bring back is refused again (the
    # engine stays full), the hints schedule them at this share of the rate requests
    # finish, a retry budget (else at that rate); 1: always at the rate
    retry_share: Annotated[float, Interval(gt=0, le=1), Describe("a number > 0 and <= 1")] = 0.25
    # a Recall that finds the engine at its bound waits in line (oldest first) when the
    # line's expected wait, at the rate requests finish now, is under this many ms and
    # half its own deadline; past that it is shed with the retry hint (0: shed at once)
    queue_ms: NonNegativeFloat = 50.0
    # the interpreter's GIL switch interval while serving (0: Python's default, 5 ms)
    switch_interval_ms: NonNegativeFloat = 1.0
    # a request's channel calls that took under this many ms before (per channel and
    # kind of call: with text or not, scout or not), waiting under 2 ms of it off the
    # CPU (network, encoder batches), run one after another on one thread rather than
    # on a thread each: fewer hand-offs and less GIL contention (0: every call on its
    # own thread)
    chain_calls_under_ms: NonNegativeFloat = 10.0
    # threads that run those chains, in arrival order (more while some are stuck in a
    # hung call); under the GIL more only take turns (0: a thread per chain)
    chain_threads: NonNegativeInt = 1
    # while the host has two cores or more per request in flight, now and over the
    # last 50 ms (every serving process's requests counted), quick calls whose time is
    # mostly native work without the GIL (usearch, ONNX Runtime) run on a thread each
    # instead, when that is expected to take at most three quarters of the chain's
    # time: lower latency on an idle host, chains under load
    fan_out_when_idle: bool = True
    # check every channel answer (finite scores, matching lengths, unique string ids)
    check_output: bool = True

    def __post_init__(self) -> None:
        if 0 < self.latency_tolerance <= 1:
            raise KeyError_(
                "latency_tolerance", f"must be 0 (off) or > 1, got {self.latency_tolerance}"
            )


def _otlp_endpoint(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError(f"must be an http:// or https:// URL (HOST:PORT after it), got {value!r}")
    return value


#: An OTLP endpoint URL (plaintext for http://, TLS for https://), or "" for the default.
OtlpEndpoint = Annotated[
    OptionalStr, AfterValidator(_otlp_endpoint), Describe("an http:// or https:// URL")
]


@dataclass(slots=True, frozen=True, kw_only=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry traces, off unless ``exporter`` names one (needs the
    ``[tracing]`` extra; :mod:`recall_engine.observability.tracing`). Read at start-up:
    a change needs a restart."""

    # none: no tracing (nothing imported, nothing on the request path); otlp: OTLP over
    # gRPC to endpoint; console: JSON spans on stdout (debugging)
    exporter: Literal["none", "otlp", "console"] = "none"
    # otlp: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS); "": the exporter's
    # default (OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317)
    endpoint: OtlpEndpoint = None
    # share of the traces that start here that are kept; a caller's traceparent decides
    # for its own traces (ParentBased(TraceIdRatioBased(sampling_ratio)))
    sampling_ratio: Share = 1.0
    service_name: NonEmptyStr = "recall-engine"

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"


#: JetStream stream names: letters, digits, '_' and '-' (the buckets' names derive from it).
_STREAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _stream_name(value: str) -> str:
    if not _STREAM_RE.match(value):
        raise ValueError(f"must be 1-32 letters, digits, '_' or '-', got {value!r}")
    return value


@dataclass(slots=True, frozen=True, kw_only=True)
class ClusterConfig:
    """``[cluster]``: how replicas (and the processes of ``serve --processes N``) share
    online item updates, artifact reloads and config reloads. ``log = "file"``: files on
    this host (one host). ``log = "nats"``: a NATS JetStream stream that every replica
    follows (the ``cluster`` extra; docs/scale-out.md, "Replicas: the update stream")."""

    log: Literal["file", "nats"] = "file"
    servers: tuple[NonEmptyStr, ...] = ()  # nats://HOST:PORT URLs, any of the cluster's
    stream: Annotated[str, AfterValidator(_stream_name)] = "recall-engine"
    # the stream's (and snapshot buckets') copies, made when missing: 3 survives a
    # server's loss, and a write is then acknowledged once a quorum stored it
    replicas: Annotated[int, Interval(ge=1, le=5)] = 1
    # an admin write waits this long for JetStream's acknowledgement (retrying through
    # a leader election or a reconnect) before it fails UNAVAILABLE, applied nowhere
    publish_timeout_s: PositiveFloat = 5.0
    connect_timeout_s: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        if self.log == "nats" and not self.servers:
            raise KeyError_("servers", 'must list at least one nats:// URL when log = "nats"')


@dataclass(slots=True, frozen=True, kw_only=True)
class PluginsConfig:
    """``[plugins]``: ``blocked`` entry-point names are never imported; a channel that
    names one fails to load (start-up stops if it is required)."""

    blocked: tuple[NonEmptyStr, ...] = ()


@dataclass(slots=True, frozen=True, kw_only=True)
class RemoteArtifactsConfig:
    """``[artifacts]`` when ``root = "s3://bucket/prefix"``: bundles are pulled from the
    store into ``cache`` (which the channels then load, as a local root) and followed:
    ``poll_s`` (0: never; announcements only) is how often the ``current`` pointers are
    read (:mod:`recall_engine.runtime.object_store`). Read at start-up."""

    url: str
    cache: Path
    endpoint_url: str | None = None
    poll_s: float = 30.0


@dataclass(slots=True, frozen=True)
class Config:
    server: ServerConfig
    admin: AdminConfig
    tls: TLSConfig
    artifacts_root: Path
    channels: Mapping[str, ChannelConfig]  # declaration order = priority
    plan: Plan
    experiments: tuple[Experiment, ...]
    source: Path | None = None
    # [artifacts] root = "s3://...": the store; artifacts_root is then its local cache
    remote_artifacts: RemoteArtifactsConfig | None = None
    plugins: PluginsConfig = PluginsConfig()
    overload: OverloadConfig = OverloadConfig()
    tracing: TracingConfig = TracingConfig()
    cluster: ClusterConfig = ClusterConfig()

    def enabled_channels(self) -> tuple[str, ...]:
        """Names of the enabled channels, in priority order."""
        return tuple(name for name, ch in self.channels.items() if ch.enabled)


# --------------------------------------------------------------------------- the file


@dataclass(slots=True, frozen=True, kw_only=True)
class _ArtifactsTable:
    root: str = "artifacts"  # holds <channel>/<version>/ bundles; or s3://BUCKET/PREFIX
    # s3:// root only: the local folder verified bundles are kept in ("": under
    # $XDG_CACHE_HOME/recall-engine/artifacts/), the S3-compatible endpoint ("":
    # boto3's default, which reads AWS_ENDPOINT_URL) and how often the pointers are read
    cache: str = ""
    endpoint_url: OptionalStr = None
    poll_s: NonNegativeFloat = 30.0


@dataclass(slots=True, frozen=True, kw_only=True)
class _Document:
    """The whole file: its sections. Channel tables are checked one by one after this
    (their defaults depend on the table name and ``[artifacts] root``)."""

    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    tls: TLSConfig = TLSConfig()
    artifacts: _ArtifactsTable = _ArtifactsTable()
    plugins: PluginsConfig = PluginsConfig()
    overload: OverloadConfig = OverloadConfig()
    tracing: TracingConfig = TracingConfig()
    cluster: ClusterConfig = ClusterConfig()
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plan: PlanTable = PlanTable()
    experiments: tuple[ExperimentTable, ...] = ()


# --------------------------------------------------------------------------- entry points


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at ``path``; relative paths in it are resolved
    against its folder. ``environ`` (default ``os.environ``) supplies the admin token."""
    path = Path(path).expanduser().resolve()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(data, path.parent, source=path, environ=environ)


def parse_config(
    data: Mapping[str, Any],
    base_dir: Path,
    source: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already-parsed TOML document; see :func:`load_config`."""
    base_dir = Path(base_dir)
    doc = parse(_Document, data, context={"base_dir": base_dir}, error=ConfigError)
    environ = os.environ if environ is None else environ
    admin = doc.admin
    if admin.token is None and admin.token_env:
        admin = replace(admin, token=environ.get(admin.token_env) or None)
    remote = _remote_artifacts(doc.artifacts, base_dir)
    artifacts_root = remote.cache if remote else resolve_path(doc.artifacts.root, base_dir)
    channels = _channels(doc.channels, artifacts_root, base_dir)
    return Config(
        server=doc.server,
        admin=admin,
        tls=doc.tls,
        artifacts_root=artifacts_root,
        channels=MappingProxyType(channels),
        plan=resolve_plan(doc.plan, "plan", channels),
        experiments=build_experiments(doc.experiments, doc.plan, channels),
        source=source,
        remote_artifacts=remote,
        plugins=doc.plugins,
        overload=doc.overload,
        tracing=doc.tracing,
        cluster=doc.cluster,
    )


def _remote_artifacts(table: _ArtifactsTable, base_dir: Path) -> RemoteArtifactsConfig | None:
    """``[artifacts]`` with an ``s3://`` root, checked; None for a local folder."""
    from recall_engine.runtime.object_store import default_cache, is_s3_url, parse_s3_url

    if not is_s3_url(table.root):
        for key in ("cache", "endpoint_url"):
            if getattr(table, key):
                raise ConfigError(f"artifacts.{key}: only for an s3:// artifacts.root")
        return None
    try:
        location = parse_s3_url(table.root, "artifacts.root")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    endpoint = table.endpoint_url
    if endpoint is not None and not re.match(r"^https?://[^/\s]+/?$", endpoint):
        raise ConfigError(
            f"artifacts.endpoint_url: must be http://HOST[:PORT] or https://HOST[:PORT], "
            f"got {endpoint!r}"
        )
    cache = resolve_path(table.cache, base_dir) if table.cache else default_cache(location)
    return RemoteArtifactsConfig(
        url=location.url(), cache=cache, endpoint_url=endpoint, poll_s=table.poll_s
    )


DEFAULT_WEIGHTS = {"popular": 0.1, "cf": 1.0, "content": 0.25, "llm": 0.25}


def default_config(artifacts_root: Path | str) -> Config:
    """The built-in channels (popular required, cf/content/llm optional), RRF fusion, no
    experiments: what ``serve`` runs without a config file.

    Weights follow ``recall-engine tune-weights`` on MovieLens 1M
    (docs/reports/2026-11-23-evaluation-round-1.md, "Tuned weights"):
    cf carries the ranking, content and llm add what cf cannot see (new items, free
    text), and popular keeps a small weight so that it still answers (alone) for users
    with neither history nor text. ``artifacts_root`` may be an ``s3://`` URL."""
    data = {
        "artifacts": {"root": str(artifacts_root)},
        "channels": {
            "popular": {"required": True},
            "cf": {"required": False},
            "content": {"required": False},
            "llm": {"required": False},
        },
        "plan": {"fusion": DEFAULT_FUSION, "weights": dict(DEFAULT_WEIGHTS)},
    }
    return parse_config(data, Path("."))


# --------------------------------------------------------------------------- channels


def _channels(
    tables: Mapping[str, Mapping[str, Any]], artifacts_root: Path, base_dir: Path
) -> dict[str, ChannelConfig]:
    channels = {
        name: _channel(name, table, artifacts_root, base_dir) for name, table in tables.items()
    }
    if not any(ch.enabled for ch in channels.values()):
        raise ConfigError("channels: at least one channel must be enabled")
    return channels


def _channel(
    name: str, table: Mapping[str, Any], artifacts_root: Path, base_dir: Path
) -> ChannelConfig:
    path = f"channels.{name}"
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{path}: channel name must be letters, digits, '_' or '-' "
            f"(starting with a letter or '_'), got {name!r}"
        )
    if "name" in table:
        raise ConfigError(f"{path}.name: unknown key (the table's name is the channel's name)")
    # Defaults that depend on the table: the name, and the artifacts folder ("" = default).
    data = {"plugin": name, **table, "name": name}
    if str(data.get("artifacts", "")).startswith("s3://"):
        raise ConfigError(
            f"{path}.artifacts: an s3:// store is set once, as artifacts.root; a channel's "
            "own artifacts is a local folder"
        )
    if data.get("artifacts", "") == "":
        data["artifacts"] = str(artifacts_root / name)
    return parse(ChannelConfig, data, path, context={"base_dir": base_dir}, error=ConfigError)

"""Service configuration: one TOML file, parsed with :mod:`tomllib`, validated at start-up.

Every error is a :class:`ConfigError` whose message starts with the key path of the
offending value (``channels.cf.timeout_ms: must be a positive integer, got -1``), so an
operator can find it in the file. Unknown keys are errors at every level (typos must not
silently fall back to defaults) except inside ``[channels.<name>.params]``, which belongs
to the plugin. ``deploy/config.example.toml`` documents every key.

The parsed values are frozen dataclasses with read-only mappings: a config is shared by
every request thread and replaced as a whole on reload, never edited in place.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from recall_engine.serving.fusion import STRATEGIES, validate_params

__all__ = [
    "DEFAULT_TOKEN_ENV",
    "AdminConfig",
    "ChannelConfig",
    "Config",
    "ConfigError",
    "Experiment",
    "Plan",
    "ServerConfig",
    "TLSConfig",
    "Variant",
    "default_config",
    "load_config",
    "parse_config",
]

DEFAULT_TOKEN_ENV = "RECALL_ENGINE_ADMIN_TOKEN"
DEFAULT_FUSION = "rrf"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Channel names appear in weights, metric labels and artifact folder names.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_ADDR_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")
_SECTIONS = ("server", "admin", "tls", "artifacts", "channels", "plan", "experiments")
# Float sums of shares such as 0.45 + 0.45 + 0.1 land a hair above 1.
_SHARE_EPS = 1e-9


class ConfigError(ValueError):
    """The configuration is invalid; the message starts with the key path."""


# --------------------------------------------------------------------------- values


@dataclass(slots=True, frozen=True)
class ServerConfig:
    """``[server]``: listening addresses, limits and process settings."""

    addr: str = "127.0.0.1:50051"
    metrics_addr: str | None = "127.0.0.1:9464"  # None: no Prometheus endpoint
    workers: int = 8
    max_in_flight: int = 0
    # serve --processes N: process i also listens alone on addr's host at this port + i,
    # so clients can balance per call (0: only the shared addr); docs/performance.md.
    worker_port_base: int = 0
    # how often a process applies what the other processes of serve --processes N did on
    # admin calls: catalogue updates, artifact and config reloads (0: never)
    catalog_sync_ms: int = 1000
    request_timeout_ms: int = 500
    max_k: int = 1000
    max_history: int = 1000
    max_exclude: int = 10000
    max_batch: int = 256
    # input caps: free text longer than this is cut before tokenising (the encoders keep
    # a few hundred tokens anyway); ids and categories over their caps are refused
    max_text_chars: int = 8192
    max_id_chars: int = 256
    max_categories: int = 64
    grace_s: float = 5.0
    # SIGTERM: health NOT_SERVING for this long while calls are still answered, so load
    # balancers move traffic away before the listener closes (SIGINT skips it)
    drain_s: float = 5.0
    # AdminService on its own address (None: beside RecallService on addr)
    admin_addr: str | None = None
    # gRPC connection limits (0 turns the idle and age limits off)
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 1800.0
    max_connections: int = 1000
    max_concurrent_streams: int = 100
    max_receive_bytes: int = 4 * 1024 * 1024
    allow_weight_override: bool = False
    log_level: str = "INFO"


@dataclass(slots=True, frozen=True)
class AdminConfig:
    """``[admin]``: the admin token, resolved at load (``None``: admin calls refused)."""

    token: str | None = field(default=None, repr=False)  # never in logs
    token_env: str = DEFAULT_TOKEN_ENV


@dataclass(slots=True, frozen=True)
class TLSConfig:
    """``[tls]``: absolute paths, or ``None`` when unset (plaintext when no cert)."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None  # set: clients must present a certificate

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(slots=True, frozen=True)
class ChannelConfig:
    """``[channels.<name>]``: one recall channel and how to load it."""

    name: str
    plugin: str
    enabled: bool
    required: bool
    timeout_ms: int
    k: int
    artifacts: Path
    version: str | None
    params: Mapping[str, Any]


@dataclass(slots=True, frozen=True)
class Plan:
    """How one request is served: fusion strategy, weights and per-channel k.

    ``weights`` and ``channel_k`` hold every enabled channel, in channel priority order
    (weight 0.0 for channels the plan does not name, the channel's own ``k`` where the
    plan does not override it).
    """

    fusion: str
    weights: Mapping[str, float]
    channel_k: Mapping[str, int]
    fusion_params: Mapping[str, Any]

    def active_channels(self) -> tuple[str, ...]:
        """Channels with weight > 0, in channel priority order: the ones to call."""
        return tuple(name for name, w in self.weights.items() if w > 0)


@dataclass(slots=True, frozen=True)
class Variant:
    name: str
    traffic: float  # share of all users, 0..1
    plan: Plan


@dataclass(slots=True, frozen=True)
class Experiment:
    name: str
    salt: str
    enabled: bool
    variants: tuple[Variant, ...]


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

    def enabled_channels(self) -> tuple[str, ...]:
        """Names of the enabled channels, in priority order."""
        return tuple(name for name, ch in self.channels.items() if ch.enabled)


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
    data: dict[str, Any],
    base_dir: Path,
    source: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already-parsed TOML document; see :func:`load_config`."""
    base_dir = Path(base_dir)
    doc = _Table(data, "")
    # Unknown sections first: `[chanels.cf]` should say so, not "no channel enabled".
    doc.only(*_SECTIONS)
    server = _parse_server(doc.table("server"))
    admin = _parse_admin(doc.table("admin"), os.environ if environ is None else environ)
    tls = _parse_tls(doc.table("tls"), base_dir)
    art = doc.table("artifacts")
    artifacts_root = _path(art.get_str("root", "artifacts"), base_dir)
    art.done()
    channels = _parse_channels(doc.table("channels"), artifacts_root, base_dir)
    plan_raw = _read_plan(doc.table("plan"), channels)
    plan = _resolve_plan(plan_raw, "plan", channels)
    experiments = _parse_experiments(doc.array("experiments"), plan_raw, channels)
    doc.done()
    return Config(
        server=server,
        admin=admin,
        tls=tls,
        artifacts_root=artifacts_root,
        channels=MappingProxyType(channels),
        plan=plan,
        experiments=experiments,
        source=source,
    )


DEFAULT_WEIGHTS = {"popular": 0.1, "cf": 1.0, "content": 0.25, "llm": 0.25}


def default_config(artifacts_root: Path) -> Config:
    """The built-in channels (popular required, cf/content/llm optional), RRF fusion, no
    experiments: what ``serve`` runs without a config file.

    Weights follow ``recall-engine tune-weights`` on MovieLens 1M (docs/evaluation.md):
    cf carries the ranking, content and llm add what cf cannot see (new items, free
    text), and popular keeps a small weight so that it still answers (alone) for users
    with neither history nor text."""
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


# --------------------------------------------------------------------------- sections


def _parse_server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    metrics_addr = t.get_str("metrics_addr", d.metrics_addr or "")
    server = ServerConfig(
        addr=_addr(t.get_str("addr", d.addr), t.key("addr")),
        metrics_addr=_addr(metrics_addr, t.key("metrics_addr")) if metrics_addr else None,
        workers=t.get_int("workers", d.workers, minimum=1),
        max_in_flight=t.get_int("max_in_flight", d.max_in_flight, minimum=0),
        worker_port_base=_port(
            t.get_int("worker_port_base", d.worker_port_base, minimum=0), t.key("worker_port_base")
        ),
        catalog_sync_ms=t.get_int("catalog_sync_ms", d.catalog_sync_ms, minimum=0),
        request_timeout_ms=t.get_int("request_timeout_ms", d.request_timeout_ms, minimum=1),
        max_k=t.get_int("max_k", d.max_k, minimum=1),
        max_history=t.get_int("max_history", d.max_history, minimum=0),
        max_exclude=t.get_int("max_exclude", d.max_exclude, minimum=0),
        max_batch=t.get_int("max_batch", d.max_batch, minimum=1),
        max_text_chars=t.get_int("max_text_chars", d.max_text_chars, minimum=1),
        max_id_chars=t.get_int("max_id_chars", d.max_id_chars, minimum=1),
        max_categories=t.get_int("max_categories", d.max_categories, minimum=0),
        grace_s=t.get_float("grace_s", d.grace_s),
        drain_s=t.get_float("drain_s", d.drain_s),
        admin_addr=(
            _addr(t.get_str("admin_addr", ""), t.key("admin_addr"))
            if t.get_str("admin_addr", "")
            else None
        ),
        max_connection_idle_s=t.get_float("max_connection_idle_s", d.max_connection_idle_s),
        max_connection_age_s=t.get_float("max_connection_age_s", d.max_connection_age_s),
        max_connections=t.get_int("max_connections", d.max_connections, minimum=1),
        max_concurrent_streams=t.get_int(
            "max_concurrent_streams", d.max_concurrent_streams, minimum=1
        ),
        max_receive_bytes=t.get_int("max_receive_bytes", d.max_receive_bytes, minimum=1024),
        allow_weight_override=t.get_bool("allow_weight_override", d.allow_weight_override),
        log_level=_log_level(t.get_str("log_level", d.log_level), t.key("log_level")),
    )
    t.done()
    return server


def _parse_admin(t: _Table, environ: Mapping[str, str]) -> AdminConfig:
    token = t.get_str("token", "")
    token_env = t.get_str("token_env", DEFAULT_TOKEN_ENV)
    t.done()
    if not token and token_env:
        token = environ.get(token_env, "")
    return AdminConfig(token=token or None, token_env=token_env)


def _parse_tls(t: _Table, base_dir: Path) -> TLSConfig:
    paths: dict[str, Path | None] = {}
    for name in ("cert", "key", "client_ca"):
        value = t.get_str(name, "")
        paths[name] = _existing_file(value, base_dir, t.key(name)) if value else None
    t.done()
    if (paths["cert"] is None) != (paths["key"] is None):
        missing = "key" if paths["key"] is None else "cert"
        raise ConfigError(f"tls.{missing}: cert and key must be set together")
    if paths["client_ca"] is not None and paths["cert"] is None:
        raise ConfigError("tls.client_ca: needs tls.cert and tls.key (server certificate)")
    return TLSConfig(**paths)


def _parse_channels(t: _Table, artifacts_root: Path, base_dir: Path) -> dict[str, ChannelConfig]:
    channels: dict[str, ChannelConfig] = {}
    for name in t.names():
        channels[name] = _parse_channel(name, t.table(name), artifacts_root, base_dir)
    t.done()
    if not any(ch.enabled for ch in channels.values()):
        raise ConfigError("channels: at least one channel must be enabled")
    return channels


def _parse_channel(name: str, t: _Table, artifacts_root: Path, base_dir: Path) -> ChannelConfig:
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{t.path}: channel name must be letters, digits, '_' or '-' "
            f"(starting with a letter or '_'), got {name!r}"
        )
    artifacts = t.get_str("artifacts", "")
    version = t.get_str("version", "")
    if version and (version in (".", "..") or "/" in version or "\\" in version):
        raise ConfigError(f"{t.key('version')}: must be a plain folder name, got {version!r}")
    ch = ChannelConfig(
        name=name,
        plugin=_nonempty(t.get_str("plugin", name), t.key("plugin")),
        enabled=t.get_bool("enabled", True),
        required=t.get_bool("required", False),
        timeout_ms=t.get_int("timeout_ms", 100, minimum=1),
        k=t.get_int("k", 200, minimum=1),
        artifacts=_path(artifacts, base_dir) if artifacts else artifacts_root / name,
        version=version or None,
        params=_freeze(t.raw("params", {}, dict, "a table")),
    )
    t.done()
    return ch


# --------------------------------------------------------------------------- plans


@dataclass(slots=True, frozen=True)
class _RawPlan:
    """The keys one plan table gives, checked on their own; inheritance merges these."""

    fusion: str | None = None
    weights: Mapping[str, float] | None = None
    channel_k: Mapping[str, int] | None = None
    fusion_params: Mapping[str, Any] | None = None

    def inherit(self, base: _RawPlan) -> _RawPlan:
        # Changing the strategy without new params drops the base's params: they belong
        # to the base's strategy (rrf_k means nothing to weighted_sum).
        fusion_changed = self.fusion is not None and self.fusion != (base.fusion or DEFAULT_FUSION)
        base_params = None if fusion_changed else base.fusion_params
        return _RawPlan(
            fusion=self.fusion if self.fusion is not None else base.fusion,
            weights=self.weights if self.weights is not None else base.weights,
            channel_k=self.channel_k if self.channel_k is not None else base.channel_k,
            fusion_params=self.fusion_params if self.fusion_params is not None else base_params,
        )


def _read_plan(t: _Table, channels: Mapping[str, ChannelConfig]) -> _RawPlan:
    fusion = t.get_str("fusion", None)
    weights = t.table("weights", None)
    channel_k = t.table("channel_k", None)
    fusion_params = t.raw("fusion_params", None, dict, "a table")
    raw = _RawPlan(
        fusion=fusion,
        weights=None if weights is None else _read_weights(weights, channels),
        channel_k=None if channel_k is None else _read_channel_k(channel_k, channels),
        fusion_params=fusion_params,
    )
    t.done()
    return raw


def _read_weights(t: _Table, channels: Mapping[str, ChannelConfig]) -> dict[str, float]:
    out = {}
    for name in t.names():
        _check_channel_ref(name, t.key(name), channels)
        out[name] = t.get_float(name, 0.0)
    return out


def _read_channel_k(t: _Table, channels: Mapping[str, ChannelConfig]) -> dict[str, int]:
    out = {}
    for name in t.names():
        _check_channel_ref(name, t.key(name), channels)
        out[name] = t.get_int(name, 1, minimum=1)
    return out


def _check_channel_ref(name: str, key: str, channels: Mapping[str, ChannelConfig]) -> None:
    if name not in channels:
        known = ", ".join(sorted(n for n, ch in channels.items() if ch.enabled))
        raise ConfigError(f"{key}: unknown channel {name!r} (channels: {known})")
    if not channels[name].enabled:
        raise ConfigError(f"{key}: channel {name!r} is disabled (channels.{name}.enabled)")


def _resolve_plan(raw: _RawPlan, path: str, channels: Mapping[str, ChannelConfig]) -> Plan:
    fusion = raw.fusion if raw.fusion is not None else DEFAULT_FUSION
    if fusion not in STRATEGIES:
        known = ", ".join(sorted(STRATEGIES))
        raise ConfigError(f"{path}.fusion: unknown fusion strategy {fusion!r} (known: {known})")
    try:
        params = validate_params(fusion, dict(raw.fusion_params or {}))
    except ValueError as e:
        msg = str(e)
        sep = "." if msg.startswith("fusion_params") else ".fusion_params: "
        raise ConfigError(f"{path}{sep}{msg}") from None
    enabled = [name for name, ch in channels.items() if ch.enabled]
    given_w = raw.weights
    weights = {n: (1.0 if given_w is None else float(given_w.get(n, 0.0))) for n in enabled}
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"{path}.weights: no enabled channel has a weight > 0")
    given_k = raw.channel_k or {}
    channel_k = {n: int(given_k.get(n, channels[n].k)) for n in enabled}
    return Plan(
        fusion=fusion,
        weights=MappingProxyType(weights),
        channel_k=MappingProxyType(channel_k),
        fusion_params=_freeze(params),
    )


# --------------------------------------------------------------------------- experiments


def _parse_experiments(
    items: list[_Table], default: _RawPlan, channels: Mapping[str, ChannelConfig]
) -> tuple[Experiment, ...]:
    experiments: list[Experiment] = []
    seen: set[str] = set()
    for t in items:
        exp = _parse_experiment(t, default, channels)
        if exp.name in seen:
            raise ConfigError(f"{t.key('name')}: duplicate experiment name {exp.name!r}")
        seen.add(exp.name)
        experiments.append(exp)
    return tuple(experiments)


def _parse_experiment(
    t: _Table, default: _RawPlan, channels: Mapping[str, ChannelConfig]
) -> Experiment:
    name = _nonempty(t.get_str("name"), t.key("name"))
    salt = _nonempty(t.get_str("salt", name), t.key("salt"))
    enabled = t.get_bool("enabled", True)
    variants_path = t.key("variants")
    variants: list[Variant] = []
    for v in t.array("variants"):
        variant = _parse_variant(v, default, channels)
        if any(variant.name == other.name for other in variants):
            raise ConfigError(f"{v.key('name')}: duplicate variant name {variant.name!r}")
        variants.append(variant)
    t.done()
    if not variants:
        raise ConfigError(f"{variants_path}: an experiment needs at least one variant")
    total = math.fsum(v.traffic for v in variants)
    if total > 1 + _SHARE_EPS:
        raise ConfigError(f"{variants_path}: traffic shares sum to {total:.6g} > 1")
    return Experiment(name=name, salt=salt, enabled=enabled, variants=tuple(variants))


def _parse_variant(t: _Table, default: _RawPlan, channels: Mapping[str, ChannelConfig]) -> Variant:
    name = _nonempty(t.get_str("name"), t.key("name"))
    traffic = t.get_float("traffic", None)
    if traffic > 1:
        raise ConfigError(f"{t.key('traffic')}: must be between 0 and 1, got {traffic:g}")
    raw = _read_plan(t.table("plan"), channels).inherit(default)
    plan = _resolve_plan(raw, t.key("plan"), channels)
    t.done()
    return Variant(name=name, traffic=traffic, plan=plan)


# --------------------------------------------------------------------------- helpers

_MISSING: Any = object()


class _Table:
    """A TOML table being read: typed getters that name the key path in every error,
    and :meth:`done` to reject keys nobody asked for."""

    __slots__ = ("path", "_data", "_seen")

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path or '<root>'}: must be a table, got {_show(data)}")
        self.path = path
        self._data: dict[str, Any] = data
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def names(self) -> list[str]:
        return list(self._data)

    def raw(self, name: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        self._seen.add(name)
        if name not in self._data:
            if default is _MISSING:
                raise ConfigError(f"{self.key(name)}: required")
            return default
        value = self._data[name]
        # bool is an int subclass: `workers = true` must not read as 1.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise ConfigError(f"{self.key(name)}: must be {what}, got {_show(value)}")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.key(name)}: must be {what}, got {_show(value)}")
        return value

    def get_str(self, name: str, default: Any = _MISSING) -> Any:
        """A string; ``default`` when absent (required when no default is given)."""
        return self.raw(name, default, str, "a string")

    def get_bool(self, name: str, default: bool) -> bool:
        return bool(self.raw(name, default, bool, "true or false"))

    def get_int(self, name: str, default: int, *, minimum: int) -> int:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        value = self.raw(name, default, int, what)
        if value < minimum:
            raise ConfigError(f"{self.key(name)}: must be {what}, got {_show(value)}")
        return int(value)

    def get_float(self, name: str, default: float | None) -> float:
        """A finite number >= 0 (``default=None``: required)."""
        what = "finite and >= 0"
        value = self.raw(name, _MISSING if default is None else default, (int, float), what)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{self.key(name)}: must be {what}, got {_show(value)}")
        return float(value)

    def table(self, name: str, default: Any = _MISSING) -> Any:
        """The sub-table ``name``; an empty one when absent (or ``default`` if given)."""
        if name not in self._data and default is not _MISSING:
            self._seen.add(name)
            return default
        return _Table(self.raw(name, {}, dict, "a table"), self.key(name))

    def array(self, name: str) -> list[_Table]:
        items = self.raw(name, [], list, "an array of tables")
        return [_Table(item, f"{self.key(name)}[{i}]") for i, item in enumerate(items)]

    def only(self, *names: str) -> None:
        """Reject any key not in ``names`` now, before reading them."""
        unknown = [k for k in self._data if k not in names]
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")

    def done(self) -> None:
        unknown = [k for k in self._data if k not in self._seen]
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _nonempty(value: str, key: str) -> str:
    if not value:
        raise ConfigError(f"{key}: must not be empty")
    return value


def _addr(value: str, key: str) -> str:
    m = _ADDR_RE.match(value)
    if m is None or int(m["port"]) > 65535:
        raise ConfigError(f"{key}: must be HOST:PORT (port 0-65535), got {value!r}")
    return value


def _port(value: int, key: str) -> int:
    if value > 65535:
        raise ConfigError(f"{key}: must be a port number 0-65535, got {value}")
    return value


def _log_level(value: str, key: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{key}: must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _path(value: str, base_dir: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


def _existing_file(value: str, base_dir: Path, key: str) -> Path:
    p = _path(value, base_dir)
    if not p.is_file():
        raise ConfigError(f"{key}: file not found: {p}")
    return p


def _freeze(value: Any) -> Any:
    """Read-only deep copy: tables become MappingProxyType, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value

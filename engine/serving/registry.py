"""Channel plugin discovery and loading (entry-point group ``recall_engine.channels``).

Built-in channels are registered in ``pyproject.toml`` exactly like third-party ones,
so this module never special-cases them. Every error names the plugin.

Start-up in two steps: :func:`prepare` imports the plugin of every enabled channel
(never a blocked one: ``[plugins] blocked`` in the config) and checks each channel's
``[channels.<name>.params]`` against the plugin's declared ``Params``, before any
artifact is read; then :func:`instantiate` constructs, loads and warms each channel.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from recall_engine.config import ChannelConfig, Config, ConfigError
from recall_engine.observability.logs import get_logger
from recall_engine.sdk.channel import ENTRY_POINT_GROUP, Channel, ChannelContext
from recall_engine.sdk.params import check_declaration, parse

log = get_logger(__name__)

ChannelFactory = Callable[[ChannelContext], Channel]


class PluginError(RuntimeError):
    """A plugin could not be discovered, imported, validated or loaded."""


@dataclass(slots=True, frozen=True)
class PluginSpec:
    name: str
    value: str  # "module:attr"
    dist: str  # distribution that registered it


class Plugins(dict[str, PluginSpec]):
    """What :func:`discover` found, by entry-point name; ``blocked`` the names it was
    told to leave out (so that :func:`resolve` can say why one is missing)."""

    blocked: frozenset[str] = frozenset()


def discover(group: str = ENTRY_POINT_GROUP, *, blocked: Iterable[str] = ()) -> Plugins:
    """Every plugin registered in ``group``, by entry-point name.

    Two distributions registering the same name is an error (which one would win is
    install-order dependent). ``blocked`` names are dropped (never imported).
    """
    found = Plugins()
    found.blocked = frozenset(blocked)
    seen_eps: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in found.blocked:
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        if ep.name in found:
            if seen_eps[ep.name].value == ep.value:
                continue  # the same distribution seen twice on sys.path
            raise PluginError(
                f'plugin "{ep.name}": registered twice, by {found[ep.name].dist} '
                f"({found[ep.name].value}) and by {dist} ({ep.value}); uninstall one, or "
                f'block the name in the config: [plugins] blocked = ["{ep.name}"]'
            )
        found[ep.name] = PluginSpec(ep.name, ep.value, dist)
        seen_eps[ep.name] = ep
    return found


def load_factory(spec: PluginSpec, group: str = ENTRY_POINT_GROUP) -> ChannelFactory:
    """Import the plugin's entry point and check that it can make channels."""
    ep = EntryPoint(spec.name, spec.value, group)
    try:
        factory = ep.load()
    except Exception as e:  # noqa: BLE001 - any import failure is the plugin's
        raise PluginError(
            f'plugin "{spec.name}" ({spec.value}): failed to import: {type(e).__name__}: {e}'
        ) from e
    _validate_factory(spec, factory)
    return factory


def _validate_factory(spec: PluginSpec, factory: object) -> None:
    if inspect.isclass(factory):
        missing = [
            m
            for m in ("recall", "load", "warmup", "info", "close", "accepts")
            if not callable(getattr(factory, m, None))
        ]
        if missing:
            raise PluginError(
                f'plugin "{spec.name}" ({spec.value}): class {factory.__name__} '
                f"does not implement the channel contract (missing: "
                f"{', '.join(missing)}); subclass recall_engine.sdk.channel.Channel"
            )
        if inspect.isabstract(factory):
            raise PluginError(
                f'plugin "{spec.name}" ({spec.value}): class {factory.__name__} '
                "is abstract; implement recall(query, k)"
            )
    elif not callable(factory):
        raise PluginError(f'plugin "{spec.name}" ({spec.value}): entry point is not callable')
    declared = getattr(factory, "Params", None)
    if declared is not None:
        try:
            check_declaration(declared)
        except TypeError as e:
            raise PluginError(f'plugin "{spec.name}" ({spec.value}): {e}') from None


def params_class(factory: object) -> type | None:
    """The plugin's declared ``Params`` class (``None``: it checks its params itself)."""
    return getattr(factory, "Params", None)


@dataclass(slots=True, frozen=True)
class PreparedChannel:
    """An enabled channel ready to be constructed: its plugin imported, its params
    checked into the plugin's ``Params`` (``None`` when it declares none)."""

    config: ChannelConfig
    factory: ChannelFactory
    params: Any = None


def prepare(
    config: Config,
    names: Iterable[str] | None = None,
    *,
    blocked: Iterable[str] = (),
    skip_optional: bool = True,
    group: str = ENTRY_POINT_GROUP,
) -> tuple[dict[str, PreparedChannel], dict[str, str]]:
    """What start-up can check before any artifact is read, for the enabled channels
    among ``names`` (all when ``None``): import each one's plugin and check its params.

    Returns the prepared channels (in ``names`` order) and, by channel, why an optional
    one was skipped. A channel whose plugin is blocked (``config.plugins.blocked`` and
    ``blocked``), not installed or broken raises :class:`PluginError` when the channel
    is required (or ``skip_optional`` is false), else is logged and skipped. Params that
    do not fit the plugin's ``Params`` raise :class:`ConfigError` naming
    ``channels.<name>.params.<key>``, required channel or not: a typo in the file is
    the operator's to fix, not a plugin failure to ride out.
    """
    blocked = frozenset(config.plugins.blocked) | frozenset(blocked)
    plugins = discover(group, blocked=blocked)
    ready: dict[str, PreparedChannel] = {}
    failed: dict[str, str] = {}
    for name in config.channels if names is None else list(names):
        cc = config.channels[name]
        if not cc.enabled:
            continue
        try:
            factory = _factory(cc, plugins, blocked, group)
        except PluginError as e:
            if cc.required or not skip_optional:
                raise
            failed[name] = str(e)
            log.error("optional_channel_skipped", channel=name, error=str(e))
            continue
        ready[name] = PreparedChannel(cc, factory, check_params(cc, factory))
    return ready, failed


def check_plugin_params(config: Config) -> None:
    """Check the params of every enabled channel of a config just read (``serve``,
    ``build``, a reload) against its plugin's ``Params``; raises :class:`ConfigError`
    naming ``channels.<name>.params.<key>``. Plugins that are blocked, missing or broken
    are left to :func:`prepare`, which reports them by the channel's ``required``."""
    blocked = frozenset(config.plugins.blocked)
    try:
        plugins = discover(blocked=blocked)
    except PluginError:
        return
    for cc in config.channels.values():
        if not cc.enabled:
            continue
        try:
            factory = _factory(cc, plugins, blocked, ENTRY_POINT_GROUP)
        except PluginError:
            continue
        check_params(cc, factory)


def check_params(cc: ChannelConfig, factory: object) -> Any:
    """``cc.params`` checked into the plugin's ``Params`` (``None`` when it declares
    none). Raises :class:`ConfigError` naming ``channels.<name>.params.<key>``."""
    declared = params_class(factory)
    if declared is None:
        return None
    return parse(declared, cc.params, f"channels.{cc.name}.params", error=ConfigError)


def _factory(
    cc: ChannelConfig, plugins: Mapping[str, PluginSpec], blocked: frozenset[str], group: str
) -> ChannelFactory:
    if cc.plugin in blocked:
        raise PluginError(
            f'channel "{cc.name}" (plugin "{cc.plugin}"): the plugin is blocked by the '
            "config ([plugins] blocked), so not imported"
        )
    return load_factory(resolve(plugins, cc.plugin), group)


def instantiate(plugin: str, factory: ChannelFactory, ctx: ChannelContext) -> Channel:
    """Construct, load and warm up one channel; errors name the channel and plugin."""
    where = f'channel "{ctx.name}" (plugin "{plugin}")'
    try:
        channel = factory(ctx)
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"{where}: construction failed: {type(e).__name__}: {e}") from e
    for step in ("load", "warmup"):
        try:
            getattr(channel, step)()
        except Exception as e:  # noqa: BLE001
            _close_quietly(channel)
            raise PluginError(f"{where}: {step} failed: {type(e).__name__}: {e}") from e
    return channel


def _close_quietly(channel: Channel) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001
        log.exception("channel_close_failed", channel=channel.ctx.name)


def resolve(plugins: Mapping[str, PluginSpec], plugin: str) -> PluginSpec:
    if plugin in getattr(plugins, "blocked", ()):
        raise PluginError(
            f'plugin "{plugin}": blocked by the config ([plugins] blocked), so not imported'
        )
    try:
        return plugins[plugin]
    except KeyError:
        known = ", ".join(sorted(plugins)) or "none"
        raise PluginError(
            f'plugin "{plugin}": not installed (group {ENTRY_POINT_GROUP}; installed: {known})'
        ) from None

"""Channel plugin discovery and loading (entry-point group ``recall_engine.channels``).

Built-in channels are registered in ``pyproject.toml`` exactly like third-party ones,
so this module never special-cases them. Every error names the plugin.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from recall_engine.observability.logs import get_logger
from recall_engine.sdk.channel import ENTRY_POINT_GROUP, Channel, ChannelContext

log = get_logger(__name__)

ChannelFactory = Callable[[ChannelContext], Channel]


class PluginError(RuntimeError):
    """A plugin could not be discovered, imported, validated or loaded."""


@dataclass(slots=True, frozen=True)
class PluginSpec:
    name: str
    value: str  # "module:attr"
    dist: str  # distribution that registered it


def discover(
    group: str = ENTRY_POINT_GROUP, *, blocked: Iterable[str] = ()
) -> dict[str, PluginSpec]:
    """Every plugin registered in ``group``, by entry-point name.

    Two distributions registering the same name is an error (which one would win is
    install-order dependent). ``blocked`` names are dropped.
    """
    blocked = set(blocked)
    found: dict[str, PluginSpec] = {}
    seen_eps: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in blocked:
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        if ep.name in found:
            if seen_eps[ep.name].value == ep.value:
                continue  # the same distribution seen twice on sys.path
            raise PluginError(
                f'plugin "{ep.name}": registered twice, by {found[ep.name].dist} '
                f"({found[ep.name].value}) and by {dist} ({ep.value}); uninstall one or "
                "block it by name"
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
    try:
        return plugins[plugin]
    except KeyError:
        known = ", ".join(sorted(plugins)) or "none"
        raise PluginError(
            f'plugin "{plugin}": not installed (group {ENTRY_POINT_GROUP}; installed: {known})'
        ) from None

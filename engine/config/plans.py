"""Plans and experiments: the ``[plan]`` table, ``[[experiments]]`` with their variants,
and how a variant's plan inherits the keys it omits from the default plan.

The ``*Table`` classes are the tables as written (their fields are the keys a user may
write, checked by the schema); :func:`resolve_plan` and :func:`build_experiments` turn
them into the :class:`Plan` and :class:`Experiment` values the engine reads, checking
what needs the channels (weights of unknown or disabled channels, the traffic sum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from recall_engine.config.errors import ConfigError
from recall_engine.config.fields import Share, freeze
from recall_engine.config.fusion import (
    DEFAULT_COLD_MAX_AGE_DAYS,
    DEFAULT_COLD_QUOTA,
    DEFAULT_FUSION,
    FusionName,
    fusion_params,
)
from recall_engine.sdk.params import NonEmptyStr, NonNegativeFloat, PositiveInt

if TYPE_CHECKING:
    from recall_engine.config.schema import ChannelConfig

__all__ = [
    "Experiment",
    "ExperimentTable",
    "Plan",
    "PlanTable",
    "Variant",
    "VariantTable",
    "build_experiments",
    "resolve_plan",
]

# Float sums of shares such as 0.45 + 0.45 + 0.1 land a hair above 1.
_SHARE_EPS = 1e-9


# --------------------------------------------------------------------------- values


@dataclass(slots=True, frozen=True)
class Plan:
    """How one request is served: fusion strategy, weights and per-channel k.

    ``weights`` and ``channel_k`` hold every enabled channel, in channel priority order
    (weight 0.0 for channels the plan does not name, the channel's own ``k`` where the
    plan does not override it). ``cold_quota``: the share of the ``k`` fused slots kept
    for cold items (items younger than ``cold_max_age_days`` at build time, or with no
    interactions then), see :func:`recall_engine.serving.fusion.fuse`.
    ``learned_weights``: where the artifacts hold weights the build learned for the
    request's history length (and the strategy is the one they were learned for), they
    replace ``weights``; requests with text or no history, and bundles without them,
    get ``weights`` (:func:`recall_engine.serving.segment_weights.request_weights`).
    ``learned_cold``: where the bundle also holds a cold gate, those requests get its
    cold quota instead of ``cold_quota`` (slots for young histories only); ``cold_quota``
    0 still turns cold slots off for every request.
    """

    fusion: str
    weights: Mapping[str, float]
    channel_k: Mapping[str, int]
    fusion_params: Mapping[str, Any]
    cold_quota: float = DEFAULT_COLD_QUOTA
    cold_max_age_days: float = DEFAULT_COLD_MAX_AGE_DAYS
    # serve the weights the build learned per history segment (fusion.learned bundle,
    # recall_engine.offline.fusion_fit) where they apply; ``weights`` otherwise
    learned_weights: bool = True
    # serve the cold gate the build learned (which of those requests get cold slots, and
    # how many) where it applies; ``cold_quota`` for every request otherwise
    learned_cold: bool = True

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


# --------------------------------------------------------------------------- tables


@dataclass(slots=True, frozen=True, kw_only=True)
class PlanTable:
    """``[plan]`` or a variant's ``plan`` as written; an omitted key is ``None``."""

    fusion: FusionName | None = None
    weights: Mapping[str, NonNegativeFloat] | None = None
    channel_k: Mapping[str, PositiveInt] | None = None
    fusion_params: Mapping[str, Any] | None = None
    cold_quota: Share | None = None
    cold_max_age_days: NonNegativeFloat | None = None
    learned_weights: bool | None = None
    learned_cold: bool | None = None

    def inherit(self, base: PlanTable) -> PlanTable:
        """The keys this table omits taken from ``base``. Changing the strategy without
        new params drops the base's params: they belong to the base's strategy (rrf_k
        means nothing to weighted_sum). A variant that writes its own ``weights`` (or
        strategy) serves them as written unless it sets ``learned_weights = true``:
        weights set by hand for an A/B test are what the test compares. Likewise a
        variant that writes its own ``cold_quota`` serves it to every request unless it
        sets ``learned_cold = true``."""
        fusion_changed = self.fusion is not None and self.fusion != (base.fusion or DEFAULT_FUSION)
        by_hand = self.weights is not None or fusion_changed
        learned = self.learned_weights
        if learned is None:
            learned = False if by_hand else base.learned_weights
        learned_cold = self.learned_cold
        if learned_cold is None:
            learned_cold = False if self.cold_quota is not None else base.learned_cold
        return PlanTable(
            learned_weights=learned,
            learned_cold=learned_cold,
            fusion=self.fusion if self.fusion is not None else base.fusion,
            weights=self.weights if self.weights is not None else base.weights,
            channel_k=self.channel_k if self.channel_k is not None else base.channel_k,
            fusion_params=(
                self.fusion_params
                if self.fusion_params is not None
                else (None if fusion_changed else base.fusion_params)
            ),
            cold_quota=self.cold_quota if self.cold_quota is not None else base.cold_quota,
            cold_max_age_days=(
                self.cold_max_age_days
                if self.cold_max_age_days is not None
                else base.cold_max_age_days
            ),
        )


@dataclass(slots=True, frozen=True, kw_only=True)
class VariantTable:
    """``[[experiments.variants]]``."""

    name: NonEmptyStr
    traffic: Share
    plan: PlanTable = PlanTable()


@dataclass(slots=True, frozen=True, kw_only=True)
class ExperimentTable:
    """``[[experiments]]``; ``salt`` defaults to the name."""

    name: NonEmptyStr
    salt: NonEmptyStr | None = None
    enabled: bool = True
    variants: tuple[VariantTable, ...] = ()


# --------------------------------------------------------------------------- resolving


def resolve_plan(table: PlanTable, path: str, channels: Mapping[str, ChannelConfig]) -> Plan:
    """The plan ``table`` (at ``path``) over the enabled ``channels``."""
    _check_refs(table.weights or {}, f"{path}.weights", channels)
    _check_refs(table.channel_k or {}, f"{path}.channel_k", channels)
    fusion = table.fusion or DEFAULT_FUSION
    params = fusion_params(fusion, table.fusion_params or {}, f"{path}.fusion_params", ConfigError)
    enabled = [name for name, ch in channels.items() if ch.enabled]
    given_w = table.weights
    weights = {n: (1.0 if given_w is None else float(given_w.get(n, 0.0))) for n in enabled}
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"{path}.weights: no enabled channel has a weight > 0")
    given_k = table.channel_k or {}
    channel_k = {n: int(given_k.get(n, channels[n].k)) for n in enabled}
    return Plan(
        fusion=fusion,
        weights=MappingProxyType(weights),
        channel_k=MappingProxyType(channel_k),
        fusion_params=freeze(params),
        cold_quota=_or(table.cold_quota, DEFAULT_COLD_QUOTA),
        cold_max_age_days=_or(table.cold_max_age_days, DEFAULT_COLD_MAX_AGE_DAYS),
        learned_weights=True if table.learned_weights is None else table.learned_weights,
        learned_cold=True if table.learned_cold is None else table.learned_cold,
    )


def _or(value: float | None, default: float) -> float:
    return float(default if value is None else value)


def _check_refs(table: Mapping[str, Any], path: str, channels: Mapping[str, ChannelConfig]) -> None:
    for name in table:
        if name not in channels:
            known = ", ".join(sorted(n for n, ch in channels.items() if ch.enabled))
            raise ConfigError(f"{path}.{name}: unknown channel {name!r} (channels: {known})")
        if not channels[name].enabled:
            raise ConfigError(
                f"{path}.{name}: channel {name!r} is disabled (channels.{name}.enabled)"
            )


def build_experiments(
    tables: Sequence[ExperimentTable], default: PlanTable, channels: Mapping[str, ChannelConfig]
) -> tuple[Experiment, ...]:
    """The experiments, their variants' plans inheriting from ``default``."""
    experiments: list[Experiment] = []
    for i, table in enumerate(tables):
        path = f"experiments[{i}]"
        if any(e.name == table.name for e in experiments):
            raise ConfigError(f"{path}.name: duplicate experiment name {table.name!r}")
        experiments.append(_experiment(table, path, default, channels))
    return tuple(experiments)


def _experiment(
    table: ExperimentTable, path: str, default: PlanTable, channels: Mapping[str, ChannelConfig]
) -> Experiment:
    variants: list[Variant] = []
    for j, v in enumerate(table.variants):
        vpath = f"{path}.variants[{j}]"
        if any(other.name == v.name for other in variants):
            raise ConfigError(f"{vpath}.name: duplicate variant name {v.name!r}")
        plan = resolve_plan(v.plan.inherit(default), f"{vpath}.plan", channels)
        variants.append(Variant(name=v.name, traffic=v.traffic, plan=plan))
    if not variants:
        raise ConfigError(f"{path}.variants: an experiment needs at least one variant")
    total = math.fsum(v.traffic for v in variants)
    if total > 1 + _SHARE_EPS:
        raise ConfigError(f"{path}.variants: traffic shares sum to {total:.6g} > 1")
    return Experiment(
        name=table.name,
        salt=table.salt or table.name,
        enabled=table.enabled,
        variants=tuple(variants),
    )

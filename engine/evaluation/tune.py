"""``recall-engine tune-weights``: search a plan's fusion weights (and the fusion
parameter: RRF's ``rrf_k``, weighted sum's normalisation) on a validation split.

The validation split is carved from the training part of the evaluation split
(:func:`~recall_engine.evaluation.split.validation_split`), so the test part is never
looked at. The channels are built on the validation split's training rows and queried
once per user through the engine (:func:`~recall_engine.evaluation.runner.channel_lists`);
every candidate plan is then scored by fusing those lists offline with
:func:`~recall_engine.serving.fusion.fuse`, the engine's own function. The search is
coordinate ascent: for each channel in turn try every weight of a grid with the others
fixed and keep the best, then every value of the fusion parameter; repeat for a few
rounds or until nothing improves. Fusion ranks depend only on weight ratios, so weights
are reported scaled to a largest weight of 1.

Output: a TOML ``[[experiments.variants]]`` snippet to paste into an ``[[experiments]]``
block (``--out``), optionally a complete config with a 50/50 experiment between the
starting plan and the tuned one (``--write-config``), and the recall@K before and after
(on validation, and with ``--check-test`` on the test split, rebuilding the channels on
the full training part).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from recall_engine.config import Config, Plan
from recall_engine.evaluation.metrics import Truth, evaluate, ids_to_matrix
from recall_engine.evaluation.runner import (
    channel_lists,
    fuse_plan,
    item_universe,
    make_queries,
    serve_channels,
    user_set,
    variant_plans,
)
from recall_engine.evaluation.split import Split
from recall_engine.serving.fusion import RankedList, validate_params

__all__ = [
    "PARAM_GRID",
    "WEIGHT_GRID",
    "ChannelLists",
    "Search",
    "coordinate_ascent",
    "tune_candidates",
    "variant_toml",
]

WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
DEFAULT_KEEP = ("popular",)
PARAM_GRID: dict[str, dict[str, tuple[Any, ...]]] = {
    "rrf": {"rrf_k": (5, 10, 20, 30, 60, 100, 200)},
    "weighted_sum": {"normalization": ("minmax", "zscore", "dbsf", "l2")},
    "quota": {},
}


@dataclass(slots=True, frozen=True, eq=False)
class ChannelLists:
    """Per-channel lists for a set of users and their truth: all a search needs."""

    per_channel: Mapping[str, Sequence[RankedList]]
    truth: Truth
    index: Mapping[str, int]
    priority: tuple[str, ...]
    n_items: int

    def recall(self, plan: Plan, k: int) -> float:
        fused = [
            fuse_plan(plan, self.per_channel, n, k, self.priority) for n in range(len(self.truth))
        ]
        recs = ids_to_matrix(fused, self.index, k)
        return evaluate(recs, self.truth, [k], self.n_items)[k]["recall"]


@dataclass(slots=True, frozen=True)
class Search:
    """The result: the best plan, its recall and the starting plan's, and the trace."""

    start: Plan
    best: Plan
    start_recall: float
    best_recall: float
    evaluations: int
    trace: tuple[tuple[str, float], ...]


def with_weights(
    plan: Plan, weights: Mapping[str, float], params: Mapping[str, Any] | None = None
) -> Plan:
    return Plan(
        fusion=plan.fusion,
        weights=MappingProxyType(dict(weights)),
        channel_k=plan.channel_k,
        fusion_params=MappingProxyType(dict(plan.fusion_params if params is None else params)),
    )


def coordinate_ascent(
    cands: ChannelLists,
    start: Plan,
    k: int,
    *,
    grid: Sequence[float] = WEIGHT_GRID,
    rounds: int = 3,
    param_grid: Mapping[str, Sequence[Any]] | None = None,
    keep: Collection[str] = DEFAULT_KEEP,
    log=lambda msg: None,
) -> Search:
    """Maximise recall@k over the weights of the channels that have lists (others
    keep weight 0) and the strategy's parameter (see module doc).

    Channels in ``keep`` never get weight 0 (the grid's zero is skipped for them): the
    popularity fallback is the only channel that answers a user with no usable history,
    and a variant without it returns nothing to such users, which recall on users with
    a history can't see."""
    channels = [c for c in start.weights if c in cands.per_channel]
    if not channels:
        raise ValueError("no channel produced candidates: nothing to tune")
    positive = [v for v in grid if v > 0]
    if not positive:
        raise ValueError("the weight grid needs at least one value > 0")
    params = dict(validate_params(start.fusion, start.fusion_params))
    weights = {c: (start.weights[c] if c in channels else 0.0) for c in start.weights}
    if not any(weights[c] > 0 for c in channels):
        weights.update(dict.fromkeys(channels, 1.0))
    for c in channels:
        if c in keep and weights[c] <= 0:
            weights[c] = min(positive)
    param_grid = PARAM_GRID.get(start.fusion, {}) if param_grid is None else param_grid
    cache: dict[str, float] = {}

    def score(w: Mapping[str, float], p: Mapping[str, Any]) -> float:
        key = json.dumps([sorted(_scaled(w).items()), sorted(p.items())], default=str)
        if key not in cache:
            cache[key] = cands.recall(with_weights(start, w, p), k)
        return cache[key]

    start_recall = cands.recall(start, k)
    best = score(weights, params)
    trace = [("start", start_recall)]
    for r in range(rounds):
        improved = False
        for c in channels:
            for value in positive if c in keep else grid:
                trial = {**weights, c: value}
                if not any(v > 0 for v in trial.values()):
                    continue
                s = score(trial, params)
                if s > best + 1e-9:
                    best, weights, improved = s, trial, True
            trace.append((f"round {r + 1}: {c}={weights[c]:g}", best))
            log(f"round {r + 1}: {c} -> {weights[c]:g}  recall@{k} {best:.4f}")
        for name, values in param_grid.items():
            for value in values:
                trial_p = {**params, name: value}
                s = score(weights, trial_p)
                if s > best + 1e-9:
                    best, params, improved = s, trial_p, True
            trace.append((f"round {r + 1}: {name}={params[name]}", best))
            log(f"round {r + 1}: {name} -> {params[name]}  recall@{k} {best:.4f}")
        if not improved:
            break
    return Search(
        start,
        with_weights(start, _scaled(weights), params),
        start_recall,
        best,
        len(cache),
        tuple(trace),
    )


def _scaled(weights: Mapping[str, float]) -> dict[str, float]:
    top = max(weights.values())
    return {c: round(w / top, 4) if top > 0 else w for c, w in weights.items()}


# --------------------------------------------------------------------------- TOML


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def plan_toml(plan: Plan, prefix: str) -> str:
    """``[prefix]`` with fusion, weights, channel_k and fusion_params tables."""
    lines = [f"[{prefix}]", f"fusion = {_value(plan.fusion)}", "", f"[{prefix}.weights]"]
    lines += [f"{c} = {_value(float(w))}" for c, w in plan.weights.items()]
    lines += ["", f"[{prefix}.channel_k]"]
    lines += [f"{c} = {int(k)}" for c, k in plan.channel_k.items()]
    if plan.fusion_params:
        lines += ["", f"[{prefix}.fusion_params]"]
        lines += [f"{p} = {_value(v)}" for p, v in plan.fusion_params.items()]
    return "\n".join(lines) + "\n"


def variant_toml(plan: Plan, name: str = "tuned", traffic: float = 0.5, comment: str = "") -> str:
    """A ``[[experiments.variants]]`` block for ``plan``, to paste into an
    ``[[experiments]]`` block."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return (
        head + "[[experiments.variants]]\n"
        f"name = {_value(name)}\ntraffic = {_value(traffic)}\n\n"
        + plan_toml(plan, "experiments.variants.plan")
    )


def full_config(
    base: Config, base_text: str | None, start: Plan, tuned: Plan, name: str, experiment: str
) -> str:
    """``base_text`` (or a minimal config for ``base``) plus a 50/50 experiment between
    the starting plan (``control``) and the tuned one."""
    if base_text is None:
        lines = [f"[artifacts]\nroot = {_value(str(base.artifacts_root))}\n"]
        for c, cc in base.channels.items():
            lines.append(
                f"[channels.{c}]\nplugin = {_value(cc.plugin)}\n"
                f"enabled = {_value(cc.enabled)}\nrequired = {_value(cc.required)}\n"
            )
        lines.append(plan_toml(base.plan, "plan"))
        base_text = "\n".join(lines)
    block = (
        f"\n[[experiments]]\nname = {_value(experiment)}\nsalt = {_value(experiment)}\n\n"
        + variant_toml(start, "control", 0.5)
        + "\n"
        + variant_toml(tuned, name, 0.5)
    )
    return base_text.rstrip("\n") + "\n" + block


def tune_candidates(
    split: Split, items, config: Config, k: int, max_users: int | None, seed: int
) -> ChannelLists:
    plans = variant_plans(config)
    depth = max(k, *(c for p in plans.values() for c in p.channel_k.values()))
    item_ids = item_universe(items, split.train, split.test)
    us = user_set(split, item_ids, max_users, seed)
    if not us.users:
        raise ValueError("the split leaves no user with test items to tune on")
    with serve_channels(split.train, items, config, [k], seed=seed) as served:
        queries = make_queries(split.train, us, served.config.server.max_history)
        per_channel, _ = channel_lists(served, queries, depth)
        priority = tuple(served.config.channels)
    return ChannelLists(per_channel, us.truth, us.index, priority, len(item_ids))

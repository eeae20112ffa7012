"""One evaluation run: split, build the channels on the training part, query them the
way a ranking service would, run the baselines on the same split, compute every figure.

How the engine is queried (the choice the issue leaves open):

* Channels are built with :func:`recall_engine.offline.build.build_all` on the training rows
  only (the catalogue is complete: item metadata is not a leak) into a temporary
  artifacts folder, and served by a real :class:`~recall_engine.serving.engine.Engine`.
* **Each channel alone**: the engine is switched (``Engine.reload_config``, which keeps
  the loaded channels since their config is unchanged) to a plan that gives that
  channel weight 1 and the others 0, and every user is sent through ``Engine.recall``
  — the full request path: ``accepts``, the safety-net filter, fusion of one list (which
  keeps its order). The channel's raw scores come back through the response's
  provenance. Channel timeouts are lifted so a loaded machine can't drop lists.
* **Every variant** (the default plan and each experiment's variants): the per-channel
  lists are fused offline with :func:`recall_engine.serving.fusion.fuse` exactly as
  ``Engine.recall`` does (the variant's strategy, weights, params and per-channel k,
  channel priority = config order). That costs one request per user and channel
  instead of one per user, channel and variant. A parity check sends a sample of users
  through ``Engine.recall`` under each variant's plan and counts identical lists; the
  report carries the count.

* **Learned fusion weights**: the temporary build ends, as ``recall-engine build``
  does, with the fusion fit on a carve of the training rows
  (:mod:`recall_engine.offline.fusion_fit`), so ``fused:default`` is the default plan as
  shipped: each user's weights are what
  :func:`~recall_engine.serving.segment_weights.request_weights` gives their request.
  ``fused:default/configured`` is the same plan without them (the configured weights),
  and the result's ``channels.fusion_fit`` holds the learned weights and what the fit
  saw.

* **Cold quota**: a plan with ``cold_quota`` > 0 is fused once per K (a ranking
  service asking for K candidates gets ``floor(cold_quota * K)`` cold slots at the end
  of its list), each K's figures from its own list; ``cold_quotas`` adds copies of the
  default plan with those quotas, for the trade-off table. Cold items are what the
  build's catalogue says (``Catalog.cold_mask``): items without training rows. Those
  copies give every request their quota (``learned_cold = false``, as a variant that
  writes its own quota); where the fit learned which requests get cold slots (a cold
  gate), ``fused:default/flat-cold`` is the default plan so, for the gate's trade-off.

Besides the overall figures: slices (cold users, cold items), segments (history length,
item-popularity decile, cold / warm items: :mod:`~recall_engine.evaluation.segments`)
and paired bootstrap intervals of every fused variant against every channel and
baseline (:mod:`~recall_engine.evaluation.significance`), all on the same users.

A request carries the user's training interactions as history (oldest first, newest
last, with timestamps; at most ``server.max_history`` of the newest), excludes every
training item of the user, and asks for ``k = max(ks)``.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from recall_engine.config import Config, Plan, default_config
from recall_engine.evaluation import baselines as bl
from recall_engine.evaluation.metrics import (
    METRICS,
    Truth,
    evaluate,
    ids_to_matrix,
    novelty_table,
    per_user,
)
from recall_engine.evaluation.segments import (
    Segment,
    history_segments,
    item_segments,
    popularity_segments,
    score_segments,
    train_popularity,
)
from recall_engine.evaluation.significance import DEFAULT_RESAMPLES, paired_bootstrap
from recall_engine.evaluation.split import Split, held_out_items, make_split, validation_split
from recall_engine.observability.logs import get_logger
from recall_engine.offline.build import BuiltChannel, build_all
from recall_engine.offline.data.interactions import Interactions
from recall_engine.offline.fusion_fit import (
    BUNDLE,
    config_for_artifacts,
    fit_fusion,
    recall_all,
)
from recall_engine.offline.fusion_fit import channel_lists as offline_channel_lists
from recall_engine.runtime.artifacts import ArtifactStore
from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.types import ColdItems, ItemRecord, Query
from recall_engine.serving.admission import OverloadSettings
from recall_engine.serving.engine import Engine
from recall_engine.serving.fusion import ColdMask, RankedList, fuse
from recall_engine.serving.segment_weights import RequestFusion, plan_scouts, request_weights

log = get_logger(__name__)

__all__ = [
    "COLD_USER_MAX",
    "DEFAULT_BASELINES",
    "DEFAULT_KS",
    "EvalOptions",
    "Served",
    "UserSet",
    "channel_lists",
    "cold_variants",
    "eval_config",
    "fuse_plan",
    "run_evaluation",
    "serve_channels",
    "user_set",
    "variant_plans",
]

DEFAULT_KS = (20, 50, 100, 200)
DEFAULT_BASELINES = ("popularity", "itemknn", "ease", "als")
COLD_USER_MAX = 5  # "cold user": at most this many training interactions
NO_TIMEOUT_MS = 600_000
NO_BUILD_STEP = "plugin has no build step"  # build.build_all's reason: may still load
PARITY_USERS = 100
CONCURRENCY = 64


@dataclass(slots=True, frozen=True)
class EvalOptions:
    """What ``recall-engine eval`` asks for (see ``cli.py`` for the flags)."""

    ks: tuple[int, ...] = DEFAULT_KS
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    split: str = "temporal"
    test_fraction: float = 0.2
    cut_time: int | None = None
    cut_quantile: float = 0.8
    config: Config | None = None  # None: default_config (every built-in channel)
    max_users: int | None = None
    seed: int = 0
    parity_users: int = PARITY_USERS
    workdir: Path | None = None  # None: a temporary folder, removed afterwards
    bootstrap: int = DEFAULT_RESAMPLES  # paired bootstrap resamples (0: none)
    cold_quotas: tuple[float, ...] = ()  # default plan copies with these cold quotas
    progress: Callable[[str], None] = field(default=lambda msg: None)


# --------------------------------------------------------------------------- users


@dataclass(slots=True, frozen=True, eq=False)
class UserSet:
    """The evaluated users of one split: ids, training histories (row indices into
    ``split.train``, oldest first) and test items as a :class:`Truth` over ``index``."""

    users: list[str]
    histories: list[np.ndarray]
    truth: Truth
    item_ids: list[str]  # item index → id (catalogue first)
    index: dict[str, int]


def item_universe(items: Sequence[ItemRecord], *logs: Interactions) -> list[str]:
    """Catalogue ids in catalogue order, then ids only the logs know (sorted)."""
    ids = [it.item_id for it in items]
    known = set(ids)
    extra = sorted({i for data in logs for i in data.items().tolist()} - known)
    return ids + extra


def user_set(
    split: Split, item_ids: list[str], max_users: int | None = None, seed: int = 0
) -> UserSet:
    """Users with at least one test item to find (a seeded sample of ``max_users``)."""
    sets = held_out_items(split)
    users = sorted(sets)
    if max_users is not None and len(users) > max_users:
        rng = np.random.default_rng(seed)
        users = sorted(rng.choice(np.asarray(users), max_users, replace=False).tolist())
    index = {i: n for n, i in enumerate(item_ids)}
    by_user = split.train.by_user()
    empty = np.zeros(0, dtype=np.intp)
    return UserSet(
        users=users,
        histories=[by_user.get(u, empty) for u in users],
        truth=Truth.from_sets([{index[i] for i in sets[u]} for u in users]),
        item_ids=item_ids,
        index=index,
    )


def make_queries(train: Interactions, us: UserSet, max_history: int) -> list[Query]:
    """One request per user as a ranking service would send it (see module doc)."""
    items, stamps = train.item_ids, train.timestamps
    events = train.events
    out = []
    for user, rows in zip(us.users, us.histories, strict=True):
        recent = rows[-max_history:] if max_history else rows[:0]
        out.append(
            Query(
                user_id=user,
                history=tuple(items[recent].tolist()),
                events=() if events is None else tuple(events[recent].tolist()),
                timestamps=tuple(stamps[recent].tolist()) if train.has_timestamps else (),
                exclude=frozenset(items[rows].tolist()),
            )
        )
    return out


# --------------------------------------------------------------------------- channels


def eval_config(config: Config, artifacts_root: Path, ks: Sequence[int]) -> Config:
    """``config`` re-pointed at ``artifacts_root`` (every channel's current version),
    with timeouts lifted and ``max_k`` large enough for ``ks``."""
    return config_for_artifacts(config, artifacts_root, max(ks))


def variant_plans(config: Config) -> dict[str, Plan]:
    """``default`` plus ``<experiment>/<variant>`` for every variant in the config."""
    plans = {"default": config.plan}
    for exp in config.experiments:
        for v in exp.variants:
            plans[f"{exp.name}/{v.name}"] = v.plan
    return plans


def cold_variants(plan: Plan, quotas: Sequence[float]) -> dict[str, Plan]:
    """``default+cold<q>``: ``plan`` with ``cold_quota`` q for every request (no learned
    cold gate: as a variant that writes its own quota), for every q other than the
    plan's own."""
    return {
        f"default+cold{q:g}": replace(plan, cold_quota=float(q), learned_cold=False)
        for q in quotas
        if float(q) != plan.cold_quota
    }


@dataclass(slots=True, eq=False)
class Served:
    """Channels built on one training log and loaded by an engine."""

    engine: Engine
    config: Config
    built: list[BuiltChannel]
    loaded: list[str]
    build_seconds: float
    load_seconds: float


@contextlib.contextmanager
def serve_channels(
    train: Interactions,
    items: Sequence[ItemRecord],
    config: Config,
    ks: Sequence[int],
    *,
    workdir: Path | None = None,
    seed: int = 0,
) -> Iterator[Served]:
    """Build every enabled channel on ``train`` into ``workdir/artifacts`` (a temporary
    folder by default) and load them in an engine; close it on exit."""
    with contextlib.ExitStack() as stack:
        root = (
            Path(workdir)
            if workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recall-eval-")))
        )
        artifacts = (root / "artifacts").resolve()
        cfg = eval_config(config, artifacts, ks)
        t0 = time.perf_counter()
        built = [
            _build_one(train, items, artifacts, cfg, name, seed) for name in cfg.enabled_channels()
        ]
        # A channel whose build failed has nothing to load: leave it out up front.
        cfg = _disable(
            cfg, [b.channel for b in built if b.version is None and b.skipped != NO_BUILD_STEP]
        )
        if cfg.plan.learned_weights:  # what `recall-engine build` does after the channels
            t_fit = time.perf_counter()
            version = fit_fusion(train, items, artifacts, cfg, seed=seed)
            skipped = "" if version else "nothing fitted (see the fusion_fit_skipped log line)"
            built.append(BuiltChannel(BUNDLE, version, time.perf_counter() - t_fit, None, skipped))
        t1 = time.perf_counter()
        # offline: every query must be answered, none shed; the gate in _recall_all
        # bounds what is in flight instead
        overload = OverloadSettings(
            max_in_flight=CONCURRENCY, target_loop_lag_ms=None, latency_tolerance=None
        )
        engine = Engine(cfg, catalog=Catalog.load(artifacts / "catalog"), overload=overload)
        engine.load()
        stack.callback(engine.close)
        loaded = [c.name for c, _ in engine.channel_infos()]
        # ...and so is one that failed to load, so that plan switches don't retry it.
        cfg = _disable(cfg, [n for n in cfg.enabled_channels() if n not in loaded])
        yield Served(engine, cfg, built, loaded, t1 - t0, time.perf_counter() - t1)


def _build_one(
    train: Interactions,
    items: Sequence[ItemRecord],
    artifacts: Path,
    cfg: Config,
    name: str,
    seed: int,
) -> BuiltChannel:
    """Build one channel; an optional channel's failure of any kind is recorded (the
    evaluation goes on with the others), a required one's is raised."""
    t0 = time.perf_counter()
    try:
        return build_all(train, items, artifacts, cfg, channels=[name], seed=seed)[0]
    except Exception as e:
        if cfg.channels[name].required:
            raise
        log.error("eval_build_failed", channel=name, error=f"{type(e).__name__}: {e}")
        return BuiltChannel(
            name, None, time.perf_counter() - t0, None, f"build failed: {type(e).__name__}: {e}"
        )


def _disable(cfg: Config, names: Sequence[str]) -> Config:
    if not names:
        return cfg
    channels = {
        n: replace(cc, enabled=False) if n in names else cc for n, cc in cfg.channels.items()
    }
    return replace(cfg, channels=MappingProxyType(channels))


def _plan_config(config: Config, plan: Plan) -> Config:
    return replace(config, plan=plan, experiments=())


def channel_lists(
    served: Served, queries: Sequence[Query], k: int
) -> tuple[dict[str, list[RankedList]], dict[str, dict[str, int]]]:
    """Every loaded channel's list (ids and raw scores) per query, through the engine,
    and per channel the count of each request status (OK, SKIPPED, ERROR...)."""
    return offline_channel_lists(served.engine, served.config, served.loaded, queries, k)


def fuse_plan(
    plan: Plan,
    per_channel: Mapping[str, Sequence[RankedList]],
    n: int,
    k: int,
    priority: Sequence[str],
    cold: ColdMask | None = None,
    weights: Mapping[str, float] | None = None,
    answers: Mapping[str, RankedList] | None = None,
    cold_quota: float | None = None,
) -> list[str]:
    """Query ``n``'s fused list under ``plan``, as ``Engine.recall`` computes it
    (``cold``: the catalogue's cold items, for the cold quota; ``weights`` and
    ``cold_quota``: the query's own,
    :func:`~recall_engine.serving.segment_weights.request_weights`, default the plan's;
    ``answers``: channels whose list is this one instead, the scouts')."""
    weights = plan.weights if weights is None else weights
    lists = []
    for name, w in weights.items():
        if w <= 0 or name not in per_channel:
            continue
        if answers and name in answers:
            lst = answers[name]
        else:
            lst = per_channel[name][n]
            depth = plan.channel_k.get(name, len(lst.item_ids))
            lst = RankedList(name, lst.item_ids[:depth], lst.scores[:depth])
        if len(lst.item_ids):
            lists.append(lst)
    fused = fuse(
        plan.fusion,
        lists,
        dict(weights),
        k,
        priority=priority,
        params=plan.fusion_params,
        cold_quota=plan.cold_quota if cold_quota is None else cold_quota,
        cold=cold,
    )
    return fused.item_ids


class _Scouts:
    """The scouts' answers, as ``Engine.recall`` asks them (serving/segment_weights.py):
    per channel and query, its new items among its top ``channel_k``, read through
    ``Engine.scout`` when first needed."""

    def __init__(self, engine: Engine, queries: Sequence[Query], plan: Plan) -> None:
        self.engine, self.queries, self.plan = engine, queries, plan
        self.cold: ColdItems | None = (
            engine.catalog.cold_items(plan.cold_max_age_days) if plan.cold_quota > 0 else None
        )
        self.answers: dict[tuple[str, int], RankedList] = {}

    def lists(
        self, n: int, k: int, request: RequestFusion
    ) -> tuple[dict[str, float], dict[str, RankedList] | None, float]:
        """Query ``n``'s weights, scout lists and cold quota at ``k``, for
        :func:`fuse_plan`."""
        count = None if self.cold is None else len(self.cold)
        weights, asked = plan_scouts(
            self.plan, request.weights, request.scouts, k, count, request.cold_quota
        )
        return weights, {s: self._answer(s, n) for s in asked} or None, request.cold_quota

    def _answer(self, name: str, n: int) -> RankedList:
        found = self.answers.get((name, n))
        if found is None:
            assert self.cold is not None
            k_c = self.plan.channel_k[name]
            got = self.engine.scout(name, self.queries[n], k_c, self.cold)
            found = RankedList(name, list(got.item_ids), np.asarray(got.scores), got.ranks)
            self.answers[(name, n)] = found
        return found


def parity_check(
    served: Served,
    plans: Mapping[str, Plan],
    queries: Sequence[Query],
    fused: Mapping[str, list[list[str]]],
    k: int,
    sample: int,
    seed: int,
) -> dict[str, dict[str, int]]:
    """Send ``sample`` users through ``Engine.recall`` under each plan and count the
    lists identical to the offline fusion."""
    if not queries or sample <= 0:
        return {}
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(queries), min(sample, len(queries)), replace=False).tolist())
    out = {}
    try:
        for name, plan in plans.items():
            served.engine.reload_config(_plan_config(served.config, plan))
            results = recall_all(served.engine, [queries[i] for i in picked], k)
            same = sum(
                res.fused.item_ids == fused[name][i] for res, i in zip(results, picked, strict=True)
            )
            out[name] = {"users": len(picked), "identical": int(same)}
    finally:
        served.engine.reload_config(served.config)
    return out


# --------------------------------------------------------------------------- baselines


def run_baselines(
    names: Sequence[str],
    split: Split,
    us: UserSet,
    k: int,
    main_k: int,
    seed: int,
    max_users: int | None,
    progress: Callable[[str], None],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Fit every baseline on ``split.train``; recommendations for ``us`` and, per
    baseline, its parameters and timings (EASE's λ tuned on the validation split)."""
    users_all = sorted(set(split.train.users().tolist()) | set(us.users))
    uidx = {u: n for n, u in enumerate(users_all)}
    x = bl.interaction_matrix(split.train, uidx, us.index)
    hist = x[np.asarray([uidx[u] for u in us.users], dtype=np.int64)]
    recs: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in names:
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if name == "ease":
            lam, grid = _tune_ease(split, us, main_k, seed, max_users)
            model: bl.Baseline = bl.EASE(lam)
            extra = {
                "lambda_grid_recall": {str(g): round(r, 5) for g, r in grid.items()},
                "tuned_on": f"validation split, recall@{main_k}",
            }
        elif name == "als":
            model = bl.ALS(seed=seed)
        else:
            model = bl.make_baseline(name)
        model.fit(x)
        t1 = time.perf_counter()
        recs[name] = model.recommend(hist, k)
        t2 = time.perf_counter()
        info[name] = {
            "params": model.params(),
            **extra,
            "fit_seconds": round(t1 - t0, 2),
            "recommend_seconds": round(t2 - t1, 2),
        }
        progress(f"baseline {name}: {t2 - t0:.1f} s")
    return recs, info


def _tune_ease(
    split: Split, us: UserSet, k: int, seed: int, max_users: int | None
) -> tuple[float, dict[float, float]]:
    val = validation_split(split)
    vus = user_set(val, us.item_ids, max_users, seed)
    if not vus.users:
        return bl.EASE().lam, {}
    users_all = sorted(set(val.train.users().tolist()) | set(vus.users))
    uidx = {u: n for n, u in enumerate(users_all)}
    x = bl.interaction_matrix(val.train, uidx, vus.index)
    hist = x[np.asarray([uidx[u] for u in vus.users], dtype=np.int64)]
    return bl.tune_ease(x, hist, vus.truth, k)


# --------------------------------------------------------------------------- the run


def _slices(split: Split, us: UserSet) -> dict[str, tuple[np.ndarray, Truth]]:
    """Cold users (≤ COLD_USER_MAX training rows) and cold items (test items that no
    training row has: the truth restricted to them, users with at least one)."""
    n_train = np.asarray([len(h) for h in us.histories], dtype=np.int64)
    cold_users = np.flatnonzero(n_train <= COLD_USER_MAX)
    seen = {us.index[i] for i in split.train.items().tolist() if i in us.index}
    sizes = us.truth.sizes
    rows, sets = [], []
    for u in range(len(us.users)):
        items = us.truth.items[us.truth.offsets[u] : us.truth.offsets[u] + sizes[u]]
        cold = [i for i in items.tolist() if i not in seen]
        if cold:
            rows.append(u)
            sets.append(cold)
    return {
        "cold_users": (cold_users, us.truth.rows(cold_users)),
        "cold_items": (np.asarray(rows, dtype=np.int64), Truth.from_sets(sets)),
    }


#: One system's top lists: a ``(users, kmax)`` matrix of item indices, or for a plan
#: with a cold quota one such matrix per K (the list a request for K items gets).
RecsEntry = np.ndarray | dict[int, np.ndarray]
Recs = dict[str, tuple[str, RecsEntry]]  # system -> (kind, lists)


def _at(m: RecsEntry, k: int) -> np.ndarray:
    return m[k] if isinstance(m, dict) else m


def _take(m: RecsEntry, rows: np.ndarray) -> RecsEntry:
    return {k: v[rows] for k, v in m.items()} if isinstance(m, dict) else m[rows]


def _evaluate(
    m: RecsEntry, truth: Truth, ks: Sequence[int], n_catalog: int, selfinfo: np.ndarray
) -> dict[int, dict[str, float]]:
    if not isinstance(m, dict):
        return evaluate(m, truth, ks, n_catalog, selfinfo)
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        out.update(evaluate(m[k], truth, [k], n_catalog, selfinfo))
    return out


def run_evaluation(
    interactions: Interactions, items: Sequence[ItemRecord], options: EvalOptions
) -> dict[str, Any]:
    """The whole run; returns the JSON-ready result that ``report.py`` renders."""
    started = time.perf_counter()
    ks = tuple(sorted(set(options.ks)))
    main_k = 100 if 100 in ks else ks[-1]
    config = options.config or default_config(Path("artifacts"))
    split = make_split(
        interactions,
        options.split,  # type: ignore[arg-type]
        test_fraction=options.test_fraction,
        cut_time=options.cut_time,
        quantile=options.cut_quantile,
        seed=options.seed,
    )
    us = user_set(split, item_universe(items, interactions), options.max_users, options.seed)
    options.progress(
        f"split {split.kind}: {len(split.train)} train / {len(split.test)} test "
        f"rows, {len(us.users)} users evaluated"
    )
    timings: dict[str, float] = {"split_seconds": round(time.perf_counter() - started, 2)}
    recs, systems, channels = _evaluate_engine(split, items, config, us, ks, options, timings)
    t0 = time.perf_counter()
    base_recs, base_info = run_baselines(
        options.baselines,
        split,
        us,
        ks[-1],
        main_k,
        options.seed,
        options.max_users,
        options.progress,
    )
    timings["baselines_seconds"] = round(time.perf_counter() - t0, 2)
    for name, m in base_recs.items():
        recs[name] = ("baseline", m)
        systems[name] = {"kind": "baseline", **base_info[name]}
    t0 = time.perf_counter()
    overall, slices = _score(recs, systems, split, us, ks)
    popularity = _popularity(split, us)
    segments = score_segments(recs, _segments(us, popularity), ks)
    timings["metrics_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    comparisons = compare(recs, us.truth, main_k, options.bootstrap, options.seed)
    timings["bootstrap_seconds"] = round(time.perf_counter() - t0, 2)
    timings["total_seconds"] = round(time.perf_counter() - started, 2)
    return {
        "protocol": {
            "split": split.describe(),
            "ks": list(ks),
            "main_k": main_k,
            "evaluated_users": len(us.users),
            "test_items": int(len(us.truth.items)),
            "catalog_items": len(us.item_ids),
            "max_users": options.max_users,
            "seed": options.seed,
            "relevance": "binary: every interaction counts (ratings as implicit feedback)",
            "exclude": "every training item of the user",
            "cold_user_max_train_interactions": COLD_USER_MAX,
        },
        "channels": channels,
        "systems": overall,
        "slices": slices,
        "segments": segments,
        "comparisons": comparisons,
        "cold_quota": cold_tradeoff(overall, segments, main_k),
        "timings": timings,
        "machine": machine(),
        "metrics": list(METRICS),
    }


def _evaluate_engine(
    split: Split,
    items: Sequence[ItemRecord],
    config: Config,
    us: UserSet,
    ks: tuple[int, ...],
    options: EvalOptions,
    timings: dict[str, float],
) -> tuple[Recs, dict[str, dict[str, Any]], dict[str, Any]]:
    """Build and serve the channels; every channel's and variant's top ``max(ks)``."""
    kmax = ks[-1]
    plans = variant_plans(config)
    plans.update(cold_variants(config.plan, options.cold_quotas))
    depth = max(kmax, *(k for p in plans.values() for k in p.channel_k.values()))
    recs: Recs = {}
    systems: dict[str, dict[str, Any]] = {}
    with serve_channels(
        split.train, items, config, ks, workdir=options.workdir, seed=options.seed
    ) as served:
        learned = served.engine.learned_weights
        if learned is not None and config.plan.learned_weights:
            # what the learned weights add: the default plan without them
            plans["default/configured"] = replace(config.plan, learned_weights=False)
            if learned.cold is not None and config.plan.cold_quota > 0:
                # what the learned cold gate adds: the plan's quota for every request
                plans["default/flat-cold"] = replace(config.plan, learned_cold=False)
        timings["build_seconds"] = round(served.build_seconds, 2)
        timings["load_seconds"] = round(served.load_seconds, 2)
        options.progress(
            "built: "
            + ", ".join(
                f"{b.channel} ({b.seconds:.0f} s)" if b.version else f"{b.channel} skipped"
                for b in served.built
            )
        )
        queries = make_queries(split.train, us, served.config.server.max_history)
        t0 = time.perf_counter()
        per_channel, statuses = channel_lists(served, queries, depth)
        timings["channel_query_seconds"] = round(time.perf_counter() - t0, 2)
        options.progress(
            f"queried {len(served.loaded)} channels in {timings['channel_query_seconds']} s"
        )
        for name, lists in per_channel.items():
            recs[name] = ("channel", ids_to_matrix([lst.item_ids for lst in lists], us.index, kmax))
            systems[name] = {"kind": "channel", "statuses": statuses[name]}
        t0 = time.perf_counter()
        priority = tuple(served.config.channels)
        catalog = served.engine.catalog
        fused: dict[str, list[list[str]]] = {}
        for name, plan in plans.items():
            cold = functools.partial(catalog.cold_mask, max_age_days=plan.cold_max_age_days)
            # with a cold quota the list for K is not the top K of the list for kmax
            per_k = ks if plan.cold_quota > 0 else (kmax,)
            fallback = served.engine.overload.fallback
            ages = catalog.item_ages_days
            requests = [request_weights(plan, learned, q, fallback, ages) for q in queries]
            scouts = _Scouts(served.engine, queries, plan)
            by_k = {
                k: [
                    fuse_plan(plan, per_channel, n, k, priority, cold, *scouts.lists(n, k, r))
                    for n, r in enumerate(requests)
                ]
                for k in per_k
            }
            fused[name] = by_k[kmax]
            mats = {k: ids_to_matrix(v, us.index, kmax) for k, v in by_k.items()}
            recs[f"fused:{name}"] = ("variant", mats if plan.cold_quota > 0 else mats[kmax])
            systems[f"fused:{name}"] = {"kind": "variant", "plan": _plan_json(plan)}
        timings["fusion_seconds"] = round(time.perf_counter() - t0, 2)
        parity = parity_check(
            served, plans, queries, fused, kmax, options.parity_users, options.seed
        )
        fit = _fusion_fit(served)
    built = [
        {
            "channel": b.channel,
            "version": b.version,
            "seconds": round(b.seconds, 2),
            "items": b.item_count,
            "skipped": b.skipped,
        }
        for b in served.built
    ]
    return (
        recs,
        systems,
        {
            "built": built,
            "loaded": list(served.loaded),
            "engine_parity": parity,
            "fusion_fit": fit,
        },
    )


def _fusion_fit(served: Served) -> dict[str, Any] | None:
    """The learned weights the engine serves and how the build fitted them (the
    bundle's manifest), or None when it has none."""
    learned = served.engine.learned_weights
    if learned is None:
        return None
    bundle = ArtifactStore(served.config.artifacts_root).open(BUNDLE, learned.version)
    return {
        "version": learned.version,
        "segments": {s.name: dict(s.weights) for s in learned.segments},
        "cold": learned.cold.as_json() if learned.cold is not None else None,
        "validation": bundle.manifest.get("validation"),
    }


def _score(
    recs: Recs, systems: dict[str, dict[str, Any]], split: Split, us: UserSet, ks: Sequence[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every metric of every system, overall and per slice."""
    train_u = np.unique(split.train.user_ids, return_inverse=True)[1]
    train_i = _train_item_codes(split, us)
    known = train_i >= 0
    selfinfo = novelty_table(train_u[known], train_i[known], len(us.item_ids))
    n_catalog = len(us.item_ids)
    slices = _slices(split, us)
    overall: dict[str, Any] = {}
    by_slice: dict[str, Any] = {
        s: {"users": len(rows), "test_items": int(len(truth.items)), "systems": {}}
        for s, (rows, truth) in slices.items()
    }
    for name, (kind, m) in recs.items():
        overall[name] = {
            **systems[name],
            "metrics": _metrics_json(_evaluate(m, us.truth, ks, n_catalog, selfinfo)),
        }
        for s, (rows, truth) in slices.items():
            if len(rows):
                by_slice[s]["systems"][name] = {
                    "kind": kind,
                    "metrics": _metrics_json(
                        _evaluate(_take(m, rows), truth, ks, n_catalog, selfinfo)
                    ),
                }
    return overall, by_slice


def _train_item_codes(split: Split, us: UserSet) -> np.ndarray:
    return np.fromiter(
        (us.index.get(i, -1) for i in split.train.item_ids.tolist()),
        dtype=np.int64,
        count=len(split.train),
    )


def _popularity(split: Split, us: UserSet) -> np.ndarray:
    """Distinct training users per item index."""
    train_u = np.unique(split.train.user_ids, return_inverse=True)[1]
    return train_popularity(train_u, _train_item_codes(split, us), len(us.item_ids))


def _segments(us: UserSet, popularity: np.ndarray) -> list[Segment]:
    lengths = np.asarray([len(h) for h in us.histories], dtype=np.int64)
    return [
        *history_segments(lengths, us.truth),
        *popularity_segments(popularity, us.truth),
        *item_segments(popularity, us.truth),
    ]


def compare(recs: Recs, truth: Truth, k: int, resamples: int, seed: int) -> dict[str, Any]:
    """Paired bootstrap of every fused variant against every channel and baseline (and
    against ``fused:default``), on recall and NDCG at ``k`` (per-user resampling,
    seeded). ``best_baseline`` is the baseline with the highest recall@k here: a label
    for the report, not a choice anything is tuned by."""
    if resamples <= 0 or len(truth) == 0:
        return {}
    scores = {name: per_user(_at(m, k), truth, k) for name, (_, m) in recs.items()}
    kinds = {name: kind for name, (kind, _) in recs.items()}
    baselines = [n for n, kd in kinds.items() if kd == "baseline"]
    best = max(baselines, key=lambda n: float(scores[n]["recall"].mean()), default=None)
    rows = []
    default = "fused:default" if "fused:default" in kinds else None
    for system in (n for n, kd in kinds.items() if kd == "variant"):
        others = [n for n, kd in kinds.items() if kd in ("channel", "baseline")]
        if default and system != default:
            others.append(default)  # what a variant (a cold quota) changes
        for ref in others:
            for metric in ("recall", "ndcg"):
                rows.append(
                    {
                        "system": system,
                        "reference": ref,
                        "reference_kind": kinds[ref],
                        "metric": f"{metric}@{k}",
                        **paired_bootstrap(
                            scores[system][metric],
                            scores[ref][metric],
                            resamples=resamples,
                            seed=seed,
                        ),
                    }
                )
    return {"k": k, "best_baseline": best, "resamples": resamples, "seed": seed, "rows": rows}


def cold_tradeoff(
    overall: Mapping[str, Any], segments: Mapping[str, Any], k: int
) -> dict[str, Any]:
    """Per fused variant and content-based channel: recall@k overall, on cold test items
    and on warm ones, and the change against ``fused:default``."""
    items = segments.get("items", {})
    ref = "fused:default"

    def recall(seg: str, name: str) -> float | None:
        s = items.get(seg, {}).get("systems", {}).get(name)
        return None if s is None else s["metrics"][str(k)]["recall"]

    rows = []
    for name, s in overall.items():
        if s["kind"] == "baseline":
            continue
        rows.append(
            {
                "system": name,
                "kind": s["kind"],
                "cold_quota": s.get("plan", {}).get("cold_quota"),
                "recall": s["metrics"][str(k)]["recall"],
                "cold_recall": recall("cold", name),
                "warm_recall": recall("warm", name),
            }
        )
    base = next((r for r in rows if r["system"] == ref), None)
    for r in rows:
        for key in ("recall", "warm_recall"):
            b, v = (base or {}).get(key), r[key]
            r[f"{key}_change"] = None if not b or v is None else round(v / b - 1.0, 6)
    return {
        "k": k,
        "reference": ref if base else None,
        "cold_users": items.get("cold", {}).get("users", 0),
        "cold_test_items": items.get("cold", {}).get("test_items", 0),
        "rows": rows,
    }


def _metrics_json(m: Mapping[int, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    return {
        str(k): {name: (None if np.isnan(v) else round(float(v), 6)) for name, v in row.items()}
        for k, row in m.items()
    }


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "fusion": plan.fusion,
        "weights": dict(plan.weights),
        "channel_k": dict(plan.channel_k),
        "fusion_params": dict(plan.fusion_params),
        "cold_quota": plan.cold_quota,
        "cold_max_age_days": plan.cold_max_age_days,
    }


def machine() -> dict[str, Any]:
    """Where the run happened, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus_usable": bl._cpus(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }

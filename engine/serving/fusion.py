"""Fusion: merge several channels' ranked candidate lists into one list.

Pure functions (numpy + stdlib), picked by name from :data:`STRATEGIES`
(DESIGN.md, decision 4):

``rrf``
    Weighted reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009). The
    default. Param ``rrf_k`` (positive number, default 60).
``weighted_sum``
    Weighted sum of per-channel normalised scores. Param ``normalization``: ``minmax``
    (default), ``zscore``, ``dbsf`` or ``l2``.
``quota``
    Quota / round-robin merge: each channel fills a share of ``k`` proportional to its
    weight. No params.

Rules every strategy follows:

* Only channels with a weight > 0 take part. A channel whose weight is 0, or that
  ``weights`` does not name, is ignored entirely: it adds no candidate, no score and no
  provenance, and its list is not even validated.
* Candidates are deduplicated by item id; :attr:`Fused.provenance` keeps the rank and raw
  score of *every* taking-part channel that returned a fused candidate.
* Ties break deterministically: fused score desc, then the best (lowest) rank any channel
  gave the item, then channel priority (the item's most preferred channel: index in
  ``priority``, channels not in it after, then by name), then item id asc. Scores are
  compared as the float32 values returned in :attr:`Fused.scores`, so the list is sorted
  exactly by what the caller sees (float64 noise below float32 precision is a tie).
* The result does not depend on the order of ``lists`` (they are processed in channel
  priority order), never shares memory with the inputs, and inputs are never mutated.

Cold quota (``[plan] cold_quota``, :func:`_reserve_cold`), after any strategy: up to
``floor(cold_quota * k)`` of the ``k`` slots are kept for *cold* items (no interactions
when the catalogue was built, or younger than ``cold_max_age_days``: ``cold`` says which).
Recall-tuned weights rank what cf knows above anything only content or llm can find, so
without it a new item never reaches the list (docs/reports/2026-11-23-evaluation-round-1.md,
"Findings"). It is a cap, not a
boost: cold items already in the top ``k`` count towards it, the others are taken in
the strategy's own order from what the taking-part channels returned, and each one
replaces the lowest-placed non-cold item at the end of the list. With no cold item
returned, or ``cold_quota`` 0, the list is exactly the strategy's.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from recall_engine.config.fusion import FUSION_PARAMS, NORMALIZATIONS, fusion_params
from recall_engine.observability import tracing

__all__ = [
    "STRATEGIES",
    "ColdMask",
    "Fused",
    "FusionFn",
    "RankedList",
    "checked_ranks",
    "cold_slots",
    "fuse",
    "validate_params",
]


@dataclass(slots=True, frozen=True)
class RankedList:
    """One channel's answer as fusion sees it.

    ``item_ids`` best first, no duplicates; ``scores`` the channel's raw scores, parallel
    to ``item_ids``, non-increasing, larger is better. A candidate's rank is its 1-based
    position in ``item_ids``, or ``ranks`` when given: the positions the items hold in a
    longer ranking this list was filtered from (a scout's new items,
    serving/segment_weights.py), strictly increasing, each at least its position here.
    Scores are used as given (never re-sorted).
    """

    channel: str
    item_ids: Sequence[str]
    scores: Sequence[float] | np.ndarray
    ranks: Sequence[int] | np.ndarray | None = None


@dataclass(slots=True, frozen=True)
class Fused:
    """The merged list.

    ``item_ids``: at most ``k``, best first. ``scores``: float32 fused scores,
    non-increasing (their scale depends on the strategy). ``provenance``: for every
    channel with weight > 0 that returned at least one fused candidate,
    ``channel -> (candidate_index, rank, raw_score)``: parallel lists, one entry per such
    candidate in the channel's rank order; ``candidate_index`` indexes ``item_ids``,
    ``rank`` is the channel's 1-based rank and ``raw_score`` its own score.
    """

    item_ids: list[str]
    scores: np.ndarray
    provenance: dict[str, tuple[list[int], list[int], list[float]]]


@dataclass(slots=True, frozen=True)
class _Pool:
    """The taking-part lists mapped onto one deduplicated set of candidates."""

    ids: list[str]  # union of item ids, first seen in channel order
    channels: tuple[str, ...]  # channels with weight > 0, in channel order (priority, name)
    weights: np.ndarray  # float64, per channel
    cand: tuple[np.ndarray, ...]  # per channel: union index of each list position
    scores: tuple[np.ndarray, ...]  # per channel: raw scores, float64
    best_rank: np.ndarray  # per union item: lowest 1-based rank any channel gave it
    best_channel: np.ndarray  # per union item: first channel (in channel order) with it
    # The same lists flattened in channel order (one NumPy call for all channels
    # instead of one per channel): union index, 1-based rank, channel number, raw score.
    flat_cand: np.ndarray
    flat_rank: np.ndarray
    flat_channel: np.ndarray
    flat_scores: np.ndarray


#: A strategy: ``(pool, k, checked params) -> (union indices best first, float32 scores)``.
FusionFn = Callable[[_Pool, int, Mapping[str, Any]], tuple[np.ndarray, np.ndarray]]
#: ``cold(item_ids)``: per id whether it is a cold item, or None when nothing is known.
ColdMask = Callable[[Sequence[str]], "np.ndarray | None"]


# --------------------------------------------------------------------------- rrf


def _rrf(pool: _Pool, k: int, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted reciprocal rank fusion (Cormack, Clarke & Büttcher, "Reciprocal Rank
    Fusion outperforms Condorcet and individual Rank Learning Methods", SIGIR 2009).

    ``score(d) = sum_c w_c / (rrf_k + rank_c(d))`` over the channels that returned ``d``
    (rank 1-based); ``rrf_k = 60`` as in the paper. Raw scores are ignored.
    """
    rrf_k = float(params["rrf_k"])
    # bincount adds each item's terms in channel order, as a per-channel loop would.
    terms = pool.weights[pool.flat_channel] / (rrf_k + pool.flat_rank)
    fused = np.bincount(pool.flat_cand, weights=terms, minlength=len(pool.ids))
    return _order_by_score(pool, fused, k)


# --------------------------------------------------------------------------- weighted sum
# Each normaliser gets a non-empty float64 array already divided by its largest absolute
# value (all four are invariant to that, and it keeps max - min, sums of squares and
# std free of overflow). A degenerate list, where the formula would divide by zero
# (min-max/z-score/DBSF: all scores equal, including a single item; L2: all zero), says
# nothing about which of its items is better: every item gets 1.0, as a list's best
# item does under min-max, so such a channel still adds its full weight and never NaN.


def _minmax(s: np.ndarray) -> np.ndarray:
    """Min-max: ``(s - min) / (max - min)``, in [0, 1] (Fox & Shaw, CombSUM, TREC-2 1993;
    Lee, SIGIR 1997)."""
    lo, hi = s.min(), s.max()
    if hi == lo:
        return np.ones_like(s)
    return (s - lo) / (hi - lo)


def _zscore(s: np.ndarray) -> np.ndarray:
    """Z-score: ``(s - mean) / std`` (population std); may be negative, so a channel can
    rank an item it returned below one it did not (Montague & Aslam, CIKM 2001)."""
    if s.max() == s.min():
        return np.ones_like(s)
    return (s - s.mean()) / s.std()


def _dbsf(s: np.ndarray) -> np.ndarray:
    """Distribution-based score fusion (Mazzeschi 2023, as in Qdrant): min-max over
    ``mean ± 3 std`` (population std), i.e. ``(s - (mean - 3 std)) / (6 std)``, clipped
    to [0, 1] so an outlier beyond three sigma saturates instead of dominating."""
    if s.max() == s.min():
        return np.ones_like(s)
    mean, std = s.mean(), s.std()
    return np.clip((s - (mean - 3.0 * std)) / (6.0 * std), 0.0, 1.0)


def _l2(s: np.ndarray) -> np.ndarray:
    """L2: ``s / ||s||_2`` (keeps sign and ratios; all-equal non-zero scores are fine)."""
    norm = math.sqrt(float(np.dot(s, s)))
    if norm == 0.0:
        return np.ones_like(s)
    return s / norm


_NORMALIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "minmax": _minmax,
    "zscore": _zscore,
    "dbsf": _dbsf,
    "l2": _l2,
}


def _weighted_sum(pool: _Pool, k: int, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of normalised scores, CombSUM with weights (Fox & Shaw 1993):
    ``score(d) = sum_c w_c * norm_c(s_c(d))`` over the channels that returned ``d``;
    a channel that did not return ``d`` adds 0. ``norm_c`` is fitted on channel ``c``'s
    own list (see ``_minmax``, ``_zscore``, ``_dbsf``, ``_l2``)."""
    normalize = _NORMALIZERS[params["normalization"]]
    fused = np.zeros(len(pool.ids))
    for w, cand, raw in zip(pool.weights, pool.cand, pool.scores, strict=True):
        if len(raw) == 0:
            continue
        scale = float(np.abs(raw).max())
        fused[cand] += w * normalize(raw / scale if scale > 0 else raw)
    return _order_by_score(pool, fused, k)


# --------------------------------------------------------------------------- quota


def _largest_remainder(weights: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` slots in proportion to ``weights`` by largest remainders (Hamilton's
    method); equal remainders go to the earlier entry."""
    rel = weights / weights.max()  # keeps the sum finite for huge weights
    share = k * rel / rel.sum()
    seats = np.floor(share).astype(np.int64)
    extra = min(max(k - int(seats.sum()), 0), len(seats))
    seats[np.argsort(seats - share, kind="stable")[:extra]] += 1
    return seats


def _quota(pool: _Pool, k: int, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Quota / round-robin merge.

    Channels are taken in weight order (weight desc, then channel priority). Each gets
    ``q_c`` of the ``k`` slots in proportion to its weight, by largest remainders. Turns
    interleave in proportion to the quotas: channel ``c``'s ``j``-th turn comes at
    ``(j + 1/2) / q_c`` (Sainte-Laguë order; with equal weights this is plain round-robin
    in weight order), and at each turn the channel takes its best not-yet-taken item. A
    channel that runs out leaves its slots empty; they are then backfilled at the end of
    the list from the other channels in weight order, each giving its remaining items
    best first. Raw scores are ignored.

    The fused score is set by output position: ``(k - position) / k``, 1.0 for the first
    item, strictly decreasing, so the score tie-breaks never apply.
    """
    n_ch = len(pool.channels)
    by_weight = sorted(range(n_ch), key=lambda c: (-pool.weights[c], c))
    quotas = _largest_remainder(pool.weights[by_weight], k)
    cands = [pool.cand[c].tolist() for c in by_weight]
    # A channel cannot take more turns than it has items; later turns would only be skipped.
    turns = [min(int(q), len(cl)) for q, cl in zip(quotas, cands, strict=True)]
    who = np.repeat(np.arange(n_ch), turns)
    j = np.arange(len(who)) - np.repeat(np.cumsum(turns) - turns, turns)
    when = (j + 0.5) / np.repeat(np.maximum(quotas, 1), turns)
    taken = bytearray(len(pool.ids))
    heads = [0] * n_ch
    picked: list[int] = []

    def take(c: int) -> bool:
        cl, h = cands[c], heads[c]
        while h < len(cl) and taken[cl[h]]:
            h += 1
        heads[c] = h + 1
        if h >= len(cl):
            return False
        taken[cl[h]] = 1
        picked.append(cl[h])
        return True

    for c in who[np.lexsort((who, when))].tolist():
        take(c)
    for c in range(n_ch):
        while len(picked) < k and take(c):
            pass
    order = np.asarray(picked[:k], dtype=np.intp)
    scores = ((k - np.arange(len(order))) / k).astype(np.float32)
    return order, scores


# --------------------------------------------------------------------------- registry

STRATEGIES: dict[str, FusionFn] = {
    "rrf": _rrf,
    "weighted_sum": _weighted_sum,
    "quota": _quota,
}


# The config owns what a plan may say (strategy names, each one's params and their
# checks: recall_engine.config.fusion); this module implements exactly those.
assert set(STRATEGIES) == set(FUSION_PARAMS)
assert set(_NORMALIZERS) == set(NORMALIZATIONS)


def validate_params(strategy: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` for ``strategy`` and return them with defaults filled in.

    Raises ``ValueError`` naming the offending key (``fusion_params.<key>: ...``) for an
    unknown key or a bad value, or naming the strategy when it is unknown.
    """
    if strategy not in FUSION_PARAMS:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"fusion: unknown strategy {strategy!r} (known: {known})")
    try:
        # the type too: True == 1 and 1.0 == 1 share a hash, but only 1 is an rrf_k
        key = (strategy, tuple(sorted((k, type(v), v) for k, v in params.items())))
        hash(key)
    except TypeError:  # an unhashable value: checked below, and rejected
        return fusion_params(strategy, params, "fusion_params", ValueError)
    return dict(_checked(key))


@functools.lru_cache(maxsize=256)
def _checked(key: tuple[str, tuple[tuple[str, type, Any], ...]]) -> dict[str, Any]:
    # fuse() checks the plan's params on every request; a plan has few distinct ones.
    strategy, items = key
    params = {k: v for k, _, v in items}
    return fusion_params(strategy, params, "fusion_params", ValueError)


# --------------------------------------------------------------------------- fuse


def fuse(
    strategy: str,
    lists: Sequence[RankedList],
    weights: Mapping[str, float],
    k: int,
    *,
    priority: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
    cold_quota: float = 0.0,
    cold: ColdMask | None = None,
) -> Fused:
    """Merge ``lists`` into at most ``k`` deduplicated candidates with ``strategy``.

    ``weights`` maps channel -> finite weight >= 0 (missing means 0); ``priority`` lists
    channel names, most preferred first, for tie-breaks and list processing order;
    ``params`` are the strategy's params (see :func:`validate_params`). ``cold_quota``
    (0..1) with ``cold`` (ids -> bool mask, or None when nothing is known; e.g.
    ``Catalog.cold_mask``) keeps slots for cold items (module doc).

    Raises ``ValueError`` for an unknown strategy or bad params, ``k <= 0``, a negative,
    NaN or infinite weight (``weights.<channel>``), a channel given twice, or a
    taking-part list whose scores are not finite or not parallel to its ids, or whose ids
    repeat.

    With tracing on, a ``recall.fusion`` span under the current one says the strategy
    and how many lists went in and candidates came out.
    """
    slots = cold_slots(cold_quota, k)
    if tracing.ENABLED:
        return _traced_fuse(strategy, lists, weights, k, priority, params, slots, cold)
    return _fuse(strategy, lists, weights, k, priority, params, slots, cold)


def _traced_fuse(
    strategy: str,
    lists: Sequence[RankedList],
    weights: Mapping[str, float],
    k: int,
    priority: Sequence[str],
    params: Mapping[str, Any] | None,
    cold_slots: int = 0,
    cold: ColdMask | None = None,
) -> Fused:
    attributes = {"recall.fusion.strategy": strategy, "recall.fusion.lists": len(lists)}
    with tracing.child_span("recall.fusion", attributes) as span:
        fused = _fuse(strategy, lists, weights, k, priority, params, cold_slots, cold)
        span.set_attribute("recall.fusion.candidates", len(fused.item_ids))
        return fused


def _fuse(
    strategy: str,
    lists: Sequence[RankedList],
    weights: Mapping[str, float],
    k: int,
    priority: Sequence[str],
    params: Mapping[str, Any] | None,
    cold_slots: int = 0,
    cold: ColdMask | None = None,
) -> Fused:
    checked = validate_params(strategy, params or {})
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
        raise ValueError(f"k: must be a positive integer, got {k!r}")
    pool = _build_pool(lists, weights, priority)
    if not pool.ids:
        return Fused([], np.zeros(0, dtype=np.float32), {})
    if cold_slots and cold is not None:
        full = None
        if strategy in _FULL_ORDER_EXTENDS_TOP_K:  # one call serves both: its top k
            full = STRATEGIES[strategy](pool, len(pool.ids), checked)  # is the prefix
            order, scores = full[0][: int(k)], full[1][: int(k)]
        else:
            order, scores = STRATEGIES[strategy](pool, int(k), checked)
        order, scores = _reserve_cold(
            pool, order, scores, int(k), cold_slots, cold, strategy, checked, full
        )
    else:
        order, scores = STRATEGIES[strategy](pool, int(k), checked)
    return _assemble(pool, order, scores)


#: Strategies whose order over the whole pool begins with their top k (they sort every
#: candidate by its fused score; quota's slots depend on k).
_FULL_ORDER_EXTENDS_TOP_K = frozenset({"rrf", "weighted_sum"})


# --------------------------------------------------------------------------- cold quota


def cold_slots(cold_quota: float, k: int) -> int:
    """``floor(cold_quota * k)``; raises naming ``cold_quota`` outside 0..1."""
    ok = not isinstance(cold_quota, bool) and isinstance(cold_quota, numbers.Real)
    if not (ok and 0.0 <= cold_quota <= 1.0):
        raise ValueError(f"cold_quota: must be a number between 0 and 1, got {cold_quota!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
        return 0  # _fuse names k
    return int(math.floor(cold_quota * int(k) + 1e-9))


def _reserve_cold(
    pool: _Pool,
    order: np.ndarray,
    scores: np.ndarray,
    k: int,
    slots: int,
    cold: ColdMask,
    strategy: str,
    params: Mapping[str, Any],
    full: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The strategy's top ``k`` (``order``) with ``slots`` cold items where the channels
    returned that many (module doc). ``full``: the strategy's order over the whole pool
    when the caller has it already.

    The missing cold items come in the strategy's order over the whole pool; each takes
    the place of the last non-cold item, and keeps its own fused score, capped at the
    score before it so the list stays sorted (for rrf and weighted_sum, whose full
    order extends the top k, the cap never bites)."""
    mask = cold(pool.ids)
    if mask is None:
        return order, scores
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (len(pool.ids),):
        raise ValueError(
            f"cold: expected {len(pool.ids)} flags (one per candidate), got {mask.shape}"
        )
    missing = slots - int(mask[order].sum())
    outside = mask.copy()
    outside[order] = False
    if missing <= 0 or not outside.any():
        return order, scores
    if full is None:
        full = STRATEGIES[strategy](pool, len(pool.ids), params)
    full_order, full_scores = full
    pick = outside[full_order]
    extra, extra_scores = full_order[pick][:missing], full_scores[pick][:missing]
    # make room: empty slots first, then the last non-cold items of the top k (there
    # are enough of them: len(extra) <= slots - cold ones there <= k - cold ones there)
    n_drop = max(0, len(extra) - (k - len(order)))
    warm_pos = np.flatnonzero(~mask[order])
    keep = np.ones(len(order), dtype=bool)
    keep[warm_pos[len(warm_pos) - n_drop :]] = False
    new_order = np.concatenate((order[keep], extra))
    new_scores = np.minimum.accumulate(np.concatenate((scores[keep], extra_scores)))
    return new_order, new_scores.astype(np.float32)


def _check_weights(weights: Mapping[str, float]) -> None:
    for name, w in weights.items():
        ok = not isinstance(w, bool) and isinstance(w, numbers.Real) and math.isfinite(w)
        if not (ok and w >= 0):
            raise ValueError(f"weights.{name}: must be a finite number >= 0, got {w!r}")


def checked_ranks(ranks: object, n: int) -> np.ndarray | None:
    """Ranks given with a list of ``n`` items (``RankedList.ranks``,
    ``Candidates.ranks``) as int64, None staying None; ``ValueError`` when they are not
    ``n`` integers increasing strictly, each at least its 1-based position."""
    if ranks is None:
        return None
    found = np.asarray(ranks)
    if found.shape != (n,) or (n and found.dtype.kind not in "iu"):
        raise ValueError(f"expected {n} integers, got ranks of shape {found.shape} ({found.dtype})")
    found = found.astype(np.int64)
    if n and (bool((found < np.arange(1, n + 1)).any()) or bool((np.diff(found) <= 0).any())):
        raise ValueError("must increase strictly, each at least its position")
    return found


def _checked_ranks(lst: RankedList) -> np.ndarray | None:
    try:
        return checked_ranks(lst.ranks, len(lst.item_ids))
    except ValueError as e:
        raise ValueError(f"lists[{lst.channel!r}].ranks: {e}") from None


def _checked_scores(lst: RankedList) -> np.ndarray:
    where = f"lists[{lst.channel!r}]"
    # np.array copies, so nothing downstream can write into the caller's array.
    scores = np.array(lst.scores, dtype=np.float64)
    if scores.shape != (len(lst.item_ids),):
        raise ValueError(
            f"{where}.scores: expected {len(lst.item_ids)} scores (one per "
            f"item id), got shape {scores.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"{where}.scores: must be finite")
    return scores


def _check_unique(
    active: Sequence[RankedList], flat_cand: np.ndarray, bounds: np.ndarray, n_items: int
) -> None:
    """Raise naming the first list that repeats an id. Checked on the union indices the
    pool numbers anyway (a list repeats an id iff its (list, index) pairs repeat), not
    with a set of the id strings: on a million-item catalogue reading every id string
    again is a cache miss per id, and this runs on every request."""
    if not len(flat_cand):
        return
    list_of = np.repeat(np.arange(len(active), dtype=np.int64), np.diff(bounds, prepend=0))
    keys = np.sort(list_of * n_items + flat_cand)
    repeated = keys[1:] == keys[:-1]
    if repeated.any():
        first = int(keys[1:][repeated][0] // n_items)
        raise ValueError(f"lists[{active[first].channel!r}].item_ids: duplicate item ids")


def _build_pool(
    lists: Sequence[RankedList], weights: Mapping[str, float], priority: Sequence[str]
) -> _Pool:
    _check_weights(weights)
    names = [lst.channel for lst in lists]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"lists: channel {dup!r} given more than once")
    rank_of: dict[str, int] = {}
    for i, name in enumerate(priority):
        rank_of.setdefault(name, i)
    active = sorted(
        (lst for lst in lists if weights.get(lst.channel, 0.0) > 0),
        key=lambda lst: (rank_of.get(lst.channel, len(priority)), lst.channel),
    )
    scores = tuple(_checked_scores(lst) for lst in active)
    ranks = tuple(_checked_ranks(lst) for lst in active)
    if len(active) == 1:
        single = _single_pool(active[0], scores[0], float(weights[active[0].channel]), ranks[0])
        if single is not None:
            return single
    return _union_pool(active, scores, weights, ranks)


def _union_pool(
    active: Sequence[RankedList],
    scores: tuple[np.ndarray, ...],
    weights: Mapping[str, float],
    ranks: tuple[np.ndarray | None, ...] = (),
) -> _Pool:
    """The taking-part lists (``active``, in channel order, with their checked
    ``scores``) mapped onto one deduplicated set of candidates."""
    # Union index of every list position, items numbered in first-seen (channel) order.
    # dict.fromkeys dedupes in first-seen order and map() looks every position up, both
    # in C: half the cost of a Python loop of setdefault calls.
    flat_ids = list(chain.from_iterable(lst.item_ids for lst in active))
    index = {item: n for n, item in enumerate(dict.fromkeys(flat_ids))}
    flat_cand = np.fromiter(map(index.__getitem__, flat_ids), np.intp, len(flat_ids))
    lengths = np.fromiter((len(lst.item_ids) for lst in active), np.intp, len(active))
    bounds = np.cumsum(lengths)
    _check_unique(active, flat_cand, bounds, len(index))
    cand = tuple(np.split(flat_cand, bounds[:-1])) if len(active) else ()
    flat_rank = np.arange(1, len(flat_cand) + 1, dtype=np.int64) - np.repeat(
        bounds - lengths, lengths
    )
    for n, given in enumerate(ranks):
        if given is not None:  # a filtered list: the ranks it held before
            flat_rank[bounds[n] - lengths[n] : bounds[n]] = given
    flat_channel = np.repeat(np.arange(len(active), dtype=np.int64), lengths)
    best_rank = np.full(len(index), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best_rank, flat_cand, flat_rank)
    # An item's first position in the flat lists is where the running maximum of the
    # union indices grows (numbers are handed out in first-seen order), and the first
    # channel to list an item is the first in channel order.
    first = np.ones(len(flat_cand), dtype=bool)
    first[1:] = flat_cand[1:] > np.maximum.accumulate(flat_cand)[:-1]
    return _Pool(
        ids=list(index),
        channels=tuple(lst.channel for lst in active),
        weights=np.array([float(weights[lst.channel]) for lst in active]),
        cand=cand,
        scores=scores,
        best_rank=best_rank,
        best_channel=flat_channel[first],
        flat_cand=flat_cand,
        flat_rank=flat_rank,
        flat_channel=flat_channel,
        flat_scores=np.concatenate(scores) if scores else np.zeros(0),
    )


def _single_pool(
    lst: RankedList, scores: np.ndarray, weight: float, ranks: np.ndarray | None = None
) -> _Pool | None:
    """The pool of one taking-part list whose ids are unique, written down directly:
    what the general path computes for it (every position its own union item, in list
    order, first seen in channel 0) without numbering the ids through a dict. With
    learned per-segment weights one channel often takes part alone, so this is a
    common request's path. None when ids repeat: the general path names the list."""
    ids = list(lst.item_ids)
    if len(set(ids)) != len(ids):
        return None
    n = len(ids)
    flat_cand = np.arange(n, dtype=np.intp)
    flat_rank = np.arange(1, n + 1, dtype=np.int64) if ranks is None else ranks
    flat_channel = np.zeros(n, dtype=np.int64)
    return _Pool(
        ids=ids,
        channels=(lst.channel,),
        weights=np.array([weight]),
        cand=(flat_cand,),
        scores=(scores,),
        best_rank=flat_rank.copy(),
        best_channel=flat_channel.copy(),
        flat_cand=flat_cand,
        flat_rank=flat_rank,
        flat_channel=flat_channel,
        flat_scores=scores.copy(),
    )


def _order_by_score(pool: _Pool, fused: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` union indices by (float32 score desc, best rank, channel, item id)."""
    scores = fused.astype(np.float32)
    keys = (pool.best_channel, pool.best_rank, -scores)
    order = np.lexsort(keys)
    head = order[: k + 1]
    tied = np.ones(max(len(head) - 1, 0), dtype=bool)
    for key in keys:
        tied &= key[head[1:]] == key[head[:-1]]
    if tied.any():
        # Rare: sort item ids in Python (numpy's fixed-width strings drop trailing NULs).
        id_rank = np.empty(len(pool.ids), dtype=np.int64)
        id_rank[sorted(range(len(pool.ids)), key=pool.ids.__getitem__)] = np.arange(len(pool.ids))
        order = np.lexsort((id_rank, *keys))
    order = order[:k]
    return order, scores[order]


def _assemble(pool: _Pool, order: np.ndarray, scores: np.ndarray) -> Fused:
    position = np.full(len(pool.ids), -1, dtype=np.intp)
    position[order] = np.arange(len(order))
    pos = position[pool.flat_cand]
    hit = np.flatnonzero(pos >= 0)
    # Every channel's hits at once, then cut per channel (flat lists are in channel order).
    where = pos[hit].tolist()
    ranks = pool.flat_rank[hit].tolist()
    raw = pool.flat_scores[hit].tolist()
    per_channel = np.bincount(pool.flat_channel[hit], minlength=len(pool.channels)).tolist()
    provenance = {}
    start = 0
    for name, n in zip(pool.channels, per_channel, strict=True):
        if n:
            provenance[name] = (
                where[start : start + n],
                ranks[start : start + n],
                raw[start : start + n],
            )
            start += n
    return Fused([pool.ids[i] for i in order.tolist()], scores, provenance)

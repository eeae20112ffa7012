"""Choosing how ``cf`` combines its parts, on a validation carve of its training data.

Which parts win depends on what is asked: a hold-out of each user's newest items
rewards recency (item-to-item votes weighted by ``0.5 ** (age / half_life)``, the
next-item two-tower model); a hold-out drawn at random from each user's timeline
rewards the whole history weighed alike (plain EASE). The build cannot know which
protocol, or which mixture of "what next" and "what else", it will be judged on, so
it measures both on its own training data and keeps the mix that does best on the
worse of the two.

Carve (:func:`carve`). Per user with at least :data:`MIN_ROWS` training rows,
``fraction`` of them (``round``, at least 2) are held out: half (rounded up) are the
user's *newest* rows, the rest are drawn at random (seeded) from the older ones. The
remaining rows are the carve's training data; the model parts are learned on them
exactly as the build learns them on everything. One carve, two targets: the same
trained parts and the same request histories are scored against the newest
(``temporal``) and the random (``random``) held-out items, so the comparison costs one
extra training run, not two. Only training rows are read: nothing of a test split.

Candidates (:class:`Mix`). Up to three ranked lists, each of ``validation_k`` items
with the user's history excluded, as the channel serves them:

* ``full``: item-to-item over the whole history, every item weight 1 (with the dense
  EASE matrix: exactly EASE);
* ``recent``: item-to-item over the newest ``max_history`` items with the recency
  half-life ``h`` (positions) from :data:`HALF_LIVES`;
* ``two_tower``: the two-tower model's list;

fused by weighted RRF (``rrf_k``) with weights from :data:`WEIGHTS` (largest weight 1,
so no mix is counted twice under two scales). EASE's λ is picked first, on the
``full`` list alone, from :data:`LAMBDAS`, by the same rule.

Rule. ``recall@K`` on each target; a mix's score is ``min(temporal / best temporal,
random / best random)`` over all candidates (ties: the higher mean recall, then the
simpler mix: fewer lists, then earlier in the grid): a mix that gives up a little on one
target to stay near the best on the other beats one that wins one target and loses the
other badly. One refinement: the best mix that is at least as good as the ``full`` list
alone (EASE) on *both* targets is taken instead when its score is within
:data:`FLOOR_TOLERANCE` (0.1) of the best score. On MovieLens 100K the pure maximin mix
gives up 2.5 % of random-target recall to EASE for 3 % more temporal recall than the
floor-respecting mix; the floor keeps ``cf`` at least EASE on either protocol there. In a
world where only recency predicts what comes next (a user's series, episode after
episode) every mix with recency loses some random-target recall, and the floor would
cost half the temporal recall: there the maximin mix stands (tests/test_channel_cf.py).
Every candidate's figures are returned, the best few go into the manifest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from recall_engine.plugins.cf.histories import TrainingLog

if TYPE_CHECKING:
    import scipy.sparse as sp

MIN_ROWS = 5
HALF_LIVES: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0)
WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
LAMBDAS: tuple[float, ...] = (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)
TARGETS = ("temporal", "random")
# Parts' lists are LIST_DEPTH x validation_k long and the fused top validation_k is
# scored: RRF's top k depends on how deep the lists it fuses are, and the default plan
# asks each channel for 200 to fill 100 (channel_k); scoring 100-deep lists chose mixes
# that did worse when served 200 deep.
LIST_DEPTH = 2
FLOOR_TOLERANCE = 0.1
RULE = (
    "maximin of recall relative to the best on each target; a candidate at least as good "
    "as the full list (EASE) on both targets is preferred when within 0.1 of that maximin"
)
_CELLS = 8_000_000  # users x items per scoring block: bounds the dense blocks' memory


@dataclass(slots=True, frozen=True)
class Mix:
    """Weights of the channel's lists (see the module docstring); 0 leaves one out."""

    full_weight: float
    recent_weight: float
    half_life: float
    two_tower_weight: float

    def lists(self) -> int:
        return sum(w > 0 for w in (self.full_weight, self.recent_weight, self.two_tower_weight))

    def name(self) -> str:
        parts = []
        if self.full_weight:
            parts.append(f"full {self.full_weight:g}")
        if self.recent_weight:
            parts.append(f"recent(h={self.half_life:g}) {self.recent_weight:g}")
        if self.two_tower_weight:
            parts.append(f"two_tower {self.two_tower_weight:g}")
        return " + ".join(parts)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(slots=True, frozen=True, eq=False)
class Carve:
    """The carve's training rows and, per validation user (``users``, user codes), the
    held-out item indices as users x items boolean matrices, one per target."""

    train: TrainingLog
    users: np.ndarray
    targets: Mapping[str, sp.csr_matrix]
    held_out_rows: int

    def describe(self) -> dict[str, Any]:
        return {
            "train_rows": int(len(self.train.items)),
            "held_out_rows": self.held_out_rows,
            "users": int(len(self.users)),
            "targets": {t: int(m.nnz) for t, m in self.targets.items()},
        }


def carve(data: TrainingLog, n_items: int, *, fraction: float, max_users: int, seed: int) -> Carve:
    """Hold out, per user with at least :data:`MIN_ROWS` rows, ``fraction`` of them: the
    newest half and a random half of the rest (module docstring). ``data`` is in
    (user, time) order, so a user's newest rows are the end of their run."""

    rng = np.random.default_rng(seed)
    held = np.zeros(len(data.items), dtype=np.int8)  # 0 train, 1 newest, 2 random
    starts, ends = data.starts[:-1], data.starts[1:]
    eligible = np.flatnonzero(ends - starts >= MIN_ROWS)
    for user in eligible.tolist():
        lo, hi = int(starts[user]), int(ends[user])
        n_out = max(2, int(round(fraction * (hi - lo))))
        n_new = (n_out + 1) // 2
        held[hi - n_new : hi] = 1
        held[lo + rng.choice(hi - n_new - lo, n_out - n_new, replace=False)] = 2
    keep = held == 0
    users = data.users[keep]
    starts_new = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(users)].astype(np.int64)
    train = TrainingLog(users, data.items[keep], data.weights[keep], starts_new, data.n_users)
    # validation users: eligible ones with a target of each kind not already in their
    # training rows (repeats cannot be found: the history is excluded)
    if len(eligible) > max_users:
        eligible = np.sort(rng.choice(eligible, max_users, replace=False))
    row_of = np.full(data.n_users, -1, dtype=np.int64)
    row_of[eligible] = np.arange(len(eligible))
    seen = _matrix(train.users, train.items, row_of, len(eligible), n_items)
    targets = {}
    for code, name in ((1, "temporal"), (2, "random")):
        rows = held == code
        m = _matrix(data.users[rows], data.items[rows], row_of, len(eligible), n_items)
        m = m - m.multiply(seen)
        m.eliminate_zeros()
        targets[name] = m.tocsr()
    has_both = np.ones(len(eligible), dtype=bool)
    for m in targets.values():
        has_both &= np.diff(m.indptr) > 0
    targets = {t: m[has_both] for t, m in targets.items()}
    return Carve(train, eligible[has_both], targets, int((~keep).sum()))


def _matrix(
    users: np.ndarray, items: np.ndarray, row_of: np.ndarray, n_rows: int, n_items: int
) -> sp.csr_matrix:
    import scipy.sparse as sp

    rows = row_of[users]
    ok = rows >= 0
    m = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32), (rows[ok], items[ok])), shape=(n_rows, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def history_weights(
    train: TrainingLog, users: np.ndarray, n_items: int, half_life: float, max_history: int
) -> sp.csr_matrix:
    """Per validation user, the weight the channel gives each history item: the
    user's training rows as a request history (oldest first), a repeated item at its
    newest position, ``half_life`` 0 meaning all items weigh 1 over the whole history,
    else the newest ``max_history`` distinct items weighed ``0.5 ** (age / half_life)``
    (:func:`~recall_engine.plugins.cf.histories.recency_weights`)."""
    import scipy.sparse as sp

    rows, cols, vals = [], [], []
    for row, user in enumerate(users.tolist()):
        n = int(train.starts[user + 1] - train.starts[user])
        uniq, pos = newest_distinct(train, user, max_history if half_life > 0 else n)
        if half_life > 0:
            w = np.power(0.5, (n - 1 - pos) / half_life)
        else:
            w = np.ones(len(uniq))
        rows.append(np.full(len(uniq), row))
        cols.append(uniq)
        vals.append(w)
    return sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(users), n_items),
    )


def newest_distinct(train: TrainingLog, user: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The user's newest ``limit`` distinct items, oldest first, with their positions in
    the user's sequence: what :func:`~recall_engine.plugins.cf.histories.known_history`
    keeps of a request whose history is that sequence."""
    seq = train.items[train.starts[user] : train.starts[user + 1]]
    uniq, first = np.unique(seq[::-1], return_index=True)
    pos = len(seq) - 1 - first
    order = np.argsort(pos)[-limit:] if limit > 0 else np.zeros(0, dtype=np.int64)
    return uniq[order], pos[order]


def top_lists(
    score_block: Callable[[int, int], np.ndarray],
    seen: sp.csr_matrix,
    k: int,
    *,
    positive_only: bool = False,
) -> np.ndarray:
    """``[users, k]`` item indices, best first, ``-1`` where fewer qualify: the top
    ``k`` of ``score_block(lo, hi)`` (dense scores of users ``lo:hi``) with each user's
    history (``seen``) excluded, and with ``positive_only`` items scored <= 0 too (the
    neighbour lists serve only items they touch)."""
    n_users, n_items = seen.shape
    out = np.full((n_users, k), -1, dtype=np.int64)
    step = max(1, _CELLS // max(n_items, 1))
    for lo in range(0, n_users, step):
        hi = min(n_users, lo + step)
        scores = np.asarray(score_block(lo, hi), dtype=np.float32)
        block = seen[lo:hi]
        scores[np.repeat(np.arange(hi - lo), np.diff(block.indptr)), block.indices] = -np.inf
        if positive_only:
            scores[scores <= 0] = -np.inf
        out[lo:hi] = _top_k_rows(scores, k)
    return out


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row the indices of the ``k`` largest finite scores, best first (ties: the
    lower index), ``-1`` padding."""
    n_items = scores.shape[1]
    kk = min(k, n_items)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top[~np.isfinite(np.take_along_axis(vals, order, axis=1))] = -1
    if kk < k:
        top = np.pad(top, ((0, 0), (0, k - kk)), constant_values=-1)
    return top


def fused_recall(
    lists: Sequence[tuple[np.ndarray, float]],
    targets: Mapping[str, sp.csr_matrix],
    n_items: int,
    k: int,
    rrf_k: float,
) -> dict[str, float]:
    """Mean recall@k per target of the weighted RRF of ``lists`` (``[users, k]`` item
    indices with ``-1`` padding, weight); one list alone is its own order."""
    active = [(ids, w) for ids, w in lists if w > 0]
    n_users = active[0][0].shape[0]
    hits = {t: np.zeros(n_users) for t in targets}
    step = max(1, _CELLS // max(n_items, 1))
    ranks = 1.0 / (rrf_k + np.arange(1, active[0][0].shape[1] + 1))
    for lo in range(0, n_users, step):
        hi = min(n_users, lo + step)
        if len(active) == 1:
            top = active[0][0][lo:hi, :k]
        else:
            fused = np.zeros((hi - lo, n_items + 1), dtype=np.float64)  # column -1: padding
            rows = np.arange(hi - lo)[:, None]
            for ids, w in active:
                fused[rows, ids[lo:hi]] += w * ranks[None, : ids.shape[1]]
            fused = fused[:, :n_items]
            fused[fused <= 0] = -np.inf
            top = _top_k_rows(fused, k)
        for t, m in targets.items():
            block = m[lo:hi].toarray().astype(bool)
            block = np.pad(block, ((0, 0), (0, 1)))  # index -1 hits the padding column
            hits[t][lo:hi] = np.take_along_axis(block, top, axis=1).sum(1)
    return {
        t: float(np.mean(hits[t] / np.diff(m.indptr))) if n_users else 0.0
        for t, m in targets.items()
    }


def candidate_mixes(two_tower: bool, recent: bool = True) -> list[Mix]:
    """Every weight triple from :data:`WEIGHTS` with largest weight 1 (the full list,
    the recent list for each half-life in :data:`HALF_LIVES`, the two-tower list)."""
    mixes = []
    tt_weights = WEIGHTS if two_tower else (0.0,)
    recent_weights = WEIGHTS if recent else (0.0,)
    for full, rec, tt in itertools.product(WEIGHTS, recent_weights, tt_weights):
        if max(full, rec, tt) != 1.0:
            continue
        for h in HALF_LIVES if rec > 0 else (0.0,):
            mixes.append(Mix(full, rec, h, tt))
    return mixes


def choose(
    results: Sequence[tuple[Any, Mapping[str, float]]], reference: int | None = None
) -> tuple[int, list[float]]:
    """Index of the best candidate by the rule in the module docstring, and every
    candidate's maximin score. ``results``: ``(candidate, recall per target)`` in grid
    order; ``reference`` (the full list alone: EASE) is the floor: among candidates at
    least as good as it on every target, the best one is taken when its maximin score
    is within :data:`FLOOR_TOLERANCE` of the best maximin score of all."""
    best = {t: max(r[t] for _, r in results) for t in TARGETS}
    scores = [min(r[t] / best[t] if best[t] > 0 else 1.0 for t in TARGETS) for _, r in results]
    means = [float(np.mean([r[t] for t in TARGETS])) for _, r in results]
    lists = [c.lists() if isinstance(c, Mix) else 1 for c, _ in results]

    def ranked(pool: Sequence[int]) -> list[int]:
        return sorted(pool, key=lambda i: (-round(scores[i], 6), -round(means[i], 6), lists[i], i))

    top = ranked(range(len(results)))[0]
    if reference is None:
        return top, scores
    floor = results[reference][1]
    above = [i for i, (_, r) in enumerate(results) if all(r[t] >= floor[t] for t in TARGETS)]
    safe = ranked(above)[0]
    return (safe if scores[safe] >= scores[top] - FLOOR_TOLERANCE else top), scores


TwoTowerLists = Callable[[TrainingLog, np.ndarray, "sp.csr_matrix"], np.ndarray]


@dataclass(slots=True, frozen=True)
class Choice:
    """What :func:`select` picked: the mix, EASE's λ (when the dense scorer is used)
    and the report that goes into the bundle manifest."""

    mix: Mix
    ease_lambda: float
    report: dict[str, Any]
    results: tuple[tuple[Mix, Mapping[str, float]], ...] = ()


def select(
    params: Any,  # CFParams (not imported: it would be a cycle for type checkers only)
    data: TrainingLog,
    n_items: int,
    *,
    seed: int,
    two_tower_lists: TwoTowerLists | None,
    progress: bool = False,
) -> Choice | None:
    """Carve, learn the parts on the carve, score every candidate, pick (module
    docstring). ``two_tower_lists(train, users, seen)`` trains the two-tower model on
    the carve and returns its ``[users, VALIDATION_K]`` lists (``None``: no two-tower).
    Returns ``None`` when no user has enough rows to carve from."""
    from recall_engine.plugins.cf import item2item

    k = int(params.validation_k)
    depth = LIST_DEPTH * k  # each part's list, as a plan's channel_k asks for it
    c = carve(
        data,
        n_items,
        fraction=params.validation_fraction,
        max_users=params.validation_users,
        seed=seed,
    )
    if len(c.users) == 0:
        return None
    report: dict[str, Any] = {"carve": c.describe(), "k": k, "rule": RULE}
    seen = history_weights(c.train, c.users, n_items, 0.0, 0)
    recent_w = {
        h: history_weights(c.train, c.users, n_items, h, params.max_history) for h in HALF_LIVES
    }
    lam = float(params.ease_lambda)
    i2i: dict[float, np.ndarray] = {}  # half-life (0: the full list) -> lists
    if params.item2item:
        x = item2item.user_item_matrix(
            c.train.users,
            c.train.items,
            c.train.weights,
            c.train.n_users,
            n_items,
            params.use_weights,
        )
        if params.dense_ease(n_items):
            per_lambda: list[tuple[float, dict[float, np.ndarray]]] = []
            for value in LAMBDAS:
                b = item2item.ease_matrix(x, value)
                per_lambda.append((value, _i2i_lists(b, seen, recent_w, depth, dense=True)))
            scored = [
                (value, fused_recall([(lists[0.0], 1.0)], c.targets, n_items, k, params.rrf_k))
                for value, lists in per_lambda
            ]
            best, _ = choose(scored)
            lam, i2i = per_lambda[best][0], per_lambda[best][1]
            report["ease_lambda"] = {
                f"{value:g}": {t: round(r[t], 5) for t in TARGETS} for value, r in scored
            }
        else:
            table = item2item.learn(
                x,
                params.resolved_method(n_items),
                neighbours=params.neighbours,
                ease_lambda=lam,
                cosine_shrink=params.cosine_shrink,
                swing_alpha=params.swing_alpha,
                swing_max_users=params.swing_max_users,
                seed=seed,
            )
            i2i = _i2i_lists(_as_matrix(table), seen, recent_w, depth, dense=False)
    tt = two_tower_lists(c.train, c.users, seen) if (params.two_tower and two_tower_lists) else None
    mixes = candidate_mixes(tt is not None) if params.item2item else [Mix(0.0, 0.0, 0.0, 1.0)]

    def lists_of(m: Mix) -> list[tuple[np.ndarray, float]]:
        out = []
        if m.full_weight:
            out.append((i2i[0.0], m.full_weight))
        if m.recent_weight:
            out.append((i2i[m.half_life], m.recent_weight))
        if m.two_tower_weight:
            assert tt is not None
            out.append((tt, m.two_tower_weight))
        return out

    results = [(m, fused_recall(lists_of(m), c.targets, n_items, k, params.rrf_k)) for m in mixes]
    reference = Mix(1.0, 0.0, 0.0, 0.0)
    best, scores = choose(results, mixes.index(reference) if reference in mixes else None)
    mix = results[best][0]
    ranked = sorted(range(len(results)), key=lambda i: -scores[i])
    report.update(
        candidates=len(results),
        chosen=mix.name(),
        chosen_recall={t: round(results[best][1][t], 5) for t in TARGETS},
        chosen_score=round(scores[best], 5),
        best_recall={t: round(max(r[t] for _, r in results), 5) for t in TARGETS},
        top=[
            {
                "mix": results[i][0].name(),
                "score": round(scores[i], 5),
                **{t: round(results[i][1][t], 5) for t in TARGETS},
            }
            for i in ranked[:8]
        ],
    )
    for m, r in results:
        if m == reference:
            report["full_only_recall"] = {t: round(r[t], 5) for t in TARGETS}
    return Choice(mix, lam, report, tuple(results))


def _i2i_lists(
    m: Any, seen: sp.csr_matrix, recent_w: Mapping[float, sp.csr_matrix], k: int, *, dense: bool
) -> dict[float, np.ndarray]:
    """The full list (key 0) and a recent list per half-life, scored with ``m`` (the
    dense EASE matrix, or the neighbour table as a sparse matrix)."""

    def scorer(w: sp.csr_matrix) -> Callable[[int, int], np.ndarray]:
        if dense:
            return lambda lo, hi: w[lo:hi] @ m
        return lambda lo, hi: (w[lo:hi] @ m).toarray()

    out = {0.0: top_lists(scorer(seen), seen, k, positive_only=not dense)}
    for h, w in recent_w.items():
        out[h] = top_lists(scorer(w), seen, k, positive_only=not dense)
    return out


def _as_matrix(table: Any) -> sp.csr_matrix:
    import scipy.sparse as sp

    n = table.n_items
    return sp.csr_matrix((table.sims, table.indices, table.indptr), shape=(n, n))

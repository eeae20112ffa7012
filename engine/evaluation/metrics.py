"""Top-K recall quality metrics, vectorised over users.

Recommendations come as a padded integer matrix ``recs`` (one row per evaluated user,
item indices best first, ``-1`` for empty slots) and the truth as one set of item indices
per user (:class:`Truth`). Definitions, per user with at least one test item, then
averaged over those users:

* ``recall@K`` = hits in the top K / number of the user's test items (not capped at K,
  so a user with more than K test items can't reach 1.0).
* ``ndcg@K`` = DCG / ideal DCG with binary relevance, ``DCG = Σ 1 / log2(rank + 1)``
  over hits at ranks 1..K, the ideal over ``min(K, number of test items)`` hits.
* ``hit@K`` = 1 if any test item is in the top K.

And over the whole list set:

* ``coverage@K`` = distinct items recommended in anyone's top K / catalogue size.
* ``novelty@K`` = mean self-information ``-log2(p_i)`` of the recommended items (every
  slot of every user's top K), where ``p_i`` is item i's popularity share: the fraction
  of training users who interacted with it (Zhou et al., PNAS 2010). Items no training
  user touched count as one user, so the figure stays finite. In bits; higher = less
  popular items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "METRICS",
    "Truth",
    "evaluate",
    "hits_matrix",
    "ids_to_matrix",
    "novelty_table",
    "per_user",
]

METRICS = ("recall", "ndcg", "hit", "coverage", "novelty")


@dataclass(slots=True, frozen=True)
class Truth:
    """Test items per evaluated user as CSR-style arrays: user ``u``'s items are
    ``items[offsets[u]:offsets[u + 1]]`` (sorted, distinct)."""

    offsets: np.ndarray
    items: np.ndarray

    @staticmethod
    def from_sets(sets: Sequence[Sequence[int] | set[int] | np.ndarray]) -> Truth:
        sizes = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
        offsets = np.concatenate(([0], np.cumsum(sizes)))
        items = (
            np.concatenate([np.unique(np.fromiter(s, dtype=np.int64, count=len(s))) for s in sets])
            if len(sets)
            else np.zeros(0, np.int64)
        )
        return Truth(offsets, items.astype(np.int64))

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, mask: np.ndarray) -> Truth:
        """The truth of the users where ``mask`` is true (or at those indices)."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return Truth.from_sets([self.items[self.offsets[u] : self.offsets[u + 1]] for u in idx])


def ids_to_matrix(lists: Sequence[Sequence[str]], index: Mapping[str, int], k: int) -> np.ndarray:
    """Ranked id lists → a ``(len(lists), k)`` int matrix of item indices, ``-1`` padded.
    Ids missing from ``index`` are dropped (they can't be test items)."""
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for row, ids in enumerate(lists):
        idx = [index[i] for i in ids[:k] if i in index]
        out[row, : len(idx)] = idx
    return out


def hits_matrix(recs: np.ndarray, truth: Truth) -> np.ndarray:
    """Boolean matrix like ``recs``: whether each slot holds one of its user's test items.

    Vectorised with one ``searchsorted`` over user-offset keys: user u's item i becomes
    the key ``u * n + i`` so all users' sorted truth lists form one sorted array."""
    n_users, k = recs.shape
    if len(truth) != n_users:
        raise ValueError(f"recs has {n_users} rows, truth {len(truth)} users")
    span = int(max(recs.max(initial=-1), truth.items.max(initial=-1))) + 2
    owner = np.repeat(np.arange(n_users, dtype=np.int64), truth.sizes)
    keys = owner * span + truth.items  # sorted: users, then items
    query = np.arange(n_users, dtype=np.int64)[:, None] * span + recs
    pos = np.searchsorted(keys, query)
    found = np.zeros_like(recs, dtype=bool)
    inside = pos < len(keys)
    found[inside] = keys[pos[inside]] == query[inside]
    return found & (recs >= 0)


def novelty_table(
    train_user_codes: np.ndarray, train_item_codes: np.ndarray, n_items: int
) -> np.ndarray:
    """``-log2(popularity share)`` per item index (see the module doc)."""
    n_users = len(np.unique(train_user_codes)) if len(train_user_codes) else 1
    pairs = np.unique(np.stack([train_user_codes, train_item_codes]), axis=1)
    users_per_item = np.bincount(pairs[1], minlength=n_items).astype(np.float64)
    return -np.log2(np.maximum(users_per_item, 1.0) / max(n_users, 1))


def evaluate(
    recs: np.ndarray,
    truth: Truth,
    ks: Sequence[int],
    n_catalog: int,
    self_information: np.ndarray | None = None,
) -> dict[int, dict[str, float]]:
    """Every metric at every K in ``ks`` (see the module doc), averaged over users.

    ``recs`` needs at least ``max(ks)`` columns; ``self_information`` (from
    :func:`novelty_table`) enables novelty. Returns ``{K: {metric: value}}``; with no
    users every value is ``nan``.
    """
    if recs.shape[1] < max(ks):
        raise ValueError(f"recs has {recs.shape[1]} columns, need max(ks) = {max(ks)}")
    hits = hits_matrix(recs, truth)
    sizes = truth.sizes.astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, recs.shape[1] + 2))
    ideal_cum = np.cumsum(discounts)
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        h = hits[:, :k]
        n_hits = h.sum(axis=1)
        top = recs[:, :k]
        filled = top[top >= 0]
        row: dict[str, float] = {}
        if len(truth) == 0:
            row = dict.fromkeys(METRICS, float("nan"))
        else:
            idcg = ideal_cum[np.minimum(k, truth.sizes) - 1]
            row["recall"] = float(np.mean(n_hits / sizes))
            row["ndcg"] = float(np.mean((h * discounts[:k]).sum(axis=1) / idcg))
            row["hit"] = float(np.mean(n_hits > 0))
            row["coverage"] = float(len(np.unique(filled)) / n_catalog) if n_catalog else 0.0
            row["novelty"] = (
                float(self_information[filled].mean())
                if self_information is not None and len(filled)
                else float("nan")
            )
        out[k] = row
    return out


def per_user(recs: np.ndarray, truth: Truth, k: int) -> dict[str, np.ndarray]:
    """Per evaluated user: ``recall``, ``ndcg`` (as in :func:`evaluate`, whose averages
    these are) and ``hits`` (test items in the top ``k``), at one ``k``. For
    segments and the bootstrap, which need the users' own figures."""
    if recs.shape[1] < k:
        raise ValueError(f"recs has {recs.shape[1]} columns, need k = {k}")
    h = hits_matrix(recs, truth)[:, :k]
    if len(truth) == 0:
        empty = np.zeros(0)
        return {"recall": empty, "ndcg": empty, "hits": empty}
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    idcg = np.cumsum(discounts)[np.minimum(k, truth.sizes) - 1]
    n_hits = h.sum(axis=1).astype(np.float64)
    return {
        "recall": n_hits / truth.sizes,
        "ndcg": (h * discounts).sum(axis=1) / idcg,
        "hits": n_hits,
    }

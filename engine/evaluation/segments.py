"""Segments: the evaluated users, or their test items, cut into groups whose figures
tell apart who and what a system serves well.

Three families, each a list of :class:`Segment` (users + their truth restricted to the
segment's items):

``history_length``
    Users by their number of training interactions: ``0``, ``1-5``, ``6-20``,
    ``21-50``, ``51-100``, ``101-200``, ``201+`` (empty buckets are left out). A
    partition of the users: the users add up to all evaluated users and the
    user-weighted mean of the buckets' recall is the overall recall.
``item_popularity``
    Test items by the training popularity (distinct training users) of the item:
    ``d1`` .. ``d10`` are deciles of the items that have training interactions,
    by item count, most popular first (ties: catalogue order), and ``cold`` holds the
    items no training row has. A partition of the test items: their counts, and each
    system's hits, add up to the overall ones. A user is in a segment when at least one
    of their test items is; recall and NDCG there are over those items only.
``items``
    ``cold`` (test items absent from training: only content-based channels can find
    them) and ``warm`` (the others), the two sides of the cold-quota trade-off.

Segments are fixed by the split's training part alone, the same for every system.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recall_engine.evaluation.metrics import Truth, per_user

__all__ = [
    "HISTORY_EDGES",
    "POPULARITY_BINS",
    "Segment",
    "history_segments",
    "item_segments",
    "popularity_segments",
    "score_segments",
    "train_popularity",
]

#: Lower edges of the history-length buckets (training interactions per user).
HISTORY_EDGES = (0, 1, 6, 21, 51, 101, 201)
POPULARITY_BINS = 10
#: A system's top lists: a (users, kmax) matrix of item indices, or one per K.
Lists = np.ndarray | dict[int, np.ndarray]


@dataclass(slots=True, frozen=True, eq=False)
class Segment:
    """``rows``: indices of the segment's users among the evaluated users; ``truth``:
    their test items, restricted to the segment's items (same order as ``rows``)."""

    family: str
    name: str
    rows: np.ndarray
    truth: Truth


def _bucket_names(edges: Sequence[int]) -> list[str]:
    names = []
    for lo, hi in zip(edges, [*edges[1:], None], strict=True):
        if hi is None:
            names.append(f"{lo}+")
        elif hi - lo == 1:
            names.append(str(lo))
        else:
            names.append(f"{lo}-{hi - 1}")
    return names


def history_segments(history_lengths: np.ndarray, truth: Truth) -> list[Segment]:
    """Users by training history length (module doc); ``history_lengths`` per user."""
    bucket = np.searchsorted(np.asarray(HISTORY_EDGES), history_lengths, side="right") - 1
    out = []
    for b, name in enumerate(_bucket_names(HISTORY_EDGES)):
        rows = np.flatnonzero(bucket == b)
        if len(rows):
            out.append(Segment("history_length", name, rows, truth.rows(rows)))
    return out


def train_popularity(user_codes: np.ndarray, item_codes: np.ndarray, n_items: int) -> np.ndarray:
    """Distinct training users per item index (``item_codes`` < 0 are ignored)."""
    keep = item_codes >= 0
    if not keep.any():
        return np.zeros(n_items, dtype=np.int64)
    pairs = np.unique(np.stack([user_codes[keep], item_codes[keep]]), axis=1)
    return np.bincount(pairs[1], minlength=n_items).astype(np.int64)


def _restrict(truth: Truth, label: np.ndarray, family: str, names: Sequence[str]) -> list[Segment]:
    """One segment per label value ``0..len(names)-1`` of the items (``label`` per item
    index); users with at least one test item of that label."""
    sizes = truth.sizes
    owner = np.repeat(np.arange(len(truth)), sizes)
    item_label = label[truth.items]
    out = []
    for b, name in enumerate(names):
        sel = item_label == b
        if not sel.any():
            continue
        rows = np.unique(owner[sel])
        sets = [truth.items[truth.offsets[u] : truth.offsets[u + 1]] for u in rows]
        sets = [s[label[s] == b] for s in sets]
        out.append(Segment(family, name, rows, Truth.from_sets(sets)))
    return out


def popularity_segments(popularity: np.ndarray, truth: Truth) -> list[Segment]:
    """Test items by training-popularity decile, plus ``cold`` (module doc)."""
    warm = np.flatnonzero(popularity > 0)
    ranked = warm[np.lexsort((warm, -popularity[warm]))]  # most popular first
    label = np.full(len(popularity), POPULARITY_BINS, dtype=np.int64)  # cold
    for d, chunk in enumerate(np.array_split(ranked, POPULARITY_BINS)):
        label[chunk] = d
    names = [f"d{d + 1}" for d in range(POPULARITY_BINS)] + ["cold"]
    return _restrict(truth, label, "item_popularity", names)


def item_segments(popularity: np.ndarray, truth: Truth) -> list[Segment]:
    """``cold`` and ``warm`` test items (module doc)."""
    label = np.where(popularity > 0, 1, 0)
    return _restrict(truth, label, "items", ["cold", "warm"])


def score_segments(
    recs: Mapping[str, tuple[str, Lists]], segments: Sequence[Segment], ks: Sequence[int]
) -> dict[str, Any]:
    """``{family: {segment: {users, test_items, systems: {name: {K: {recall, ndcg,
    hits}}}}}}``: recall and NDCG averaged over the segment's users, hits summed."""
    out: dict[str, Any] = {}
    for seg in segments:
        systems: dict[str, Any] = {}
        for name, (kind, m) in recs.items():
            row: dict[str, Any] = {}
            for k in ks:
                pu = per_user((m[k] if isinstance(m, dict) else m)[seg.rows], seg.truth, k)
                row[str(k)] = {
                    "recall": round(float(pu["recall"].mean()), 6),
                    "ndcg": round(float(pu["ndcg"].mean()), 6),
                    "hits": int(pu["hits"].sum()),
                }
            systems[name] = {"kind": kind, "metrics": row}
        out.setdefault(seg.family, {})[seg.name] = {
            "users": len(seg.rows),
            "test_items": int(len(seg.truth.items)),
            "systems": systems,
        }
    return out

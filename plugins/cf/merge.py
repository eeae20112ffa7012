"""Combining the two modes' lists inside the channel: weighted reciprocal rank fusion.

``score(item) = Σ_mode weight_mode / (rrf_k + rank_mode(item))`` with 1-based ranks
(Cormack, Clarke & Büttcher, SIGIR 2009; ``rrf_k = 60``). Ranks rather than raw scores
because the modes' scales have nothing in common (summed EASE/cosine weights versus
cosine similarities of unit vectors) and an item both modes rank well should beat an
item only one of them likes. Ties break by the best rank either mode gave, then by the
mode order (item-to-item first), then by item id, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rrf(
    lists: Sequence[tuple[Sequence[str], float]], k: int, rrf_k: float = 60.0
) -> tuple[list[str], np.ndarray]:
    """Fuse ``(item ids best first, weight)`` lists into the top ``k``; returns the ids
    and their float32 fused scores (non-increasing).

    Vectorised (it runs on every cf request): items are numbered in first-seen order,
    the terms summed with ``bincount`` (in list order, as a loop would add them), and
    the best ``(rank, mode)`` kept as ``rank * modes + mode``. Each ``(rank, mode)``
    belongs to exactly one item, so the sort never needs the item id."""
    active = [
        (ids, float(weight), mode)
        for mode, (ids, weight) in enumerate(lists)
        if weight > 0 and len(ids)
    ]
    if not active or k <= 0:
        return [], np.zeros(0, dtype=np.float32)
    index: dict[str, int] = {}
    add = index.setdefault
    lengths = [len(ids) for ids, _, _ in active]
    total = sum(lengths)
    flat = np.fromiter(
        [add(item, len(index)) for ids, _, _ in active for item in ids], np.intp, total
    )
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    ranks = np.arange(1, total + 1, dtype=np.int64) - starts
    modes = np.repeat(np.asarray([mode for _, _, mode in active], dtype=np.int64), lengths)
    weights = np.repeat(np.asarray([w for _, w, _ in active]), lengths)
    score = np.bincount(flat, weights=weights / (rrf_k + ranks), minlength=len(index))
    best = np.full(len(index), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, flat, ranks * len(lists) + modes)
    fused = score.astype(np.float32)
    order = np.lexsort((best, -fused))[:k]
    ids = list(index)
    return [ids[i] for i in order.tolist()], fused[order]

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


def rrf(lists: Sequence[tuple[Sequence[str], float]], k: int, rrf_k: float = 60.0
        ) -> tuple[list[str], np.ndarray]:
    """Fuse ``(item ids best first, weight)`` lists into the top ``k``; returns the ids
    and their float32 fused scores (non-increasing)."""
    score: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}
    for mode, (ids, weight) in enumerate(lists):
        if weight <= 0:
            continue
        for rank, item in enumerate(ids, 1):
            score[item] = score.get(item, 0.0) + weight / (rrf_k + rank)
            if item not in best or (rank, mode) < best[item]:
                best[item] = (rank, mode)
    fused = {item: np.float32(s) for item, s in score.items()}
    order = sorted(score, key=lambda i: (-fused[i], best[i], i))[:k]
    return order, np.asarray([fused[i] for i in order], dtype=np.float32)

"""Would blending EASE with RP3beta lift cf above EASE where issue 15 needs it?

On MovieLens 100K under a per-user random hold-out, cf alone equals EASE (0.7089) and
the fused list is 0.0023 under it. RP3beta (Paudel et al. 2017: a random walk item to
user to item, edge weights raised to ``α``, divided by the target's popularity to the
``β``) is the other closed-form neighbourhood model that stays near EASE on MovieLens; a
score-level blend of two such models sometimes beats both. This probe scores EASE
(``λ``), RP3beta (``α``, ``β``) and the blend ``EASE/max + w·RP3/max`` (each user's
scores divided by their maximum) on

- the validation split the evaluation itself carves (``validation_split``), where the
  parameters and ``w`` are chosen, and
- a per-user temporal carve of the training rows (the other kind of target),

and on the test part only when ``--test`` asks, with the validation's choice.

    python bench/rp3_blend_probe.py --dataset ml-100k:../shared/data/ml-100k \\
        --protocol random [--test]

About 15 s for ML-100K on 2 cores. Result: docs/evaluation.md, "What was tried".
"""

from __future__ import annotations

import itertools

import numpy as np

from recall_engine.benchmarks.probe_split import probe_split
from recall_engine.evaluation.baselines import interaction_matrix
from recall_engine.evaluation.split import (
    Split,
    held_out_items,
    temporal_split,
    validation_split,
)

K = 100
LAMBDAS = (100.0, 250.0, 500.0, 1000.0)
RP3 = tuple(itertools.product((0.5, 0.75, 1.0), (0.0, 0.2, 0.35, 0.5)))  # (α, β)
BLENDS = (0.0, 0.1, 0.25, 0.5, 1.0)


class Scored:
    """Per split: the users asked, their held-out item columns, their histories, and the
    score matrices of every EASE ``λ`` and RP3beta ``(α, β)``."""

    def __init__(self, split: Split, items: list[str]) -> None:
        import scipy.linalg
        import scipy.sparse as sp

        col = {item: n for n, item in enumerate(items)}
        row = {u: n for n, u in enumerate(sorted(set(split.train.user_ids.tolist())))}
        x = interaction_matrix(split.train, row, col).astype(np.float64)
        truth = {u: {col[i] for i in f} for u, f in held_out_items(split).items() if u in row}
        self.asked = list(truth)
        self.truth = [truth[u] for u in self.asked]
        self.history = x[[row[u] for u in self.asked]].toarray()
        gram = (x.T @ x).toarray()
        self.ease = {}
        for lam in LAMBDAS:
            g = gram.copy()
            g[np.diag_indices_from(g)] += lam
            p = scipy.linalg.inv(g, overwrite_a=True, check_finite=False)
            p /= -np.diag(p)[None, :]
            np.fill_diagonal(p, 0.0)
            self.ease[lam] = self.history @ p
        counts = np.maximum(np.asarray(x.sum(0)).ravel(), 1.0)
        lengths = np.maximum(np.asarray(x.sum(1)).ravel(), 1.0)
        self.rp3 = {}
        for alpha, beta in RP3:
            user_item = (sp.diags(1 / lengths) @ x).power(alpha)
            item_user = (sp.diags(1 / counts) @ x.T.tocsr()).power(alpha)
            w = (item_user @ user_item).toarray() / counts[None, :] ** beta
            np.fill_diagonal(w, 0.0)
            self.rp3[(alpha, beta)] = self.history @ w

    def recall(self, scores: np.ndarray) -> float:
        s = np.where(self.history > 0, -np.inf, scores)
        top = np.argpartition(-s, K, axis=1)[:, :K]
        hits = [len(t & set(r)) / len(t) for t, r in zip(self.truth, top.tolist(), strict=True)]
        return float(np.mean(hits))

    def blend(self, lam: float, rp3: tuple[float, float], w: float) -> float:
        return self.recall(_unit(self.ease[lam]) + w * _unit(self.rp3[rp3]))


def _unit(scores: np.ndarray) -> np.ndarray:
    top = scores.max(axis=1, keepdims=True)
    return scores / np.where(top > 0, top, 1.0)


def main(argv: list[str] | None = None) -> None:
    outer, items, test = probe_split(__doc__.split("\n")[0], argv)
    parts = {"validation": Scored(validation_split(outer), items)}
    parts["temporal carve"] = Scored(temporal_split(outer.train), items)
    if test:
        parts["TEST"] = Scored(outer, items)
    val = parts["validation"]
    lam = max(LAMBDAS, key=lambda v: val.recall(val.ease[v]))
    rp3 = max(RP3, key=lambda v: val.recall(val.rp3[v]))
    print(f"chosen on the validation split: EASE λ {lam:g}; RP3beta α, β {rp3}")
    print("| blend weight w | " + " | ".join(parts) + " |")
    print("|---:|" + "---:|" * len(parts))
    for w in BLENDS:
        print(
            f"| {w:g} | " + " | ".join(f"{s.blend(lam, rp3, w):.4f}" for s in parts.values()) + " |"
        )
    print(
        "| RP3beta alone | "
        + " | ".join(f"{s.recall(s.rp3[rp3]):.4f}" for s in parts.values())
        + " |"
    )
    best = max(BLENDS, key=lambda w: val.blend(lam, rp3, w))
    print(f"the validation's choice: w = {best:g}")


if __name__ == "__main__":
    main()

"""Would a popularity-scaled L2 penalty lift cf's EASE above EASE where issue 15 needs it?

On MovieLens 100K under a per-user random hold-out, cf alone equals EASE (0.7089 both)
and the fused list is 0.0023 under it. Steck's denoising variants of EASE (EDLAE,
NeurIPS 2020) regularise item ``i`` by ``λ + α·G_ii`` (``G = XᵀX``, the item's count)
instead of ``λ``: dropout on the input, in closed form. This probe scores that family
against plain EASE (``α = 0``) on the split's validation carves, with the test part
read only when ``--test`` asks, after the choice.

For each ``(λ, α)`` of the grid: ``B = I − P·diag(1/diag P)`` with
``P = (G + diag(λ + α·G_ii))⁻¹``, the user's training items excluded, recall@100 on

- the validation split the evaluation itself carves (``validation_split``: for the
  random protocol a random 20 % of each user's training rows, for the others the same
  protocol again), and
- a per-user temporal carve of the training rows (the other kind of target).

    python bench/ease_l2_probe.py --dataset ml-100k:../shared/data/ml-100k \\
        --protocol random [--test]

About 40 s for ML-100K on 2 cores. Result:
docs/reports/2026-12-05-issue-15-fusion-and-new-items.md, "a popularity-scaled L2 for EASE,
probed".
"""

from __future__ import annotations

import numpy as np

from recall_engine.benchmarks.probe_split import probe_split
from recall_engine.evaluation.split import (
    Split,
    held_out_items,
    temporal_split,
    validation_split,
)

LAMBDAS = (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)
ALPHAS = (0.0, 0.1, 0.25, 0.5, 1.0)
K = 100


def recall_grid(split: Split, items: list[str]) -> dict[tuple[float, float], float]:
    """recall@K of every ``(λ, α)`` on ``split``, over users with something to find."""
    import scipy.linalg
    import scipy.sparse as sp

    col = {item: n for n, item in enumerate(items)}
    users = sorted(set(split.train.user_ids.tolist()))
    row = {u: n for n, u in enumerate(users)}
    x = sp.csr_matrix(
        (
            np.ones(len(split.train), np.float32),
            (
                np.fromiter(map(row.__getitem__, split.train.user_ids.tolist()), np.intp),
                np.fromiter(map(col.__getitem__, split.train.item_ids.tolist()), np.intp),
            ),
        ),
        shape=(len(users), len(items)),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    truth = {u: {col[i] for i in found} for u, found in held_out_items(split).items() if u in row}
    asked = list(truth)
    history = x[[row[u] for u in asked]].toarray()
    gram = (x.T @ x).toarray().astype(np.float64)
    counts = np.diag(gram).copy()
    out = {}
    for lam in LAMBDAS:
        for alpha in ALPHAS:
            g = gram.copy()
            g[np.diag_indices_from(g)] += lam + alpha * counts
            p = scipy.linalg.inv(g, overwrite_a=True, check_finite=False)
            p /= -np.diag(p)[None, :]
            np.fill_diagonal(p, 0.0)
            scores = history @ p
            scores[history > 0] = -np.inf
            top = np.argpartition(-scores, K, axis=1)[:, :K]
            out[(lam, alpha)] = float(
                np.mean(
                    [
                        len(truth[u] & set(t)) / len(truth[u])
                        for u, t in zip(asked, top.tolist(), strict=True)
                    ]
                )
            )
    return out


def report(name: str, grid: dict[tuple[float, float], float]) -> None:
    ease = max((v, key) for key, v in grid.items() if key[1] == 0.0)
    best = max((v, key) for key, v in grid.items())
    print(
        f"\n{name}: EASE {ease[0]:.4f} (λ {ease[1][0]:g}); best {best[0]:.4f} "
        f"(λ {best[1][0]:g}, α {best[1][1]:g}); gain {best[0] - ease[0]:+.4f}"
    )
    print("| α \\ λ | " + " | ".join(f"{lam:g}" for lam in LAMBDAS) + " |")
    print("|---|" + "---:|" * len(LAMBDAS))
    for alpha in ALPHAS:
        print(f"| {alpha:g} | " + " | ".join(f"{grid[(lam, alpha)]:.4f}" for lam in LAMBDAS) + " |")


def main(argv: list[str] | None = None) -> None:
    outer, items, test = probe_split(__doc__.split("\n")[0], argv)
    report("validation split", recall_grid(validation_split(outer), items))
    report("temporal carve of the training rows", recall_grid(temporal_split(outer.train), items))
    if test:
        report("TEST (read after the choice)", recall_grid(outer, items))


if __name__ == "__main__":
    main()

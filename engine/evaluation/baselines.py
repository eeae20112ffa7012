"""Reference recommenders that the channels are compared with on the same split.

Every baseline works on the binary user × item matrix of the training part (ratings as
implicit feedback: any interaction is a 1) and follows one shape::

    model = EASE(lam=500).fit(train_matrix)          # scipy.sparse CSR, users × items
    recs = model.recommend(histories, k)             # histories: CSR rows, one per user

``recommend`` returns a ``(n_users, k)`` int matrix of item indices, best first, ``-1``
padded; the items of each history row are never recommended. Model-based baselines
return an all ``-1`` row for an empty history (they know nothing about that user);
popularity answers everyone.

* :class:`Popularity` — items by number of distinct training users.
* :class:`ItemKNN` — cosine similarity between item columns, score = Σ similarities to
  the history items (Sarwar et al., WWW 2001; Deshpande & Karypis, TOIS 2004).
* :class:`EASE` — closed-form shallow autoencoder ``B = I - P·diag(1/diag(P))``,
  ``P = (XᵀX + λI)⁻¹`` (Steck, WWW 2019); λ picked on the validation split by
  :func:`tune_ease`.
* :class:`ALS` — implicit-feedback matrix factorisation (Hu, Koren & Volinsky, ICDM 2008)
  from ``implicit.cpu.als``; user vectors are folded in from the history rows
  (``recalculate_user=True``), as a service would do for a history it is sent.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from recall_engine.evaluation.metrics import Truth, evaluate
from recall_engine.offline.data.interactions import Interactions

__all__ = [
    "ALS",
    "BASELINES",
    "EASE",
    "EASE_GRID",
    "Baseline",
    "ItemKNN",
    "Popularity",
    "interaction_matrix",
    "make_baseline",
    "tune_ease",
]

EASE_GRID = (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)
BATCH = 512


def interaction_matrix(
    data: Interactions, user_index: Mapping[str, int], item_index: Mapping[str, int]
) -> sp.csr_matrix:
    """Binary CSR matrix ``len(user_index) × len(item_index)``: 1 where the user has any
    row with the item. Rows of unknown users or items are dropped."""
    users = np.fromiter(
        (user_index.get(u, -1) for u in data.user_ids.tolist()), dtype=np.int64, count=len(data)
    )
    items = np.fromiter(
        (item_index.get(i, -1) for i in data.item_ids.tolist()), dtype=np.int64, count=len(data)
    )
    keep = (users >= 0) & (items >= 0)
    m = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (users[keep], items[keep])),
        shape=(len(user_index), len(item_index)),
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class Baseline(abc.ABC):
    """Fit on a training matrix, score history rows, recommend the top k unseen items."""

    name = "baseline"
    needs_history = True  # an empty history gets no recommendations

    @abc.abstractmethod
    def fit(self, train: sp.csr_matrix) -> Baseline:
        """Learn from the binary users × items training matrix; return ``self``."""

    @abc.abstractmethod
    def scores(self, histories: sp.csr_matrix) -> np.ndarray:
        """Dense ``(rows, items)`` float scores for a batch of history rows."""

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, for the report."""
        return {}

    def recommend(self, histories: sp.csr_matrix, k: int) -> np.ndarray:
        """Top ``k`` item indices per history row, history items excluded, ``-1`` padded."""
        histories = sp.csr_matrix(histories)
        n, n_items = histories.shape
        out = np.full((n, k), -1, dtype=np.int64)
        for start in range(0, n, BATCH):
            rows = histories[start : start + BATCH]
            s = np.asarray(self.scores(rows), dtype=np.float32)
            out[start : start + rows.shape[0]] = top_k(s, rows, k)
        if self.needs_history:
            out[np.diff(histories.indptr) == 0] = -1
        return out


def top_k(scores: np.ndarray, histories: sp.csr_matrix, k: int) -> np.ndarray:
    """Best ``k`` columns per row of ``scores`` after masking each row's history items;
    ties go to the lower item index so results are reproducible."""
    scores = scores.copy()
    r, c = histories.nonzero()
    scores[r, c] = -np.inf
    n_items = scores.shape[1]
    kk = min(k, n_items)
    part = (
        np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        if kk < n_items
        else np.broadcast_to(np.arange(n_items), scores.shape).copy()
    )
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    best = np.take_along_axis(part, order, axis=1)
    best_scores = np.take_along_axis(picked, order, axis=1)
    best[~np.isfinite(best_scores)] = -1
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    out[:, :kk] = best
    return out


class Popularity(Baseline):
    """Most popular unseen items: popularity = number of distinct training users."""

    name = "popularity"
    needs_history = False

    def __init__(self) -> None:
        self._counts = np.zeros(0, dtype=np.float32)

    def fit(self, train: sp.csr_matrix) -> Popularity:
        self._counts = np.asarray(train.sum(axis=0), dtype=np.float32).ravel()
        return self

    def scores(self, histories: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self._counts, histories.shape)


class ItemKNN(Baseline):
    """Item-item cosine on the binary matrix. ``neighbours`` keeps each item's most
    similar items only (``None``: all of them); ``shrink`` damps similarities computed
    from few co-occurrences (``c / (|a||b| + shrink)``)."""

    name = "itemknn"

    def __init__(self, neighbours: int | None = None, shrink: float = 0.0) -> None:
        self.neighbours = neighbours
        self.shrink = shrink
        self._sim: sp.csr_matrix | None = None

    def fit(self, train: sp.csr_matrix) -> ItemKNN:
        x = sp.csc_matrix(train, dtype=np.float32)
        co = (x.T @ x).tocsr()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
        co.setdiag(0)
        co.eliminate_zeros()
        coo = co.tocoo()
        coo.data = coo.data / (norms[coo.row] * norms[coo.col] + self.shrink)
        co = coo.tocsr()
        self._sim = _keep_top(co, self.neighbours) if self.neighbours else co
        return self

    def scores(self, histories: sp.csr_matrix) -> np.ndarray:
        assert self._sim is not None, "fit() first"
        return (histories @ self._sim).toarray()

    def params(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours or "all", "shrink": self.shrink}


def _keep_top(sim: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the ``n`` largest entries of every row (rows = the item whose neighbours
    these are; the matrix is symmetric, so rows and columns are interchangeable)."""
    sim = sim.tocsr()
    rows, cols, vals = [], [], []
    for i in range(sim.shape[0]):
        lo, hi = sim.indptr[i], sim.indptr[i + 1]
        if hi - lo > n:
            top = np.argpartition(-sim.data[lo:hi], n - 1)[:n] + lo
        else:
            top = np.arange(lo, hi)
        rows.append(np.full(len(top), i))
        cols.append(sim.indices[top])
        vals.append(sim.data[top])
    # Transpose: score(u, j) = Σ_i∈history sim(i, j) over the neighbours kept for j.
    kept = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(cols), np.concatenate(rows))), shape=sim.shape
    )
    return kept


class EASE(Baseline):
    """Embarrassingly shallow autoencoder (Steck 2019); ``lam`` is the L2 weight λ.

    Only items with a training interaction take part (the others' columns of B would be
    zero, so they score 0 either way), and ``(XᵀX + λI)⁻¹`` is a float32 Cholesky
    inverse: XᵀX + λI is symmetric positive definite and, with λ ≥ 1, well conditioned.
    About four times faster than a float64 LU inverse of the full catalogue.
    """

    name = "ease"

    def __init__(self, lam: float = 500.0) -> None:
        self.lam = lam
        self._b: np.ndarray | None = None
        self._active = np.zeros(0, dtype=np.int64)
        self._n_items = 0

    def fit(self, train: sp.csr_matrix) -> EASE:
        x = sp.csc_matrix(train, dtype=np.float32)
        self._n_items = x.shape[1]
        self._active = np.flatnonzero(np.diff(x.indptr))
        xa = x[:, self._active]
        g = (xa.T @ xa).toarray()
        g[np.diag_indices_from(g)] += self.lam
        p = _spd_inverse(g)
        p /= -np.diag(p)  # column j divided by -P_jj: B = -P / diag(P)
        p[np.diag_indices_from(p)] = 0.0
        self._b = p
        return self

    def scores(self, histories: sp.csr_matrix) -> np.ndarray:
        assert self._b is not None, "fit() first"
        out = np.zeros((histories.shape[0], self._n_items), dtype=np.float32)
        h = sp.csc_matrix(histories, dtype=np.float32)[:, self._active]
        out[:, self._active] = h @ self._b
        return out

    def params(self) -> dict[str, Any]:
        return {"lambda": self.lam}


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix (LAPACK potrf + potri), in place."""
    from scipy.linalg import lapack

    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    c, info = potrf(a, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Gram matrix not positive definite (potrf {info})")
    inv, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky inverse failed (potri {info})")
    upper = np.triu(inv)  # potri fills the upper triangle only
    upper += np.triu(upper, 1).T
    return upper


class ALS(Baseline):
    """``implicit``'s CPU ALS with confidence ``1 + alpha·r`` on the binary matrix.

    Defaults (factors 64, regularisation 0.05, alpha 2, 15 iterations) were checked on
    the ML-1M validation split; ``threads`` defaults to the CPUs this process may use.
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed
        self.threads = threads or _cpus()
        self._model: Any = None

    def fit(self, train: sp.csr_matrix) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit parallelises itself
            self._model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                num_threads=self.threads,
                random_state=self.seed,
            )
            self._model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
        return self

    def scores(self, histories: sp.csr_matrix) -> np.ndarray:
        assert self._model is not None, "fit() first"
        users = self._model.recalculate_user(
            np.arange(histories.shape[0]), sp.csr_matrix(histories, dtype=np.float32)
        )
        return np.asarray(users) @ np.asarray(self._model.item_factors).T

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "threads": self.threads,
        }


def _cpus() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


BASELINES: dict[str, type[Baseline]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
    "als": ALS,
}


def make_baseline(name: str, **params: Any) -> Baseline:
    """A baseline by name; ``ValueError`` naming the known ones otherwise."""
    try:
        return BASELINES[name](**params)
    except KeyError:
        raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})") from None


def tune_ease(
    train: sp.csr_matrix,
    histories: sp.csr_matrix,
    truth: Truth,
    k: int,
    grid: Sequence[float] = EASE_GRID,
) -> tuple[float, dict[float, float]]:
    """The λ of ``grid`` with the best recall@k of ``EASE(λ).fit(train)`` on
    (``histories`` → ``truth``), and every λ's recall."""
    scores: dict[float, float] = {}
    for lam in grid:
        recs = EASE(lam).fit(train).recommend(histories, k)
        scores[float(lam)] = evaluate(recs, truth, [k], train.shape[1])[k]["recall"]
    best = max(scores, key=lambda lam: (scores[lam], -lam))
    return best, scores

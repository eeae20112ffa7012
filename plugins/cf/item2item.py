"""Item-to-item collaborative filtering: neighbour lists learned from the user-item
matrix, and the serving-time aggregation over a request's history.

Learning (build time; needs SciPy, imported lazily) takes the users x items matrix
``X`` (binary, or the interaction weights with ``use_weights``) and keeps, per item,
its ``neighbours`` best positive-similarity items:

``cosine``
    ``c_ij / (sqrt(c_ii c_jj) + shrink)`` with ``C = XᵀX`` (item co-occurrence), computed
    in row blocks of sparse products so memory stays bounded for large catalogues.
``ease``
    EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019):
    ``P = (XᵀX + λI)⁻¹``, ``B = I - P / diag(P)`` (so ``B_ii = 0``); item ``i``'s
    neighbours are the largest entries of row ``i`` (``score_j = Σ_i x_i B_ij``). A
    dense ``n x n`` inverse: ``auto`` picks it up to ``ease_max_items`` (20,000) items.
``swing``
    Swing (Yang et al., "Large Scale Product Graph Construction for Recommendation in
    E-commerce", 2020): ``sim(i, j) = Σ_{u≠v ∈ U_i ∩ U_j} w_u w_v / (α + |I_u ∩ I_v|)``
    with user weights ``w_u = (|I_u| + 5)^-0.35``; at most ``swing_max_users`` users per
    item (a seeded sample) bound the quadratic cost.

Serving (NumPy only): :meth:`NeighbourTable.aggregate` gathers the neighbour lists of
the history items from compact CSR arrays, weights each list by its history item's
recency weight and sums per candidate (``np.bincount`` over the concatenated lists).

Artifact ``item2item.npz``: ``indptr`` int64 ``[n + 1]``, ``indices`` int32 and
``sims`` float32 (each row sorted by similarity, best first). With EASE up to
``ease_dense_max_items`` items the build also writes ``ease.npy`` (the whole ``B``,
float32, :class:`DenseEase`), which serving memory-maps and scores with exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

ARTIFACT = "item2item.npz"
DENSE_ARTIFACT = "ease.npy"
# Above this many items a dense score vector per request costs more than sorting
# the (at most history x neighbours) candidate entries.
DENSE_MAX_ITEMS = 262_144


@dataclass(slots=True, frozen=True, eq=False)
class NeighbourTable:
    """Neighbour lists in CSR form: row ``i`` is ``indices[indptr[i]:indptr[i+1]]``
    with similarities ``sims[...]``, best first, all > 0."""

    indptr: np.ndarray
    indices: np.ndarray
    sims: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def aggregate(self, history: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(candidates, scores)``: every item in the neighbour lists of ``history``
        (item indices) with ``Σ weight_h * sim(h, item)``, in no particular order."""
        starts = self.indptr[history]
        lengths = self.indptr[history + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # positions of all entries of the gathered rows, in one vectorised step
        offsets = np.cumsum(lengths) - lengths
        pos = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lengths)
        cand = self.indices[pos]
        vals = self.sims[pos] * np.repeat(weights, lengths)
        if self.n_items <= DENSE_MAX_ITEMS:
            # sims and weights are > 0, so a touched item has a score > 0
            dense = np.bincount(cand, weights=vals, minlength=self.n_items)
            touched = np.flatnonzero(dense > 0)
            return touched, dense[touched].astype(np.float32)
        uniq, inverse = np.unique(cand, return_inverse=True)
        return uniq.astype(np.int64), np.bincount(inverse, weights=vals).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        from recall_engine.runtime.npz_map import save_npz

        with open(path, "wb") as fh:
            save_npz(fh, indptr=self.indptr, indices=self.indices, sims=self.sims)

    @classmethod
    def load(cls, path: str | os.PathLike[str], n_items: int) -> NeighbourTable:
        """Map and check ``item2item.npz`` (read-only, shared by the host's processes:
        at a million items the lists are ≈ 300 MiB); errors name the file and the
        problem."""
        from pathlib import Path

        from recall_engine.runtime.npz_map import map_npz

        z = map_npz(Path(path))
        missing = {"indptr", "indices", "sims"} - set(z)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        table = cls(  # no copy when the build's dtypes are there, as it writes them
            z["indptr"].astype(np.int64, copy=False),
            z["indices"].astype(np.int32, copy=False),
            z["sims"].astype(np.float32, copy=False),
        )
        if table.n_items != n_items:
            raise ValueError(f"{path}: {table.n_items} rows, the vocabulary has {n_items}")
        if (
            len(table.indices) != len(table.sims)
            or table.indptr[0] != 0
            or table.indptr[-1] != len(table.indices)
            or np.any(np.diff(table.indptr) < 0)
        ):
            raise ValueError(f"{path}: inconsistent CSR arrays")
        if len(table.indices) and (table.indices.min() < 0 or table.indices.max() >= n_items):
            raise ValueError(f"{path}: neighbour index out of range")
        return table


# ----------------------------------------------------------------------------- learning


def user_item_matrix(
    users: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    n_users: int,
    n_items: int,
    use_weights: bool,
) -> sp.csr_matrix:
    """Users x items, float32; repeated interactions sum (weighted) or count once."""
    import scipy.sparse as sp

    values = weights if use_weights else np.ones(len(users), dtype=np.float32)
    x = sp.csr_matrix((values.astype(np.float32), (users, items)), shape=(n_users, n_items))
    x.sum_duplicates()
    if not use_weights:
        x.data[:] = 1.0
    return x


def learn(
    x: sp.csr_matrix,
    method: str,
    *,
    neighbours: int,
    ease_lambda: float = 500.0,
    cosine_shrink: float = 10.0,
    swing_alpha: float = 1.0,
    swing_max_users: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> NeighbourTable:
    """Neighbour lists from the users x items matrix ``x`` (see the module docstring)."""
    if method == "cosine":
        return cosine(x, neighbours, shrink=cosine_shrink, progress=progress)
    if method == "ease":
        return ease(x, neighbours, lam=ease_lambda, progress=progress)
    if method == "swing":
        return swing(
            x,
            neighbours,
            alpha=swing_alpha,
            max_users=swing_max_users,
            seed=seed,
            progress=progress,
        )
    raise ValueError(f"unknown item2item method {method!r}")


def cosine(
    x: sp.csr_matrix,
    neighbours: int,
    *,
    shrink: float = 10.0,
    progress: bool = False,
    max_block_entries: int = 20_000_000,
) -> NeighbourTable:
    xt = x.T.tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()).astype(np.float32)
    parts = []
    for lo, hi in _cosine_blocks(x, xt, max_block_entries, progress):
        c = (xt[lo:hi] @ x).tocoo()
        rows = c.row + lo
        denom = norms[rows] * norms[c.col] + shrink
        sims = np.divide(c.data, denom, out=np.zeros_like(c.data), where=denom > 0)
        parts.append(_top_n(rows, c.col, sims, neighbours))
    return _concat(parts, x.shape[1])


def _cosine_blocks(
    x: sp.csr_matrix, xt: sp.csr_matrix, max_entries: int, progress: bool
) -> list[tuple[int, int]]:
    """Item row ranges whose co-occurrence rows hold at most about ``max_entries``
    entries together: row ``i`` has at most ``Σ_{u ∈ U_i} |I_u|`` (one popular item in
    a large catalogue can co-occur with most of it), so memory stays bounded."""
    user_degree = np.diff(x.indptr).astype(np.float64)
    bound = np.maximum(xt @ user_degree, 1.0)
    ends = np.searchsorted(
        np.cumsum(bound),
        np.arange(1, int(bound.sum() // max_entries) + 2) * float(max_entries),
        side="right",
    )
    cuts = np.unique(np.r_[0, np.clip(ends, 1, x.shape[1]), x.shape[1]])
    blocks = list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True))
    if progress:
        from tqdm import tqdm

        return list(tqdm(blocks, desc="cf cosine", unit="block"))
    return blocks


def ease_matrix(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's full ``n x n`` weight matrix ``B`` (float32, zero diagonal): the dense
    scorer ``cf`` keeps up to ``ease_dense_max_items`` items (see :class:`DenseEase`)."""
    import scipy.linalg

    n = x.shape[1]
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices(n)] += lam
    p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    del gram
    p /= -np.diag(p).copy()[None, :]
    p[np.diag_indices(n)] = 0.0
    return p.astype(np.float32)


def dense_neighbours(b: np.ndarray, neighbours: int, progress: bool = False) -> NeighbourTable:
    """Each row's ``neighbours`` largest positive entries of a dense similarity matrix."""
    n = b.shape[0]
    step = 2048
    parts = [
        _top_n_dense(np.array(b[lo : lo + step]), lo, neighbours)
        for lo in _blocks(n, step, progress, "cf neighbours")
    ]
    return _concat(parts, n)


@dataclass(slots=True, frozen=True, eq=False)
class DenseEase:
    """EASE's whole ``B`` (``ease.npy``, memory-mapped at load so worker processes
    share one copy): ``score_j = Σ_h w_h B_hj``, negative weights included, which the
    neighbour lists drop. Exact EASE when every history item weighs 1."""

    b: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.b.shape[0])

    def aggregate(self, history: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(every item index, its score)``: the history's rows of ``B`` summed with
        ``weights``, 256 rows at a time (a long history reads its rows in pieces)."""
        scores = np.zeros(self.n_items, dtype=np.float32)
        for lo in range(0, len(history), 256):
            scores += weights[lo : lo + 256].astype(np.float32) @ self.b[history[lo : lo + 256]]
        return np.arange(self.n_items, dtype=np.int64), scores

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "wb") as fh:
            np.save(fh, np.ascontiguousarray(self.b, dtype=np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike[str], n_items: int) -> DenseEase:
        b = np.load(path, mmap_mode="r", allow_pickle=False)
        if b.dtype != np.float32 or b.shape != (n_items, n_items):
            raise ValueError(
                f"{path}: expected a float32 {n_items} x {n_items} matrix, got {b.dtype} {b.shape}"
            )
        return cls(b)


def ease(
    x: sp.csr_matrix,
    neighbours: int,
    *,
    lam: float = 500.0,
    progress: bool = False,
    block: int = 2048,
) -> NeighbourTable:
    import scipy.linalg

    n = x.shape[1]
    dtype = np.float64 if n <= 10_000 else np.float32  # 20k x 20k float64 is 3.2 GB
    gram = (x.T @ x).toarray().astype(dtype, copy=False)
    gram[np.diag_indices(n)] += lam
    p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    del gram
    diag = np.diag(p).copy()
    parts = []
    for lo in _blocks(n, block, progress, "cf ease"):
        hi = min(lo + block, n)
        b = -p[lo:hi] / diag[None, :]
        b[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        parts.append(_top_n_dense(b, lo, neighbours))
    return _concat(parts, n)


def swing(
    x: sp.csr_matrix,
    neighbours: int,
    *,
    alpha: float = 1.0,
    max_users: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> NeighbourTable:
    import scipy.sparse as sp

    x = x.tocsr(copy=True)
    x.data[:] = 1.0
    xt = x.T.tocsr()
    degree = np.diff(x.indptr)
    user_w = np.power(degree + 5.0, -0.35)
    rng = np.random.default_rng(seed)
    rows, cols, vals = [], [], []
    for i in _blocks(x.shape[1], 1, progress, "cf swing"):
        users = xt.indices[xt.indptr[i] : xt.indptr[i + 1]]
        if len(users) < 2:
            continue
        if len(users) > max_users:
            users = np.sort(rng.choice(users, max_users, replace=False))
        sub = x[users]
        items, local = np.unique(sub.indices, return_inverse=True)
        owner = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
        sub = sp.csr_matrix(
            (np.ones(len(local), np.float32), (owner, local)), shape=(len(users), len(items))
        )
        # small products through SciPy's single-threaded kernels: a BLAS thread pool
        # spinning per item costs far more than the arithmetic on a busy machine
        overlap = (sub @ sub.T).toarray()
        w = np.outer(user_w[users], user_w[users]) / (alpha + overlap)
        np.fill_diagonal(w, 0.0)
        wd = np.asarray(sub.T @ w)  # [items, users]: (W X_sub)ᵀ, W is symmetric
        sims = np.bincount(local, weights=wd[local, owner], minlength=len(items))
        sims[items == i] = 0.0
        keep = sims > 0
        rows.append(np.full(int(keep.sum()), i))
        cols.append(items[keep])
        vals.append(sims[keep])
    if not rows:
        return _concat([], x.shape[1])
    return _concat(
        [_top_n(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), neighbours)],
        x.shape[1],
    )


# ----------------------------------------------------------------------------- helpers


def _blocks(n: int, block: int, progress: bool, desc: str) -> Any:
    steps = range(0, n, block)
    if not progress:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc=desc, unit="block" if block > 1 else "item")


Triplets = tuple[np.ndarray, np.ndarray, np.ndarray]


def _top_n(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n: int) -> Triplets:
    """Per row, the ``n`` largest positive entries off the diagonal, best first (ties:
    lower column first)."""
    keep = (sims > 0) & (rows != cols)
    rows, cols, sims = rows[keep], cols[keep], sims[keep]
    order = np.lexsort((cols, -sims, rows))
    rows, cols, sims = rows[order], cols[order], sims[order]
    if len(rows):
        first = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
        rank = np.arange(len(rows)) - np.repeat(first, np.diff(np.r_[first, len(rows)]))
        keep = rank < n
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
    return rows.astype(np.int64), cols.astype(np.int32), sims.astype(np.float32)


def _top_n_dense(block: np.ndarray, lo: int, n: int) -> Triplets:
    width = block.shape[1]
    if n < width:
        cand = np.argpartition(-block, n - 1, axis=1)[:, :n]
    else:
        cand = np.broadcast_to(np.arange(width), block.shape)
    rows = np.repeat(np.arange(block.shape[0]) + lo, cand.shape[1])
    cols = cand.ravel()
    return _top_n(rows, cols, block[rows - lo, cols], n)


def _concat(parts: list[Triplets], n_items: int) -> NeighbourTable:
    if parts:
        rows = np.concatenate([p[0] for p in parts])
        cols = np.concatenate([p[1] for p in parts])
        sims = np.concatenate([p[2] for p in parts])
    else:
        rows = np.zeros(0, np.int64)
        cols = np.zeros(0, np.int32)
        sims = np.zeros(0, np.float32)
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_items), out=indptr[1:])
    return NeighbourTable(indptr, cols, sims)

"""A usearch vector index keyed by string item ids (DESIGN decision 7).

:class:`VectorIndex` wraps one ``usearch.index.Index`` and adds what a recall channel
needs around it:

* **String ids.** usearch keys are ``uint64``; the wrapper hands out keys 0, 1, 2, … in
  insertion order and keeps both directions in an :class:`~recall_engine.runtime.id_map.IdMap`:
  fixed-width id columns saved as ``ids.cols`` beside ``ids.json`` and mapped read-only
  by every process that loads the bundle (ids found by ``sorted_str.find_sorted``), with the
  online changes on top. Keys are never reused: a deleted id leaves a hole; re-adding it
  takes a new key. The mapping is saved with the index, so keys are stable across
  save/load.
* **Upserts and deletes.** ``add`` replaces the vector of an id that is already present
  (usearch itself refuses duplicate keys), ``delete`` removes ids. Both are visible to the
  next search.
* **Scores where larger is better.** usearch returns distances; the wrapper converts them
  (see :data:`SCORES`): ``cos`` → cosine similarity ``1 - d``, ``ip`` → dot product
  ``1 - d`` (usearch's inner-product distance is ``1 - dot``), ``l2sq`` → ``-d``.
* **Exact search for small catalogues.** Below ``exact_below`` items every search is a
  brute-force scan by usearch (``search(..., exact=True)``) over the vectors as stored
  (so f16/i8 scores match what the graph search would give once the catalogue grows).
  Graph search on a tiny catalogue buys nothing and may miss items.
* **Filters after an over-fetch.** ``exclude`` ids and a ``keep`` callback are applied
  to an over-fetched candidate list; the fetch grows (at least doubling, or to what the
  share that survived says is needed) until ``k`` survive, the whole index was seen
  (switching to an exact scan once a graph search would cost as much) or ``max_fetch``
  was reached. Post-filtering suits filters that keep a fair share of the query's
  neighbourhood; without ``max_fetch`` a filter whose items lie far from the query scans
  the whole index, round after round (seconds per query at a million items), so serving
  code passes one (partition catalogues with such filters into several indexes).

Threading: every call into usearch runs under one lock per index. usearch releases the
GIL while it works, so other Python threads (gRPC, ONNX Runtime) keep running, but two
usearch calls on the same index never overlap: usearch's Python binding runs each call on
its own worker threads numbered from 0 and indexes its per-thread search contexts by that
number, so two concurrent calls from different Python threads would share context 0.
A batch ``search`` still uses ``threads`` cores inside its one call; single queries from
many threads queue for the index (p50 about 1 ms per query on 1M × 384 f32 items, see
``recall-engine bench index``), so batch them where latency allows.

Memory-mapped indexes (``load(..., view=True)``) share one copy of the graph and vectors
between every process of a host that opens the same file: the pages are the kernel's
page cache, mapped read-only, so ``serve --processes N`` holds the index once, not N
times (docs/scale-out.md, "Vectors beyond one host"). usearch cannot change a viewed
index, so changes go to a small in-memory **overlay**: ``add`` puts the vector into a
second usearch index held by this process (an id already in the file keeps its key; its
file entry is marked dead), ``delete`` marks the file entry dead or removes it from the
overlay. A search asks both, drops dead entries, merges by distance and cuts the merged
list where either side may have had nearer items it did not return, so exact searches
stay exact. ``save`` writes the merged state. Load with ``view=False`` to read the whole
index into this process's memory instead.

Quantisation: ``f16`` halves memory with no measurable recall loss on embeddings; ``i8``
quarters it but usearch scales components by 127 and clips them to [-1, 1], which is only
meaningful for unit vectors, so ``i8`` is accepted with ``metric="cos"`` only.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401 - must load before usearch: the reverse order segfaults
import usearch  # noqa: I001 - (onnxruntime-gpu 1.31 + usearch 2.26, libstdc++ symbol clash)
from usearch.index import BatchMatches, Index

from recall_engine.runtime import native_time
from recall_engine.runtime.files import atomic_path, atomic_write, read_json_object
from recall_engine.runtime.id_map import IDS_COLUMNS_FILE, IdMap

METRICS = ("cos", "ip", "l2sq")
DTYPES = ("f32", "f16", "bf16", "i8")

INDEX_FILE = "index.usearch"
IDS_FILE = "ids.json"
META_FILE = "index.json"
FORMAT_VERSION = 1
#: :meth:`VectorIndex.vectors` keeps an index's vectors in one float32 matrix up to this
#: size (32 MiB: 21,845 items of 384 dimensions, 131,072 of 64), a private copy per
#: process; a larger index is read from usearch each time
DENSE_MAX_BYTES = 32 * 2**20

Keep = Callable[[list[str]], Sequence[bool]]
"""Filter callback: gets candidate ids (best first), returns one bool per id (True:
keep). A NumPy bool array is fine. Called outside the index lock, once per query and
fetch round."""

Hits = tuple[list[str], np.ndarray]
"""One query's answer: item ids best first and float32 scores (larger is better)."""


def _similarity(distances: np.ndarray) -> np.ndarray:
    return 1.0 - distances


def _negated(distances: np.ndarray) -> np.ndarray:
    return -distances


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "cos": _similarity,  # usearch cos distance is 1 - cosine similarity
    "ip": _similarity,  # usearch ip distance is 1 - dot product
    "l2sq": _negated,  # squared Euclidean distance: nearer is better
}


class VectorIndex:
    """An approximate (HNSW) nearest-neighbour index over string item ids. Thread-safe.

    ``dim``: vector length. ``metric``: ``"cos"``, ``"ip"`` or ``"l2sq"``. ``dtype``:
    how vectors are stored, ``"f32"``, ``"f16"`` or ``"i8"`` (``i8`` needs ``cos``).
    ``connectivity``, ``expansion_add``, ``expansion_search``: HNSW's M, efConstruction
    and ef. ``exact_below``: catalogues with fewer items are searched exactly. The
    default ef of 256 keeps recall@100 at 0.98 on 1M x 384 clustered vectors, against 0.90
    at usearch's 64, for about 1 ms more (docs/vectors.md).
    ``threads``: cores usearch may use inside one batch add/search (0: all).
    """

    #: Which :class:`~recall_engine.runtime.vector_store.VectorStore` this is.
    kind = "usearch"

    def __init__(
        self,
        dim: int,
        *,
        metric: str = "cos",
        dtype: str = "f32",
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 256,
        exact_below: int = 20_000,
        threads: int = 0,
    ) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dtype == "i8" and metric != "cos":
            raise ValueError(
                "dtype 'i8' needs metric 'cos' (usearch clips i8 components to "
                "[-1, 1]); normalise the vectors and use 'cos', or use 'f16'"
            )
        for name, value in (
            ("connectivity", connectivity),
            ("expansion_add", expansion_add),
            ("expansion_search", expansion_search),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if exact_below < 0 or threads < 0:
            raise ValueError("exact_below and threads must be >= 0")
        self.dim = dim
        self.metric = metric
        self.dtype = dtype
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self.exact_below = exact_below
        self.threads = threads
        self._index = Index(
            ndim=dim,
            metric=metric,
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        self._score = SCORES[metric]
        # item id <-> key: mapped columns from the bundle, online changes on top
        self._map = IdMap.from_list([])
        self._next_key = 0
        # Memory-mapped base (view=True): keys below _base_keys live in the file; online
        # changes go to _overlay, and file entries deleted or replaced are marked in _dead.
        self._viewed = False
        self._base_keys = 0
        self._overlay: Index | None = None
        self._overlay_keys: set[int] = set()
        self._dead: np.ndarray | None = None
        self._dead_count = 0
        self._lock = threading.Lock()
        # the stored vectors of keys 0 .. n-1 as one float32 matrix, for an index small
        # enough (DENSE_MAX_BYTES): what vectors() reads instead of asking usearch key
        # by key; built at its first call, kept up to date by add() (None: not built)
        self._dense: tuple[np.ndarray, np.ndarray] | None = None
        self._dense_tried = False

    # -- reading ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._map

    def contains_many(self, item_ids: Sequence[str]) -> np.ndarray:
        """``in`` for many ids at once (a bool array), one vectorised search."""
        return self._map.present(item_ids)

    def __repr__(self) -> str:
        return (
            f"VectorIndex(dim={self.dim}, metric={self.metric!r}, dtype={self.dtype!r}, "
            f"items={len(self)}{', view' if self._viewed else ''})"
        )

    @property
    def viewed(self) -> bool:
        """Whether the index file is memory-mapped (``load(..., view=True)``): shared
        with the other processes that map it; changes live in this process's overlay."""
        return self._viewed

    @property
    def overlay_size(self) -> int:
        """Vectors held in the in-memory overlay of a viewed index (0 otherwise)."""
        return len(self._overlay_keys)

    @property
    def expansion_search(self) -> int:
        return self._index.expansion_search

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        with self._lock:
            for index in (self._index, self._overlay):
                if index is not None:
                    index.expansion_search = value  # type: ignore[misc]  # usearch's stub says read-only; the setter exists

    @property
    def hardware_acceleration(self) -> str:
        """The SIMD kernel family usearch picked for this dtype and metric on this CPU
        (e.g. ``"genoa"`` for bf16 with AVX-512 BF16, ``"skylake"``, ``"serial"``)."""
        return str(self._index.hardware_acceleration)

    @property
    def memory_usage(self) -> int:
        """Bytes usearch reports for the graph and vectors (a viewed index counts only
        what it allocated, not the mapped file, plus its overlay)."""
        overlay = self._overlay.memory_usage if self._overlay is not None else 0
        return int(self._index.memory_usage) + int(overlay)

    def ids(self) -> list[str]:
        """Item ids in insertion order (a copy)."""
        with self._lock:
            return list(self._map)

    def sample_ids(self, n: int) -> list[str]:
        """At most ``n`` live ids spread evenly over the keys, without listing every id
        (a list of a million interned ids grows the process's interned-string table for
        good: ≈ 30 MiB)."""
        with self._lock:
            keys = self._map.live_keys()
            if not len(keys) or n <= 0:
                return []
            picked = keys[:: max(1, len(keys) // n)][:n].astype(np.int64)
            return [i for i in self._map.ids_of(picked).tolist() if i is not None]

    def vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """The stored vectors of the known ids among ``item_ids``, as a float32
        ``[found, dim]`` matrix (dequantised like :meth:`vector`), and the positions in
        ``item_ids`` they belong to. One usearch call however many ids: a history of 20
        items costs one lookup, not 20. An index of at most :data:`DENSE_MAX_BYTES` of
        float32 vectors keeps them in one matrix and reads its rows instead (every
        vector channel builds a history vector this way on every request)."""
        positions, keys = [], []
        for position, key in enumerate(self._map.keys_of(item_ids)):
            if key is not None:
                positions.append(position)
                keys.append(key)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32), []
        with self._lock:
            dense = self._dense if self._dense_tried else self._build_dense()
            if dense is not None:
                matrix, have = dense
                wanted = np.asarray(keys, dtype=np.intp)
                if int(wanted.max()) < len(have) and bool(have[wanted].all()):
                    return matrix[wanted], positions
            rows = self._get(keys)
        # a key deleted between the lookup above and the lock comes back as None
        found = [(p, r) for p, r in zip(positions, rows, strict=True) if r is not None]
        if not found:
            return np.zeros((0, self.dim), dtype=np.float32), []
        return (
            np.stack([r for _, r in found]).astype(np.float32, copy=False),
            [p for p, _ in found],
        )

    def vector(self, item_id: str) -> np.ndarray:
        """The stored vector of ``item_id`` as float32: f16/i8 come back dequantised,
        and i8 (cos) vectors come back unit-normalised. ``KeyError`` if unknown."""
        with self._lock:
            key = self._map.get(item_id)
            if key is None:
                raise KeyError(item_id)
            return np.asarray(self._get([key])[0], dtype=np.float32)

    def _build_dense(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Under the lock: the dense copy of keys 0 .. n-1 (see :meth:`vectors`), or
        None for an index too large for it. ``have`` marks the keys usearch holds."""
        self._dense_tried = True
        n = self._next_key
        if not n or n * self.dim * 4 > DENSE_MAX_BYTES:
            return None
        matrix = np.zeros((n, self.dim), dtype=np.float32)
        have = np.zeros(n, dtype=bool)
        for key, row in enumerate(self._get(range(n))):
            if row is not None:
                matrix[key] = row
                have[key] = True
        self._dense = (matrix, have)
        return self._dense

    def _refresh_dense(self, keys: np.ndarray) -> None:
        """Under the lock, after ``keys`` were written: their rows of the dense copy,
        read back from usearch (so a quantised index gives what it stores); keys past
        its end are read from usearch by :meth:`vectors`."""
        if self._dense is None:
            return
        matrix, have = self._dense
        inside = [int(k) for k in keys.tolist() if k < len(have)]
        for key, row in zip(inside, self._get(inside), strict=True):
            if row is None:
                have[key] = False
            else:
                matrix[key] = row
                have[key] = True

    def _get(self, keys: Sequence[int]) -> list[Any]:
        """Stored vectors of ``keys`` (None where absent), from the overlay or the base.
        Call under the lock."""
        if not self._overlay_keys:
            got: Any = self._index.get(np.asarray(keys, dtype=np.uint64), dtype="f32")
            return list(got)
        rows: list[Any] = [None] * len(keys)
        for source, wanted in (
            (self._overlay, [i for i, k in enumerate(keys) if k in self._overlay_keys]),
            (self._index, [i for i, k in enumerate(keys) if k not in self._overlay_keys]),
        ):
            if wanted and source is not None:
                found: Any = source.get(np.asarray([keys[i] for i in wanted], np.uint64), "f32")
                for i, row in zip(wanted, found, strict=True):
                    rows[i] = row
        return rows

    # -- writing ---------------------------------------------------------------
    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add or replace ``item_ids`` with the rows of ``vectors`` ([n, dim], or [dim]
        for one id). An id given twice keeps its last row. Returns how many ids were new.
        Visible to the next search."""
        matrix = self._matrix(vectors, "vectors")
        if not np.isfinite(matrix).all():
            raise ValueError("vectors contain NaN or infinity")
        if isinstance(item_ids, str):
            item_ids = [item_ids]
        if len(item_ids) != len(matrix):
            raise ValueError(f"got {len(item_ids)} item ids for {len(matrix)} vectors")
        last = {str(item_id): row for row, item_id in enumerate(item_ids)}
        if len(last) != len(matrix):
            matrix = matrix[list(last.values())]
        ids = list(last)
        with self._lock:
            found = self._map.keys_of(ids)
            old = [k for k in found if k is not None]
            new = [i for i, k in zip(ids, found, strict=True) if k is None]
            first = self._next_key
            for offset, item_id in enumerate(new):
                self._map.add(item_id, first + offset)
            self._next_key = first + len(new)
            if old:
                self._remove(old)
            fresh = iter(range(first, self._next_key))
            keys = np.fromiter(
                (k if k is not None else next(fresh) for k in found),
                dtype=np.uint64,
                count=len(ids),
            )
            # a pool of worker threads costs more than a few single-vector inserts
            threads = 1 if len(keys) < 64 else self.threads
            if self._viewed:
                self._overlay_index().add(keys, matrix, threads=threads)
                self._overlay_keys.update(keys.tolist())
            else:
                self._index.add(keys, matrix, threads=threads)
            self._refresh_dense(keys)
        return len(new)

    def delete(self, item_ids: Collection[str]) -> int:
        """Remove ``item_ids``; unknown ids are ignored. Returns how many were removed."""
        if isinstance(item_ids, str):
            item_ids = [item_ids]
        with self._lock:
            keys = [self._map.pop(i) for i in set(item_ids) if i in self._map]
            if keys:
                self._remove(keys)
        return len(keys)

    def _remove(self, keys: Sequence[int]) -> None:
        """Take ``keys`` out of the searched indexes (under the lock): from usearch, or,
        over a memory-mapped file, from the overlay and by marking file entries dead."""
        if not self._viewed:
            self._index.remove(np.asarray(keys, dtype=np.uint64))
            return
        in_overlay = [k for k in keys if k in self._overlay_keys]
        if in_overlay and self._overlay is not None:
            self._overlay.remove(np.asarray(in_overlay, dtype=np.uint64))
            self._overlay_keys.difference_update(in_overlay)
        in_base = np.asarray([k for k in keys if k < self._base_keys], dtype=np.intp)
        if len(in_base):
            if self._dead is None:
                self._dead = np.zeros(self._base_keys, dtype=bool)
            self._dead_count += int(len(in_base) - self._dead[in_base].sum())
            self._dead[in_base] = True

    def _overlay_index(self) -> Index:
        if self._overlay is None:
            self._overlay = self._new_usearch()
        return self._overlay

    def _new_usearch(self) -> Index:
        return Index(
            ndim=self.dim,
            metric=self.metric,
            dtype=self.dtype,
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
            expansion_search=self._index.expansion_search,
        )

    # -- searching -------------------------------------------------------------
    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        keep: Keep | None = None,
        exclude: Collection[str] = (),
        headroom: float = 1.0,
        max_fetch: int | None = None,
    ) -> list[Hits]:
        """The ``k`` nearest items of each query, as a list with one ``(ids, scores)``
        tuple per query row. ``vectors`` is [B, dim], or [dim] for one query (the list then
        has one tuple: ``ids, scores = index.search(v, k)[0]``).

        ``ids`` is a list of item ids best first, ``scores`` a float32 array as long,
        larger is better (see :data:`SCORES`). Fewer than ``k`` come back only when fewer
        items survive the filters, or, with ``max_fetch``, when fewer than ``k`` of the
        ``max_fetch`` nearest items do. ``exclude`` ids and ids for which ``keep`` says False
        are never returned; both apply to every row (search row by row for per-query
        filters).

        How much is fetched: ``k``, plus one per ``exclude`` id in the index (each may
        take a place), plus ``ceil(headroom * k)`` when ``keep`` is given: the share of
        results ``keep`` is expected to drop. The default 1.0 suits an unknown filter;
        a caller whose filter rarely drops anything (no category filter) passes a small
        value, because the fetch sets HNSW's beam width (ef = max(expansion_search,
        fetch)) and so the cost. Rows left short are searched again with a larger fetch:
        twice as many, or as many as the share that survived says ``k`` needs, whichever is
        more. ``max_fetch`` bounds that: a narrow filter whose items lie far from the query
        would otherwise widen the search to the whole index (seconds per query on a
        million items) before giving up.
        """
        queries = self._matrix(vectors, "query")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if headroom < 0:
            raise ValueError(f"headroom must be >= 0, got {headroom}")
        if max_fetch is not None and max_fetch <= 0:
            raise ValueError(f"max_fetch must be > 0, got {max_fetch}")
        if k == 0 or len(self._map) == 0:
            return [([], np.zeros(0, dtype=np.float32)) for _ in range(len(queries))]
        return self._search(queries, k, keep, exclude, headroom, max_fetch)

    def _search(
        self,
        queries: np.ndarray,
        k: int,
        keep: Keep | None,
        exclude: Collection[str],
        headroom: float,
        max_fetch: int | None,
    ) -> list[Hits]:
        results: list[Hits | None] = [None] * len(queries)
        pending = np.arange(len(queries))
        banned = self._banned_keys(exclude)
        fetch = k + (len(banned) if banned is not None else 0)
        if keep is not None:
            fetch += math.ceil(headroom * k)
        limit = max(fetch, max_fetch) if max_fetch is not None else None
        while len(pending):
            with self._lock:
                size = len(self._map)
                if size == 0:  # everything was deleted since the last round
                    for row in pending:
                        results[row] = ([], np.zeros(0, dtype=np.float32))
                    break
                rows = queries[pending]
                threads = 1 if len(rows) == 1 else self.threads
                found: Any
                if self._overlay_keys or self._dead_count:
                    fetch = min(fetch, len(self._index) + len(self._overlay_keys))
                    found, complete = self._search_with_overlay(rows, fetch, threads)
                else:
                    fetch = min(fetch, size)
                    found = _columns(self._usearch(self._index, rows, fetch, threads))
                    complete = fetch >= size
                # Map keys to ids before letting go of the lock: delete() marks keys
                # dead in place.
                answers = [
                    (keys[:n], self._map.ids_of(keys[:n]), distances[:n])
                    for keys, distances, n in zip(*found, strict=True)
                ]
            complete = complete or (limit is not None and fetch >= limit)
            still, fewest = [], k
            for row, (keys, ids, distances) in zip(pending, answers, strict=True):
                hit = self._filter(keys, ids, distances, banned, keep, k)
                if len(hit[0]) >= k or complete:
                    results[row] = hit
                else:
                    still.append(row)
                    fewest = min(fewest, len(hit[0]))
            pending = np.asarray(still, dtype=np.intp)
            # what the surviving share says k needs, with a quarter more for luck
            fetch = max(2 * fetch, math.ceil(1.25 * fetch * k / max(fewest, 1)))
            if limit is not None:
                fetch = min(fetch, limit)
        return results  # type: ignore[return-value]

    def _usearch(self, index: Index, rows: np.ndarray, fetch: int, threads: int) -> Any:
        """One usearch search of ``fetch`` per row (under the lock). A graph search with
        ef = fetch computes about fetch x 2*connectivity distances (the level-0 degree);
        past the index size, or below ``exact_below``, scan instead."""
        size = len(index)
        fetch = min(fetch, size)
        exact = size < self.exact_below or fetch >= size or fetch * 2 * self.connectivity >= size
        t0 = time.perf_counter()
        try:
            return index.search(rows, fetch, exact=exact, threads=threads)
        finally:
            native_time.add(time.perf_counter() - t0)  # usearch works without the GIL

    def _search_with_overlay(
        self, rows: np.ndarray, fetch: int, threads: int
    ) -> tuple[tuple[list[np.ndarray], list[np.ndarray], list[int]], bool]:
        """``fetch`` candidates per row from the memory-mapped base (dead entries
        dropped) and the overlay, merged by distance (under the lock). A side that
        returned all it was asked for may hold nearer items past its last one, so the
        merged list ends at the nearest such last distance: what is returned is exactly
        the merged top of everything searched. Returns key, distance and count columns
        and whether every entry of both sides was seen."""
        sides = []
        complete = True
        for index in (self._index, self._overlay):
            if index is None or len(index) == 0:
                continue
            wanted = min(fetch, len(index))
            complete = complete and wanted >= len(index)
            keys, distances, counts = _columns(self._usearch(index, rows, wanted, threads))
            sides.append((keys, distances, counts, wanted < len(index), index is self._index))
        out_keys, out_distances, out_counts = [], [], []
        for row in range(len(rows)):
            keys_parts, distance_parts, cut = [], [], math.inf
            for keys, distances, counts, truncated, is_base in sides:
                n = int(counts[row])
                k, d = keys[row][:n], distances[row][:n]
                if truncated and n:
                    cut = min(cut, float(d[-1]))
                if is_base and self._dead is not None:
                    alive = ~self._dead[k.astype(np.intp)]
                    k, d = k[alive], d[alive]
                keys_parts.append(k)
                distance_parts.append(d)
            merged_keys = np.concatenate(keys_parts) if keys_parts else np.zeros(0, np.uint64)
            merged = np.concatenate(distance_parts) if distance_parts else np.zeros(0, np.float32)
            order = np.argsort(merged, kind="stable")
            order = order[merged[order] <= cut]
            out_keys.append(merged_keys[order])
            out_distances.append(merged[order])
            out_counts.append(len(order))
        return (out_keys, out_distances, out_counts), complete

    def _banned_keys(self, exclude: Collection[str]) -> np.ndarray | None:
        if not exclude:
            return None
        found = self._map.keys_of(list(exclude))
        return np.fromiter((key for key in found if key is not None), dtype=np.uint64)

    def _filter(
        self,
        keys: np.ndarray,
        ids: np.ndarray,
        distances: np.ndarray,
        banned: np.ndarray | None,
        keep: Keep | None,
        k: int,
    ) -> Hits:
        if banned is not None and len(banned):
            allowed = ~np.isin(keys, banned)
            ids, distances = ids[allowed], distances[allowed]
        if keep is not None and len(ids):
            mask = np.asarray(keep(ids.tolist()), dtype=bool)
            if mask.shape != ids.shape:
                raise ValueError(f"keep returned {mask.shape[0]} flags for {len(ids)} ids")
            ids, distances = ids[mask], distances[mask]
        scores = self._score(distances[:k].astype(np.float32, copy=False))
        return ids[:k].tolist(), scores.astype(np.float32, copy=False)

    # -- persistence -----------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``index.usearch``, ``ids.json`` and ``index.json`` into ``folder``
        (created if needed). Each file is written under a temporary name and renamed, so
        a reader never sees half a file; searches wait while the index is written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            with atomic_path(folder / INDEX_FILE) as tmp:
                (self._merged() if self._viewed else self._index).save(os.fspath(tmp))
            ids = self._map.key_order_ids(self._next_key)
            atomic_write(folder / IDS_FILE, json.dumps({"ids": ids}, separators=(",", ":")))
            IdMap.write(folder / IDS_COLUMNS_FILE, ids)
            atomic_write(folder / META_FILE, json.dumps(self._meta(), indent=2) + "\n")

    def _merged(self) -> Index:
        """A memory-mapped base with its overlay and dead entries applied, as one
        in-memory usearch index with the same keys (under the lock; for :meth:`save`)."""
        merged = self._new_usearch()
        keys = self._map.live_keys()
        for start in range(0, len(keys), 65_536):
            chunk = keys[start : start + 65_536]
            rows = self._get(chunk.tolist())
            merged.add(chunk, np.stack(rows).astype(np.float32), threads=self.threads)
        return merged

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "dim": self.dim,
            "metric": self.metric,
            "dtype": self.dtype,
            "connectivity": self.connectivity,
            "expansion_add": self.expansion_add,
            "expansion_search": self._index.expansion_search,
            "exact_below": self.exact_below,
            "count": len(self._map),
            "usearch_version": usearch.__version__,
        }

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], *, view: bool = False, **overrides: Any
    ) -> VectorIndex:
        """Open an index written by :meth:`save`. ``view=True`` memory-maps
        ``index.usearch`` instead of reading it: near-instant, one copy in the page cache
        for every process that maps the file, changes kept in a per-process overlay (see
        the module docstring; the file must stay in place, or stay open after an unlink,
        while the index is used). ``overrides``
        replace search-time settings from ``index.json`` (``expansion_search``,
        ``exact_below``, ``threads``). Raises ``FileNotFoundError`` or ``ValueError``
        naming the file and the problem."""
        folder = Path(folder)
        meta = read_json_object(folder / META_FILE)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{folder / META_FILE}: unsupported format "
                f"{meta.get('format')!r} (expected {FORMAT_VERSION})"
            )
        unknown = set(overrides) - {"expansion_search", "exact_below", "threads"}
        if unknown:
            raise TypeError(f"load() cannot override {', '.join(sorted(unknown))}")
        params = {
            name: meta[name]
            for name in (
                "metric",
                "dtype",
                "connectivity",
                "expansion_add",
                "expansion_search",
                "exact_below",
            )
        }
        index = cls(int(meta["dim"]), **{**params, **overrides})
        index_path = folder / INDEX_FILE
        index._open_usearch(index_path, view)
        index._open_ids(folder)
        index._viewed = view
        index._base_keys = index._next_key if view else 0
        return index

    def _open_usearch(self, path: Path, view: bool) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing")
        # usearch adopts the file's dims and scalar type without complaint (and keeps
        # the constructor's metric label), so compare before loading.
        try:
            found = Index.metadata(os.fspath(path))
        except Exception as exc:  # usearch raises bare RuntimeErrors
            raise ValueError(f"{path}: not a usearch index ({exc})") from exc
        if not found or found["dimensions"] != self.dim:
            dims = found.get("dimensions") if found else None
            raise ValueError(f"{path}: {dims} dimensions, {META_FILE} says {self.dim}")
        wanted = (self._index.metric_kind, self._index.dtype)
        if (found["kind_metric"], found["kind_scalar"]) != wanted:
            raise ValueError(
                f"{path}: metric/dtype {found['kind_metric'].name}/"
                f"{found['kind_scalar'].name}, {META_FILE} says "
                f"{self.metric}/{self.dtype}"
            )
        try:
            (self._index.view if view else self._index.load)(os.fspath(path))
        except Exception as exc:
            raise ValueError(f"{path}: cannot {'view' if view else 'load'} ({exc})") from exc

    def _open_ids(self, folder: Path) -> None:
        """The id map: ``ids.cols`` mapped read-only (shared by every process), or, for a
        bundle from before it, built in memory from ``ids.json``."""
        where = folder / IDS_COLUMNS_FILE
        if where.exists():
            self._map = IdMap.open(where)  # a damaged file: ColumnsError (ValueError)
            self._next_key = self._map.key_count
        else:
            where = folder / IDS_FILE
            ids = read_json_object(where).get("ids")
            if not isinstance(ids, list) or not all(i is None or isinstance(i, str) for i in ids):
                raise ValueError(f"{where}: expected an object with an 'ids' list")
            try:
                self._map = IdMap.from_list(ids)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            self._next_key = len(ids)
        if len(self._map) != len(self._index):
            raise ValueError(
                f"{where}: {len(self._map)} ids for {len(self._index)} vectors in {INDEX_FILE}"
            )

    def close(self) -> None:
        """Nothing to release (a viewed file is unmapped when the index is collected)."""

    # -- helpers ---------------------------------------------------------------
    def _matrix(self, vectors: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(vectors)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(
                f"{what} must have shape [n, {self.dim}] or [{self.dim}], "
                f"got {list(np.shape(vectors))}"
            )
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{what} must be numeric, got dtype {array.dtype}")
        return np.ascontiguousarray(array, dtype=np.float32)


def _columns(found: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys, distances and counts per row. usearch hands back a one-row batch as a
    ``Matches`` of valid entries only; larger batches pad rows with key 0 / NaN past
    ``counts``."""
    if isinstance(found, BatchMatches):
        return found.keys, found.distances, found.counts
    return found.keys[None, :], found.distances[None, :], np.array([len(found.keys)])

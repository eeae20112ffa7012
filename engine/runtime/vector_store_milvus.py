"""Item vectors in a Milvus collection (``store = "milvus"``; the ``[milvus]`` extra).

The build writes one collection per channel build, named
``<prefix>_<UTC time>_<8 hex>`` (:func:`write_collection`), with two fields, ``id``
(VARCHAR primary key: the item id) and ``vector`` (FLOAT_VECTOR), indexed with the
channel's index (HNSW by default, FLAT for exact search) under the channel's metric
(``cos`` → COSINE, ``ip`` → IP, ``l2sq`` → L2, which Milvus computes squared). The bundle
records the collection; a new build writes a new collection, so a reload (a new channel
instance on the new bundle, swapped in whole) never sees a half-written one. Old
collections are left in place: replicas may still serve them (drop them with
``MilvusClient.drop_collection`` once no bundle that names them is served).

Serving (:class:`MilvusStore`) keeps only the set of searchable ids in the process (what
``accepts`` and the history lookup ask on every request, without a round trip); vectors
stay in Milvus. Searches run in Milvus with the same semantics as usearch: ``exclude``
becomes a filter expression (``id not in [...]``: exact, no over-fetch), the category
filter (``keep``) is applied to an over-fetch bounded by ``max_fetch``, and ids Milvus
returns that this process does not know (rows another process added, not yet in this
one's catalogue) are dropped. Upserts and deletes go to the collection (strong
consistency: visible to the next search, from any client); every process and replica
applies the same catalogue changes, and Milvus upserts and deletes are idempotent.

Milvus Lite (``uri`` a local ``.db`` file) runs the same API in-process: the tests run
on it, which proves API compatibility and results, not speed.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.index import SCORES, Hits, Keep
from recall_engine.runtime.vector_store import MilvusSettings, vectors_digest

log = get_logger(__name__)

ID_FIELD = "id"
VECTOR_FIELD = "vector"
#: Longest item id a collection takes (VARCHAR max_length).
MAX_ID_LENGTH = 1024
#: Milvus caps ``limit`` (top-k) of one search here.
MAX_TOPK = 16_384
#: Rows per insert / upsert / delete / query request.
BATCH = 2_000
_METRICS = {"cos": "COSINE", "ip": "IP", "l2sq": "L2"}
_INDEXES = ("HNSW", "FLAT", "AUTOINDEX")


def _client(settings: MilvusSettings) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise ImportError(
            "store = 'milvus' needs pymilvus: pip install 'recall-engine[milvus]'"
        ) from e
    return MilvusClient(uri=settings.uri, token=settings.token)


def _literal(item_id: str) -> str:
    """A Milvus expression string literal (double quotes, backslash escapes)."""
    return json.dumps(item_id, ensure_ascii=False)


def _in_list(item_ids: Iterable[str]) -> str:
    return "[" + ", ".join(map(_literal, item_ids)) + "]"


def _distance_to_score(metric: str, distances: np.ndarray) -> np.ndarray:
    """Milvus gives COSINE and IP as similarities already, L2 as a squared distance."""
    if metric == "l2sq":
        return SCORES["l2sq"](distances)
    return distances


def write_collection(
    settings: MilvusSettings,
    prefix: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    *,
    metric: str,
) -> dict[str, Any]:
    """Create a new collection ``<prefix>_<UTC time>_<8 hex>``, insert ``vectors`` (one
    row per id), build its index and load it. Returns the manifest entry (see
    :data:`~recall_engine.runtime.vector_store.MANIFEST_FIELD`)."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {', '.join(_METRICS)}, got {metric!r}")
    if settings.index not in _INDEXES:
        raise ValueError(f"index must be one of {', '.join(_INDEXES)}, got {settings.index!r}")
    long = next((i for i in ids if len(i.encode("utf-8")) > MAX_ID_LENGTH), None)
    if long is not None:
        raise ValueError(f"item id longer than {MAX_ID_LENGTH} bytes: {long[:60]!r}...")
    from pymilvus import DataType

    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = int(matrix.shape[1])
    name = f"{prefix}_{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}_{uuid.uuid4().hex[:8]}"
    client = _client(settings)
    try:
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        client.create_collection(name, schema=schema, consistency_level="Strong")
        started = time.perf_counter()
        for start in range(0, len(ids), BATCH):
            rows = matrix[start : start + BATCH]
            chunk = ids[start : start + BATCH]
            client.insert(
                name,
                [{ID_FIELD: i, VECTOR_FIELD: v} for i, v in zip(chunk, rows, strict=True)],
            )
        client.flush(name)
        client.create_index(name, _index_params(client, settings, metric))
        client.load_collection(name)
        log.info(
            "milvus_collection_written",
            collection=name,
            rows=len(ids),
            index=settings.index,
            seconds=round(time.perf_counter() - started, 2),
        )
    except BaseException:
        try:
            client.drop_collection(name)
        finally:
            client.close()
        raise
    client.close()
    return {
        "kind": "milvus",
        "collection": name,
        "uri": settings.public_uri(),
        "index": settings.index,
        "metric": metric,
        "count": len(ids),
        "vectors_sha256": vectors_digest(ids, matrix),
    }


def _index_params(client: Any, settings: MilvusSettings, metric: str) -> Any:
    params = client.prepare_index_params()
    extra = (
        {"M": settings.connectivity, "efConstruction": settings.expansion_add}
        if settings.index == "HNSW"
        else {}
    )
    params.add_index(
        field_name=VECTOR_FIELD,
        index_type=settings.index,
        metric_type=_METRICS[metric],
        params=extra,
    )
    return params


class MilvusStore:
    """A channel's vectors in one Milvus collection (see the module docstring). Open
    with :meth:`open`; thread-safe."""

    kind = "milvus"
    dtype = "f32"

    def __init__(
        self,
        client: Any,
        settings: MilvusSettings,
        collection: str,
        *,
        dim: int,
        metric: str,
        ids: Iterable[str],
    ) -> None:
        self._client = client
        self.settings = settings
        self.collection = collection
        self.dim = dim
        self.metric = metric
        # ordered: ids() lists them in the build's order, then in order of upsert
        self._ids: dict[str, None] = dict.fromkeys(ids)
        self._lock = threading.Lock()  # guards _ids changes against concurrent writers

    @classmethod
    def open(
        cls,
        settings: MilvusSettings,
        collection: str,
        *,
        dim: int,
        metric: str,
        ids: Iterable[str],
    ) -> MilvusStore:
        """Connect, check that ``collection`` exists with a ``dim``-long vector field
        and a ``metric`` index, and load it. ``ids``: what it holds as built (the
        bundle's ``signatures.npz``); the channel reconciles them with the catalogue.
        Raises ``FileNotFoundError`` or ``ValueError`` naming the collection."""
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(_METRICS)}, got {metric!r}")
        client = _client(settings)
        where = f"milvus collection {collection!r} at {settings.public_uri()}"
        try:
            if not client.has_collection(collection):
                raise FileNotFoundError(f"{where}: missing (rebuild the channel)")
            fields = {f["name"]: f for f in client.describe_collection(collection)["fields"]}
            found = fields.get(VECTOR_FIELD, {}).get("params", {}).get("dim")
            if found is None or int(found) != dim:
                raise ValueError(f"{where}: vector dim {found}, the bundle says {dim}")
            index = client.describe_index(collection, VECTOR_FIELD) or {}
            if index.get("metric_type") != _METRICS[metric]:
                raise ValueError(
                    f"{where}: metric {index.get('metric_type')}, the bundle says {metric} "
                    f"({_METRICS[metric]})"
                )
            client.load_collection(collection)
        except BaseException:
            client.close()
            raise
        return cls(client, settings, collection, dim=dim, metric=metric, ids=ids)

    # -- reading ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def __repr__(self) -> str:
        return (
            f"MilvusStore({self.collection!r}, dim={self.dim}, metric={self.metric!r}, "
            f"items={len(self)})"
        )

    @property
    def hardware_acceleration(self) -> str:
        return "milvus"

    def ids(self) -> list[str]:
        return list(self._ids)

    def sample_ids(self, n: int) -> list[str]:
        ids = self.ids()
        return ids[:: max(1, len(ids) // n)][:n] if n > 0 else []

    def vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        known = [i for i in dict.fromkeys(item_ids) if i in self._ids]
        if not known:
            return np.zeros((0, self.dim), dtype=np.float32), []
        rows = self._fetch(known)
        positions = [p for p, i in enumerate(item_ids) if i in rows]
        if not positions:
            return np.zeros((0, self.dim), dtype=np.float32), []
        return np.stack([rows[item_ids[p]] for p in positions]), positions

    def vector(self, item_id: str) -> np.ndarray:
        found = self._fetch([item_id]) if item_id in self._ids else {}
        if item_id not in found:
            raise KeyError(item_id)
        return found[item_id]

    def _fetch(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(item_ids), BATCH):
            chunk = item_ids[start : start + BATCH]
            rows = self._client.query(
                self.collection,
                filter=f"{ID_FIELD} in {_in_list(chunk)}",
                output_fields=[ID_FIELD, VECTOR_FIELD],
            )
            for row in rows:
                out[row[ID_FIELD]] = np.asarray(row[VECTOR_FIELD], dtype=np.float32)
        return out

    # -- writing ---------------------------------------------------------------
    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(
                f"vectors must have shape [n, {self.dim}] or [{self.dim}], "
                f"got {list(np.shape(vectors))}"
            )
        if not np.isfinite(matrix).all():
            raise ValueError("vectors contain NaN or infinity")
        if isinstance(item_ids, str):
            item_ids = [item_ids]
        if len(item_ids) != len(matrix):
            raise ValueError(f"got {len(item_ids)} item ids for {len(matrix)} vectors")
        last = {str(item_id): row for row, item_id in enumerate(item_ids)}
        long = next((i for i in last if len(i.encode("utf-8")) > MAX_ID_LENGTH), None)
        if long is not None:
            raise ValueError(f"item id longer than {MAX_ID_LENGTH} bytes: {long[:60]!r}...")
        ids = list(last)
        rows = matrix[list(last.values())]
        for start in range(0, len(ids), BATCH):
            self._client.upsert(
                self.collection,
                [
                    {ID_FIELD: i, VECTOR_FIELD: v}
                    for i, v in zip(
                        ids[start : start + BATCH], rows[start : start + BATCH], strict=True
                    )
                ],
            )
        with self._lock:
            new = [i for i in ids if i not in self._ids]
            self._ids.update(dict.fromkeys(new))
        return len(new)

    def delete(self, item_ids: Collection[str]) -> int:
        if isinstance(item_ids, str):
            item_ids = [item_ids]
        wanted = list(dict.fromkeys(item_ids))
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start : start + BATCH]
            self._client.delete(self.collection, filter=f"{ID_FIELD} in {_in_list(chunk)}")
        with self._lock:
            removed = [i for i in wanted if i in self._ids]
            for item_id in removed:
                del self._ids[item_id]
        return len(removed)

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
        """As :meth:`VectorIndex.search <recall_engine.runtime.index.VectorIndex.search>`;
        ``exclude`` is a filter expression, so it needs no over-fetch. Fetches past
        Milvus's top-k cap (:data:`MAX_TOPK`) are cut there."""
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"query must have shape [n, {self.dim}] or [{self.dim}], "
                f"got {list(np.shape(vectors))}"
            )
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if headroom < 0:
            raise ValueError(f"headroom must be >= 0, got {headroom}")
        if max_fetch is not None and max_fetch <= 0:
            raise ValueError(f"max_fetch must be > 0, got {max_fetch}")
        empty: Hits = ([], np.zeros(0, dtype=np.float32))
        if k == 0 or not self._ids:
            return [empty for _ in range(len(queries))]
        banned = [i for i in exclude if i in self._ids]
        expression = f"{ID_FIELD} not in {_in_list(banned)}" if banned else ""
        fetch = k + (math.ceil(headroom * k) if keep is not None else 0)
        limit = max(fetch, max_fetch) if max_fetch is not None else None
        results: list[Hits] = [empty] * len(queries)
        pending = list(range(len(queries)))
        while pending:
            size = len(self._ids) - len(banned)
            fetch = min(fetch, max(size, 1), MAX_TOPK)
            answers = self._search(queries[pending], fetch, expression)
            complete = fetch >= size or fetch >= MAX_TOPK or (limit is not None and fetch >= limit)
            still, fewest = [], k
            for row, (ids, scores, returned) in zip(pending, answers, strict=True):
                hit = self._filter(ids, scores, keep, k)
                if len(hit[0]) >= k or complete or returned < fetch:
                    results[row] = hit
                else:
                    still.append(row)
                    fewest = min(fewest, len(hit[0]))
            pending = still
            fetch = max(2 * fetch, math.ceil(1.25 * fetch * k / max(fewest, 1)))
            if limit is not None:
                fetch = min(fetch, limit)
        return results

    def _search(
        self, rows: np.ndarray, fetch: int, expression: str
    ) -> list[tuple[list[str], np.ndarray, int]]:
        params: dict[str, Any] = {}
        if self.settings.index == "HNSW":
            params = {"ef": max(self.settings.expansion_search, fetch)}
        found = self._client.search(
            self.collection,
            data=list(rows),
            limit=fetch,
            filter=expression,
            output_fields=[ID_FIELD],
            search_params={"params": params},
        )
        known = self._ids
        out = []
        for hits in found:
            ids = [h[ID_FIELD] for h in hits]
            distances = np.fromiter((h["distance"] for h in hits), np.float32, len(ids))
            # rows another process added that this one's catalogue does not have yet
            mask = [i in known for i in ids]
            if not all(mask):
                ids = [i for i, m in zip(ids, mask, strict=True) if m]
                distances = distances[np.asarray(mask, dtype=bool)]
            out.append((ids, _distance_to_score(self.metric, distances), len(hits)))
        return out

    def _filter(self, ids: list[str], scores: np.ndarray, keep: Keep | None, k: int) -> Hits:
        if keep is not None and ids:
            mask = np.asarray(keep(ids), dtype=bool)
            if mask.shape != (len(ids),):
                raise ValueError(f"keep returned {mask.shape[0]} flags for {len(ids)} ids")
            ids = [i for i, m in zip(ids, mask.tolist(), strict=True) if m]
            scores = scores[mask]
        return ids[:k], scores[:k].astype(np.float32, copy=False)

    def close(self) -> None:
        """Close this store's connection; the collection stays loaded for the other
        instances and processes that serve it."""
        self._client.close()

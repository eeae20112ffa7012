"""Where a vector channel keeps its item vectors: the store interface and its choices.

A vector channel (:mod:`recall_engine.sdk.vector_channel`) searches a
:class:`VectorStore`. Two implement it:

* ``usearch`` (the default): :class:`~recall_engine.runtime.index.VectorIndex`, embedded
  in the process, the index file memory-mapped and shared by every process of the host
  that maps it (online changes in a per-process overlay);
* ``milvus``: :class:`~recall_engine.runtime.vector_store_milvus.MilvusStore`, a
  collection in a Milvus deployment (``pymilvus``, the ``[milvus]`` extra), for
  catalogues beyond one host's memory. The build writes one collection per channel
  build (so per bundle version: a reload swaps collections by swapping channel
  instances, atomically); the bundle's manifest records it (:data:`MANIFEST_FIELD`).

Both answer with the same semantics: ids best first with float32 scores where larger is
better, ``exclude`` ids never returned, ``keep`` (the category filter) applied to an
over-fetch bounded by ``max_fetch``, upserts and deletes visible to the next search.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from recall_engine.runtime.index import Hits, Keep

STORES = ("usearch", "milvus")

#: The bundle manifest's field that says where the vectors live (absent: ``usearch``,
#: the bundle's ``index/`` folder): ``kind``, and for Milvus ``collection``, ``uri``
#: (as the build reached it, credentials left out), ``index``, ``metric``, ``count`` and
#: ``vectors_sha256`` (:func:`vectors_digest`).
MANIFEST_FIELD = "vector_store"

_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Longest collection prefix accepted: Milvus names are at most 255 characters and the
#: build appends ``_<UTC time>_<8 hex>``.
MAX_PREFIX = 200


@runtime_checkable
class VectorStore(Protocol):
    """What a vector channel asks of its store. Thread-safe: searches run concurrently
    with each other and with ``add`` / ``delete``."""

    #: ``"usearch"`` or ``"milvus"``.
    kind: str
    dim: int
    metric: str
    dtype: str

    def __len__(self) -> int:
        """How many items are searchable."""
        ...

    def __contains__(self, item_id: object) -> bool:
        """Whether ``item_id`` is searchable (no remote call)."""
        ...

    @property
    def hardware_acceleration(self) -> str:
        """What computes distances: usearch's SIMD kernel family, or ``"milvus"``."""
        ...

    def ids(self) -> list[str]:
        """Every searchable id (a copy)."""
        ...

    def sample_ids(self, n: int) -> list[str]:
        """At most ``n`` searchable ids spread over the store, without listing them all."""
        ...

    def vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Stored float32 vectors of the known ids among ``item_ids`` (``[found, dim]``)
        and their positions in ``item_ids``; one lookup for all of them."""
        ...

    def vector(self, item_id: str) -> np.ndarray:
        """The stored vector of ``item_id``; ``KeyError`` if unknown."""
        ...

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add or replace; returns how many ids were new. Visible to the next search."""
        ...

    def delete(self, item_ids: Collection[str]) -> int:
        """Remove; unknown ids are ignored. Returns how many were removed."""
        ...

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
        """The ``k`` nearest items of each query row (see
        :meth:`~recall_engine.runtime.index.VectorIndex.search`)."""
        ...

    def close(self) -> None:
        """Release connections (the stored vectors stay)."""
        ...


@dataclass(slots=True, frozen=True)
class MilvusSettings:
    """How to reach Milvus and how to index a collection.

    ``uri``: ``http(s)://HOST:19530`` for a Milvus server or cluster, or a local file
    ending in ``.db`` for Milvus Lite (in-process; one process per file: tests and
    trials, not serving). ``token``: ``user:password`` or an API key (empty: none).
    ``index``: ``HNSW`` (``connectivity`` = M, ``expansion_add`` = efConstruction,
    searched with ef = max(``expansion_search``, fetch)), or ``FLAT`` (exact), or
    ``AUTOINDEX`` (the deployment's choice).
    """

    uri: str
    token: str = ""
    index: str = "HNSW"
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 256

    def public_uri(self) -> str:
        """``uri`` without credentials, for manifests and logs."""
        return re.sub(r"//[^/@]*@", "//", self.uri)


def vectors_digest(ids: Sequence[str], vectors: np.ndarray) -> str:
    """sha256 over the ids (UTF-8, NUL-terminated) and the float32 rows, in order: what
    the build wrote to a store outside the bundle, named in its manifest."""
    digest = hashlib.sha256()
    for item_id in ids:
        digest.update(item_id.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def collection_prefix(channel: str, configured: str = "") -> str:
    """The configured collection prefix, or ``recall_<channel>`` with every character
    Milvus refuses in a name replaced by ``_``."""
    if configured:
        return configured
    return "recall_" + re.sub(r"[^A-Za-z0-9_]", "_", channel)


def check_collection_prefix(prefix: str) -> str | None:
    """Why ``prefix`` cannot start a Milvus collection name, or None if it can."""
    if not _COLLECTION.fullmatch(prefix):
        return (
            f"must start with a letter or '_' and hold only letters, digits and '_', got {prefix!r}"
        )
    if len(prefix) > MAX_PREFIX:
        return f"must be at most {MAX_PREFIX} characters, got {len(prefix)}"
    return None


def check_store(store: VectorStore, where: str, sample: int = 16) -> int:
    """Search a sample of ``store``'s stored vectors; raise ``ValueError`` naming
    ``where`` on a nonsensical answer (empty, non-finite, unknown ids). Vectors missing
    from the store are skipped: a shared store may have lost items the catalogue no
    longer has, which the channel's reconciliation then forgets. Returns how many were
    checked. (The usearch store has its stricter
    :func:`~recall_engine.runtime.index_check.check_index`.)"""
    ids = store.ids()
    if not ids:
        return 0
    picked = ids[:: max(1, len(ids) // sample)][:sample]
    vectors, found = store.vectors(picked)
    if not len(found):
        raise ValueError(f"{where}: none of {len(picked)} sampled ids has a stored vector")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{where}: stored vectors hold NaN or infinite values")
    for position, (got, scores) in zip(found, store.search(vectors, 10), strict=True):
        item = picked[position]
        if not got:
            raise ValueError(f"{where}: the stored vector of {item!r} finds nothing")
        if not np.isfinite(np.asarray(scores, dtype=np.float64)).all():
            raise ValueError(f"{where}: non-finite scores searching {item!r}")
        unknown = [g for g in got if g not in store]
        if unknown:
            raise ValueError(f"{where}: searching {item!r} returned unknown ids {unknown[:5]}")
    return len(found)


def describe(store: VectorStore) -> dict[str, Any]:
    """``info().details`` fields about the store."""
    details: dict[str, Any] = {"vector_store": store.kind}
    collection = getattr(store, "collection", None)
    if collection:
        details["collection"] = collection
    return details

"""What the vector channels (``llm``, ``content``) share: item vectors in a vector store,
query vectors from history and text, and online upserts and deletes.

Vector store (param ``store``, :mod:`recall_engine.runtime.vector_store`): ``"usearch"``
(the default) keeps the vectors in the bundle's usearch index, memory-mapped when served
(``memory_map``, on by default: the processes of one host share one copy, and online
changes go to a small per-process overlay); ``"milvus"`` keeps them in a Milvus
collection (``milvus_uri``, ``collection``, ``milvus_index``, ``milvus_token_env``) that
the build writes, one per build, and the bundle's manifest names
(:mod:`recall_engine.runtime.vector_store_milvus`). Searches, excludes, category filters,
upserts and deletes mean the same on both.

A query vector is made from what the request has:

* **history** → the recency-weighted mean of the history items' *stored* vectors (no
  encoder call): the newest item weighs 1, the one before ``history_decay``, then
  ``history_decay ** 2`` …, over the last ``max_history`` items; unknown items are
  skipped;
* **text** → the channel's text encoder: through a :class:`MicroBatcher`, so that
  concurrent single requests share one encoder run, when the encoder batches
  (:meth:`VectorChannel.text_batch_limit` over 1) and a run costs enough for sharing
  it to pay; on the call's own thread when it runs one text at a time (the ``llm``
  channel's int8 encoder, its CPU default) or a run of one text costs a fraction of the
  batcher's wait (the ``content`` channel's bag-of-terms encoder; measured at warm-up).
  ``recall_batch`` encodes its texts in one call on its own thread. Either way the run
  is recorded in the ``recall_encoder_*`` series under the channel's name
  (:class:`EncoderStats`; on the call's thread as a batch that waited 0 s);
* **both** → ``(1 - text_weight) * history + text_weight * text``, renormalised.

Every vector is L2-normalised and searched with the ``cos`` metric. Excludes are the
index's own ``exclude``; a category filter is :meth:`Catalog.filter_mask` after an
over-fetch (the index's ``keep=`` hook), over at most ``max_filter_fetch`` nearest items
(4,096 by default): the channel returns the in-category items among those, fewer than
``k`` when the category lies far from the query, instead of scanning the whole index
(1M items: 0.8–6 s per query before the bound, docs/reports/). The popular
channel answers category filters exactly.

Catalogue filter. The index holds only items the catalogue has: :meth:`load`
reconciles it with the catalogue, and the engine upserts into the catalogue before the
channels and deletes from the channels before the catalogue. So a single query without
a category filter never looks its candidates up in the catalogue: on a million-item
catalogue those ~130 dict lookups per search cost 0.1–0.15 ms (docs/reports/).
A caller that changes the catalogue itself must call :meth:`delete_items` /
:meth:`upsert_items` in that same order.

A subclass provides the encoders (the hooks :meth:`VectorChannel.open_encoders`,
:meth:`~VectorChannel.encode_items` and, for free text,
:meth:`~VectorChannel.encode_texts`) and a ``build`` classmethod that encodes the
catalogue and calls :func:`write_vectors`. Bundle files written here::

    index/index.usearch, index/ids.json, index/index.json   the VectorIndex
    signatures.npz    per item: id and a 64-bit digest of the metadata it was encoded from

Restarts. Bundles are immutable; ``upsert_items`` and ``delete_items`` change the
in-memory index only. The catalogue's update log is the durable record: :meth:`load`
reconciles the index with the catalogue, removing indexed items the catalogue no longer
has and indexing the items whose metadata digest differs from ``signatures.npz`` (new or
changed since the build): with the vector saved at the last catalogue compaction when
its digest still matches (:meth:`save_online_vectors`,
:mod:`recall_engine.runtime.online_vectors`), with the encoder otherwise. So a restart
encodes at most what changed since the last compaction, however many upserts came
before. Before any of that, :meth:`load` searches a sample of the bundle's stored
vectors (:func:`~recall_engine.runtime.index_check.check_index`) and refuses a bundle
whose index answers nonsense.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from annotated_types import Interval
from tqdm import tqdm

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.encoders import EncoderStats, MicroBatcher
from recall_engine.runtime.index import VectorIndex
from recall_engine.runtime.index_check import check_index
from recall_engine.runtime.npz_map import save_npz
from recall_engine.runtime.online_vectors import read_online_vectors, save_online_vectors
from recall_engine.runtime.vector_store import (
    MANIFEST_FIELD,
    MilvusSettings,
    VectorStore,
    check_collection_prefix,
    check_store,
    collection_prefix,
    describe,
)
from recall_engine.sdk.channel import (
    BuildExecutor,
    Candidates,
    Channel,
    ChannelContext,
    ChannelInfo,
    ItemRecord,
    LocalExecutor,
    Query,
)
from recall_engine.sdk.params import (
    KeyError_,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    UnitFloat,
)
from recall_engine.sdk.types import ColdItems, Evidence, NearItem

if TYPE_CHECKING:
    from recall_engine.runtime.artifacts import Bundle
    from recall_engine.runtime.catalog import Catalog

log = get_logger(__name__)

INDEX_DIR = "index"
SIGNATURES_FILE = "signatures.npz"
METRIC = "cos"
#: Items encoded per encoder call when (re-)indexing many items.
ENCODE_CHUNK = 256
_TINY = 1e-6
#: Over-fetch for the catalogue filter when the request has no category filter: it then
#: only drops items deleted since the index was built (the index's ``exclude`` already
#: makes room for excluded ids). A short answer is searched again with more.
FILTER_HEADROOM = 0.1
#: recall_cold scans at most this many cold items (a float32 matrix of them per
#: channel and process: 30 MiB at 384 dimensions); past it the engine filters a search.
MAX_COLD_SCAN = 20_000
#: Items whose scores place recall_cold's answers in the full ranking (see _full_ranks).
RANK_SAMPLE = 512
#: A text encoder whose quickest run of one text is under this gathers no texts: the
#: micro-batcher's wait (``max_delay_ms``, 2 ms) would cost more than a shared run saves
#: (VectorChannel._gather_texts_only_if_it_pays).
GATHER_TEXTS_ABOVE_S = 0.00025
GATHER_PROBE_RUNS = 20
GATHER_PROBE_BUDGET_S = 0.02
GATHER_PROBE_TEXT = "photos of distant galaxies and a history of jazz"


def filter_headroom(query: Query) -> float:
    """The share of ``k`` to over-fetch for the catalogue filter: all of it with a
    category filter (which may drop most candidates), else :data:`FILTER_HEADROOM`."""
    return 1.0 if query.categories else FILTER_HEADROOM


def fetch_size(k: int, query: Query) -> int:
    """Candidates to rank before the catalogue filter: ``k``, room for every excluded
    id, and :func:`filter_headroom`. A short answer is widened and tried again."""
    return k + len(query.exclude) + math.ceil(k * filter_headroom(query))


IndexDtype = Literal["f32", "f16", "bf16", "i8"]
Device = Literal["auto", "cpu", "cuda"]
Store = Literal["usearch", "milvus"]
MilvusIndex = Literal["HNSW", "FLAT", "AUTOINDEX"]


@dataclass(slots=True, frozen=True)
class VectorParams:
    """``[channels.<name>.params]`` every vector channel accepts; a subclass's ``Params``
    subclasses this and adds its own fields."""

    history_decay: Annotated[float, Interval(gt=0, le=1)] = 0.9
    max_history: PositiveInt = 50
    text_weight: UnitFloat = 0.5
    index_dtype: IndexDtype = "f32"
    device: Device = "auto"
    max_batch: PositiveInt = 32
    max_delay_ms: NonNegativeFloat = 2.0
    intra_op_threads: NonNegativeInt = 0
    # HNSW search breadth (ef) at serve time; 0 keeps what the index was built with.
    # A search for n ids explores max(expansion_search, n) candidates.
    expansion_search: NonNegativeInt = 0
    # With a category filter: rank at most this many nearest items, then return those of
    # them the filter keeps, even if fewer than k (see VectorIndex.search's max_fetch).
    max_filter_fetch: PositiveInt = 4096
    # Where the item vectors live (module docstring). usearch: memory-map the bundle's
    # index file (shared by the host's processes) instead of reading it into each one.
    store: Store = "usearch"
    memory_map: bool = True
    # milvus: http(s)://HOST:19530, or a local .db file (Milvus Lite: tests, one process)
    milvus_uri: str = ""
    # collection name prefix (build time); default recall_<channel>
    collection: str = ""
    milvus_index: MilvusIndex = "HNSW"
    # the environment variable holding the Milvus token ("user:password" or an API key)
    milvus_token_env: str = ""

    def __post_init__(self) -> None:
        if self.store == "milvus":
            if not self.milvus_uri:
                raise KeyError_(
                    "milvus_uri",
                    "required with store = 'milvus': http://HOST:19530, or a local "
                    "file ending in .db for Milvus Lite",
                )
            if self.index_dtype != "f32":
                raise KeyError_(
                    "index_dtype",
                    f"the milvus store keeps float32 vectors; got {self.index_dtype!r} "
                    "(remove index_dtype or set it to 'f32')",
                )
        else:
            for key in ("milvus_uri", "collection", "milvus_token_env"):
                if getattr(self, key):
                    raise KeyError_(key, f"is for store = 'milvus', but store is {self.store!r}")
        if self.collection:
            problem = check_collection_prefix(self.collection)
            if problem:
                raise KeyError_("collection", problem)

    def milvus_settings(self) -> MilvusSettings:
        """How to reach and index the Milvus collection (``store = "milvus"``)."""
        token = os.environ.get(self.milvus_token_env, "") if self.milvus_token_env else ""
        return MilvusSettings(
            uri=self.milvus_uri,
            token=token,
            index=self.milvus_index,
            expansion_search=self.expansion_search or 256,
        )


# --------------------------------------------------------------------------- build side

#: The channel and params of the ``build`` running in this context: set by
#: :class:`VectorChannel` around every subclass's ``build`` classmethod, so that
#: :func:`write_vectors` writes to the store the channel's params choose without each
#: plugin passing them on.
_BUILDING: ContextVar[tuple[str, VectorParams] | None] = ContextVar("_BUILDING", default=None)


@contextmanager
def building(channel: str, params: VectorParams) -> Iterator[None]:
    """Within the block, :func:`write_vectors` writes for ``channel`` to the store that
    ``params`` choose (what :class:`VectorChannel` does around its subclasses' ``build``;
    use it when calling ``write_vectors`` from elsewhere)."""
    token = _BUILDING.set((channel, params))
    try:
        yield
    finally:
        _BUILDING.reset(token)


def item_signature(item: ItemRecord) -> int:
    """64-bit digest of the metadata an item's vector is computed from."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (item.title, item.text, *item.categories):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
    return int.from_bytes(digest.digest(), "little")


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="item", disable=not enabled, leave=False, dynamic_ncols=True
    )


_BUILD_EXECUTOR: ContextVar[BuildExecutor | None] = ContextVar(
    "recall_engine_build_executor", default=None
)


@contextmanager
def using_executor(executor: BuildExecutor) -> Iterator[None]:
    """Run :func:`encode_all`'s chunks on ``executor`` inside this block (``build_all``
    wraps every ``Channel.build`` in it with the ``BuildContext.executor``)."""
    token = _BUILD_EXECUTOR.set(executor)
    try:
        yield
    finally:
        _BUILD_EXECUTOR.reset(token)


def encode_all(
    encode: Callable[[list[ItemRecord]], np.ndarray],
    items: Sequence[ItemRecord],
    dim: int,
    *,
    chunk: int = ENCODE_CHUNK,
    size: Callable[[ItemRecord], int] | None = None,
    progress: bool = False,
    desc: str = "encoding",
) -> np.ndarray:
    """``encode`` over ``items`` in chunks, rows in ``items`` order, under a progress bar.
    ``size`` (e.g. text length) groups similar items into a chunk so padding stays small.
    The chunks run on the build's executor (:func:`using_executor`): here by default, on
    Ray actors with ``recall-engine build --ray``; the chunks are the same either way."""
    order = (
        sorted(range(len(items)), key=lambda i: size(items[i])) if size else list(range(len(items)))
    )
    rows = [order[start : start + chunk] for start in range(0, len(order), chunk)]
    executor = _BUILD_EXECUTOR.get() or LocalExecutor()
    out = np.zeros((len(items), dim), dtype=np.float32)
    with progress_bar(len(items), desc, progress) as bar:
        vectors = executor.map(encode, ([items[i] for i in r] for r in rows))
        for r, block in zip(rows, vectors, strict=True):
            out[r] = block
            bar.update(len(r))
    return out


def write_vectors(
    out: Path,
    items: Sequence[ItemRecord],
    vectors: np.ndarray,
    *,
    dtype: str = "f32",
    index_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Index ``vectors`` (one row per item) and write the items' metadata digests; rows
    that are zero or not finite (the encoder had nothing to go on) are left out. The
    store is the one the params of the channel being built choose (:func:`building`):
    usearch under ``out/index`` (``index_options`` go to :class:`VectorIndex`, e.g. a
    lower ``expansion_add`` builds a million-item index about twice as fast), or a new
    Milvus collection. Returns the manifest fields ``dims``, ``metric``, ``item_count``,
    and for Milvus ``vector_store`` (the collection and a digest of the vectors)."""
    ids, matrix = usable_rows([it.item_id for it in items], vectors)
    target = _BUILDING.get()
    extra: dict[str, Any] = {}
    if target is not None and target[1].store == "milvus":
        from recall_engine.runtime.vector_store_milvus import write_collection

        name, params = target
        extra[MANIFEST_FIELD] = write_collection(
            params.milvus_settings(),
            collection_prefix(name, params.collection),
            ids,
            matrix,
            metric=METRIC,
        )
        count = len(ids)
    else:
        index = VectorIndex(
            int(vectors.shape[1]), metric=METRIC, dtype=dtype, **(index_options or {})
        )
        if ids:
            index.add(ids, matrix)
        index.save(out / INDEX_DIR)
        count = len(index)
    by_id = {it.item_id: it for it in items}
    digests = np.fromiter((item_signature(by_id[i]) for i in ids), dtype=np.uint64, count=len(ids))
    with open(out / SIGNATURES_FILE, "wb") as fh:
        save_npz(fh, ids=np.asarray(ids, dtype=str), digests=digests)
    skipped = len(items) - len(ids)
    if skipped:
        kept = set(ids)
        log.warning(
            "items_without_vector",
            count=skipped,
            example=next((it.item_id for it in items if it.item_id not in kept), None),
        )
    return {"dims": int(vectors.shape[1]), "metric": METRIC, "item_count": count, **extra}


def usable_rows(ids: Sequence[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The ids and rows whose vector is finite and not ~zero."""
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
    ok = np.isfinite(norms) & (norms > _TINY)
    if ok.all():
        return list(ids), vectors
    return [i for i, keep in zip(ids, ok.tolist(), strict=True) if keep], vectors[ok]


def _unit(vector: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm <= _TINY:
        return None
    return (vector / norm).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- serve side


class VectorChannel(Channel):
    """Base class: item vectors in a vector store, queries by history and/or text.

    Subclasses set :attr:`Params` (a :class:`VectorParams` subclass), implement the
    encoder hooks and a ``build`` classmethod (run inside :func:`building`, so its
    :func:`write_vectors` writes to the store the params choose). Thread-safe: searches
    run concurrently; upserts, deletes and the start-up reconciliation are serialised by
    one lock (the usearch index has its own lock around every usearch call).
    """

    trusted_output = True  # filters by the catalogue itself (recall_engine.sdk.testing)

    Params: ClassVar[type[VectorParams]] = VectorParams
    #: Whether :meth:`encode_texts` is implemented (free-text queries).
    supports_text: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        build = cls.__dict__.get("build")
        if isinstance(build, classmethod):
            setattr(cls, "build", classmethod(_in_building(build.__func__)))  # noqa: B010

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.params = ctx.params_as(self.Params)
        self._index: VectorStore | None = None
        self._batcher: MicroBatcher[str] | None = None
        self._encoder_stats: EncoderStats | None = None  # texts encoded on the call's thread
        self._write_lock = threading.Lock()
        self._version = ""
        self._reconciled = {"added": 0, "removed": 0}
        # metadata digest of every item whose vector was encoded here, not in the bundle,
        # and how many of those encodings no saved file holds yet
        self._online: dict[str, int] = {}
        self._unsaved = 0
        # recall_cold's vectors of the cold items, keyed by (cold set token, changes), and
        # its sample of items for estimating full-ranking positions, keyed by changes;
        # ``_changes`` counts online upserts and deletes, which may change their rows
        self._cold_rows: tuple[tuple[int, int], _Rows] | None = None
        self._rank_rows: tuple[int, _Rows] | None = None
        self._changes = 0

    # -- hooks for subclasses -----------------------------------------------------------
    @abc.abstractmethod
    def open_encoders(self, bundle: Bundle) -> None:
        """Open the encoder(s) from ``bundle`` (called by :meth:`load`, before the index
        is reconciled with the catalogue)."""

    @abc.abstractmethod
    def encode_items(self, items: Sequence[ItemRecord]) -> np.ndarray:
        """Vectors of ``items``, float32 ``[len(items), dim]``, exactly as the build
        computed them; an all-zero row means "nothing to go on" (not indexed)."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of free texts, float32 ``[len(texts), dim]`` (zero row: unusable)."""
        raise NotImplementedError(f"{type(self).__name__} does not encode free text")

    def text_batch_limit(self) -> int:
        """How many texts one :meth:`encode_texts` run takes at most (``max_batch`` by
        default). At 1 there is nothing to gather, so a request's text is encoded on
        the channel call's own thread, without the micro-batcher's hand-off (an int8
        sentence encoder runs one text per run: see ``TextEncoder``)."""
        return self.params.max_batch

    def text_is_usable(self, text: str) -> bool:
        """Cheap check used by :meth:`accepts`; by default any non-blank text."""
        return bool(text.strip())

    def warmup_encoders(self) -> None:  # noqa: B027 - optional hook
        """Run the encoders on representative batch shapes."""

    def encoder_details(self) -> dict[str, str]:
        """Extra ``info().details`` (device, precision, model file ...)."""
        return {}

    def close_encoders(self) -> None:  # noqa: B027 - optional hook
        """Release encoder resources."""

    # -- lifecycle ------------------------------------------------------------------------
    def load(self) -> None:
        bundle = self.ctx.open_bundle()
        self._version = bundle.version
        built = _read_signatures(bundle.path / SIGNATURES_FILE)
        self._index = self._open_store(bundle, built)
        self.open_encoders(bundle)
        self._reconcile(built)
        if self.supports_text:
            # the series the micro-batcher records under the channel's name, also for
            # texts encoded on the call's own thread (see _query_vectors)
            self._encoder_stats = EncoderStats(self.ctx.name)
            if self.text_batch_limit() > 1:
                self._batcher = MicroBatcher(
                    self.encode_texts,
                    max_batch=self.params.max_batch,
                    max_delay_ms=self.params.max_delay_ms,
                    name=self.ctx.name,
                )

    def _open_store(self, bundle: Bundle, built: Mapping[str, int]) -> VectorStore:
        """The bundle's vectors, in the store it was built for (checked against the
        ``store`` param), after a sample search said they answer sanely."""
        entry = bundle.manifest.get(MANIFEST_FIELD) or {"kind": "usearch"}
        kind = entry.get("kind", "usearch")
        where = f"{self.ctx.name}/{bundle.version}"
        if kind != self.params.store:
            raise ValueError(
                f"channels.{self.ctx.name}.params.store is {self.params.store!r}, but "
                f"{where} was built for {kind!r}: rebuild the channel, or set store = {kind!r}"
            )
        if kind == "milvus":
            from recall_engine.runtime.vector_store_milvus import MilvusStore

            store = MilvusStore.open(
                self.params.milvus_settings(),
                str(entry["collection"]),
                dim=int(bundle.manifest["dims"]),
                metric=str(bundle.manifest.get("metric") or METRIC),
                ids=built,
            )
            try:
                check_store(store, f"{where} ({entry['collection']})")
            except BaseException:
                store.close()
                raise
            return store
        ef = self.params.expansion_search
        index = VectorIndex.load(
            bundle.path / INDEX_DIR,
            view=self.params.memory_map,
            **({"expansion_search": ef} if ef else {}),
        )
        check_index(index, f"{where}/{INDEX_DIR}")
        return index

    def warmup(self) -> None:
        self.warmup_encoders()
        self._gather_texts_only_if_it_pays()
        first = self.index.sample_ids(1)
        self.recall(Query(user_id="__warmup__", history=tuple(first)), 10)
        if self.supports_text:
            self.recall(Query(user_id="__warmup__", text="warm up"), 10)
            self.recall_batch([Query(text="warm up"), Query(history=tuple(first))], 10)

    def _gather_texts_only_if_it_pays(self) -> None:
        """The micro-batcher shares one encoder run between concurrent requests, and
        makes each request wait up to ``max_delay_ms`` (2 ms) for company. An encoder
        whose run of one text costs a fraction of that wait saves nothing by sharing:
        then texts are encoded on the channel call's own thread. Measured once, at
        warm-up, as the quickest of a few runs (a busy host slows every run, not the
        quickest); logged as ``text_encoder_inline``. The content channel's bag-of-terms
        encoder takes ~0.02 ms a text; MiniLM fp32 takes milliseconds and keeps it. The
        probe stops at the first quick run, or once it has spent ``GATHER_PROBE_BUDGET_S``
        (a slow encoder is not run twenty times at every warm-up)."""
        if self._batcher is None:
            return
        spent = 0.0
        for _ in range(GATHER_PROBE_RUNS):
            started = time.perf_counter()
            self.encode_texts([GATHER_PROBE_TEXT])
            took = time.perf_counter() - started
            if took < GATHER_TEXTS_ABOVE_S:
                self._batcher.close()
                self._batcher = None
                log.info(
                    "text_encoder_inline",
                    channel=self.ctx.name,
                    ms_per_text=round(took * 1000, 4),
                    below_ms=GATHER_TEXTS_ABOVE_S * 1000,
                )
                return
            spent += took
            if spent >= GATHER_PROBE_BUDGET_S:
                return

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        self.close_encoders()
        if self._index is not None:
            self._index.close()

    @property
    def index(self) -> VectorStore:
        if self._index is None:
            raise RuntimeError(f"channel {self.ctx.name!r}: load() has not run")
        return self._index

    # -- queries --------------------------------------------------------------------------
    def accepts(self, query: Query) -> bool:
        index = self.index
        if any(item in index for item in query.history[-self.params.max_history :]):
            return True
        return self.supports_text and self.text_is_usable(query.text)

    def recall(self, query: Query, k: int) -> Candidates:
        vector = self._query_vectors([query], batched=False)[0]
        if vector is None or k <= 0:
            return Candidates.empty()
        return self._search_one(vector, query, k)

    def recall_batch(self, queries: Sequence[Query], k: int) -> list[Candidates]:
        """One encoder call for all texts and one index search for all rows, over-fetched
        for the largest exclude; rows that the filters leave short are searched again
        alone."""
        vectors = self._query_vectors(queries, batched=True)
        out = [Candidates.empty() for _ in queries]
        rows = [i for i, v in enumerate(vectors) if v is not None]
        if not rows or k <= 0:
            return out
        index = self.index
        size = len(index)
        if size == 0:
            return out
        fetch = min(size, max(fetch_size(k, queries[i]) for i in rows))
        found = index.search(np.stack([v for v in vectors if v is not None]), fetch)
        catalog = self.ctx.catalog
        for i, (ids, scores) in zip(rows, found, strict=True):
            mask = np.asarray(catalog.filter_mask(ids, queries[i]), dtype=bool)
            if int(mask.sum()) >= k or len(ids) < fetch or fetch >= size:
                kept = [item for item, keep in zip(ids, mask.tolist(), strict=True) if keep]
                out[i] = _candidates(kept[:k], scores[mask][:k])
            else:
                out[i] = self._search_one(vectors[i], queries[i], k)  # type: ignore[arg-type]
        return out

    def _search_one(self, vector: np.ndarray, query: Query, k: int) -> Candidates:
        """One query. The index holds catalogue items only (see "Catalogue filter" in
        the module docstring), so the catalogue is asked per candidate only for a
        category filter; excludes are the index's own ``exclude``."""
        keep, limit = None, None
        if query.categories:
            catalog = self.ctx.catalog
            keep = lambda found: catalog.filter_mask(found, query)  # noqa: E731
            limit = self.params.max_filter_fetch
        ids, scores = self.index.search(
            vector,
            k,
            exclude=query.exclude,
            headroom=filter_headroom(query),
            keep=keep,
            max_fetch=limit,
        )[0]
        return _candidates(ids, scores)

    def recall_cold(self, query: Query, k: int, cold: ColdItems) -> Candidates | None:
        """The best ``k`` cold items (``RecallsColdItems``): an exact scan of a matrix of
        their vectors, kept until the cold set or the index changes, with the ranks they
        would hold in ``recall``'s full ranking; None past :data:`MAX_COLD_SCAN` cold
        items (the engine then filters a full search)."""
        if len(cold) > MAX_COLD_SCAN:
            return None
        vector = self._query_vectors([query], batched=False)[0]
        if vector is None or k <= 0:
            return Candidates.empty()
        key = (cold.token, self._changes)
        if self._cold_rows is None or self._cold_rows[0] != key:
            self._cold_rows = (key, self._rows(cold.ids))
        rows = self._cold_rows[1]
        if not rows.ids:
            return Candidates.empty()
        scores = self._scores(rows.vectors, vector)
        found = np.flatnonzero(self._allowed(rows, query))
        if len(found) > k:
            found = found[np.argpartition(-scores[found], k - 1)[:k]]
        # best first; equal scores by id (ids are sorted, so by position)
        found = found[np.lexsort((found, -scores[found]))]
        best = scores[found].astype(np.float32)
        return Candidates(
            [rows.ids[i] for i in found.tolist()], best, self._full_ranks(query, vector, best)
        )

    def _rows(self, item_ids: Sequence[str]) -> _Rows:
        """The indexed items of ``item_ids`` and their vectors (unit rows for ``cos``)."""
        vectors, found = self.index.vectors(item_ids)
        ids = [item_ids[i] for i in found]
        if self.index.metric == "cos" and len(ids):
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1.0)
        return _Rows(
            ids, np.ascontiguousarray(vectors, np.float32), {i: n for n, i in enumerate(ids)}
        )

    def _allowed(self, rows: _Rows, query: Query) -> np.ndarray:
        """Which of ``rows`` ``query`` may get: its excluded items out (a look-up per
        excluded id, not a test per row), and only its categories when it names some."""
        allowed = np.ones(len(rows.ids), dtype=bool)
        allowed[[rows.row_of[i] for i in query.exclude if i in rows.row_of]] = False
        if query.categories:
            allowed &= np.asarray(self.ctx.catalog.filter_mask(rows.ids, query), dtype=bool)
        return allowed

    def _scores(self, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """The index's scores of ``rows`` (see :meth:`_rows`) for a query vector."""
        if self.index.metric == "l2sq":
            scores: np.ndarray = -np.square(rows - vector).sum(axis=1)
        else:  # cos: rows are unit vectors, as the query is; ip: as stored
            scores = rows @ vector
        return scores

    def _full_ranks(self, query: Query, vector: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Where items scoring ``scores`` (non-increasing) would stand in ``recall``'s
        full ranking for ``query``: 1 + how many items it may return score higher,
        counted over :data:`RANK_SAMPLE` sampled items (every item of a smaller index,
        so exact there) and scaled to the index; strictly increasing. Fusion ranks a
        new item by it, so one the channel barely found does not tie with one it likes."""
        if self._rank_rows is None or self._rank_rows[0] != self._changes:
            self._rank_rows = (self._changes, self._rows(self.index.sample_ids(RANK_SAMPLE)))
        sample = self._rank_rows[1]
        if not sample.ids:
            return np.arange(1, len(scores) + 1, dtype=np.int64)
        allowed = self._allowed(sample, query)
        seen = np.sort(self._scores(sample.vectors, vector)[allowed].astype(np.float32))
        above = len(seen) - np.searchsorted(seen, scores, side="right")
        scale = max(len(self.index), len(sample.ids)) / len(sample.ids)  # 1 / sampling rate
        estimate = 1 + np.rint(above * scale).astype(np.int64)
        ranks = np.maximum(estimate, np.arange(1, len(scores) + 1))
        return np.maximum.accumulate(ranks - np.arange(len(ranks))) + np.arange(len(ranks))

    def _query_vectors(self, queries: Sequence[Query], *, batched: bool) -> list[np.ndarray | None]:
        history = [self._history_vector(q.history) for q in queries]
        text: list[np.ndarray | None] = [None] * len(queries)
        if self.supports_text:
            rows = [i for i, q in enumerate(queries) if q.text.strip()]
            if rows:
                texts = [queries[i].text for i in rows]
                if not batched and self._batcher is not None:
                    encoded = [self._batcher.submit(texts[0])]
                else:  # on this thread, recorded as a batch (load() made the stats)
                    assert self._encoder_stats is not None
                    encoded = list(self._encoder_stats.run(self.encode_texts, texts))
                for i, vector in zip(rows, encoded, strict=True):
                    text[i] = _unit(np.asarray(vector, dtype=np.float32))
        weight = self.params.text_weight
        return [_blend(h, t, weight) for h, t in zip(history, text, strict=True)]

    def _history_vector(self, history: Sequence[str]) -> np.ndarray | None:
        recent = history[-self.params.max_history :]
        vectors, positions = self.index.vectors(recent)
        if not positions:
            return None
        age = (len(recent) - 1) - np.asarray(positions, dtype=np.float64)
        weights = np.power(self.params.history_decay, age)
        return _unit((weights @ vectors) / weights.sum())

    # -- online changes -------------------------------------------------------------------
    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        """Encode ``items`` and add or replace them in the index; visible to the next
        search. Items the encoder has nothing to go on for are not indexed (nor
        counted); an older vector of such an item is removed."""
        latest = list({it.item_id: it for it in items}.values())
        with self._write_lock:
            try:
                return self._index_items(latest)
            finally:  # after the change: a matrix read meanwhile has the older count
                self._changes += 1

    def delete_items(self, item_ids: Sequence[str]) -> int:
        with self._write_lock:
            for item_id in item_ids:
                self._online.pop(item_id, None)
            try:
                return self.index.delete(list(item_ids))
            finally:
                self._changes += 1

    @property
    def unsaved_online_vectors(self) -> int:
        """Items encoded since the last :meth:`save_online_vectors`: what a restart now
        would have to encode again."""
        return self._unsaved

    def save_online_vectors(self) -> int:
        """Save the vectors encoded while serving beside the catalogue
        (``Catalog.online_vectors_file``), for the next start to reuse. Called by the
        engine before it compacts the catalogue and whenever
        :attr:`unsaved_online_vectors` passes its bound. Returns how many were saved."""
        path = self.ctx.catalog.online_vectors_file(self.ctx.name, self._version)
        if path is None:
            return 0
        with self._write_lock:
            ids = list(self._online)
            vectors, found = self.index.vectors(ids)
            ids = [ids[i] for i in found]
            save_online_vectors(path, ids, [self._online[i] for i in ids], vectors)
            self._unsaved = 0
        return len(ids)

    def _index_items(self, items: Sequence[ItemRecord]) -> int:
        added = 0
        for start in range(0, len(items), ENCODE_CHUNK):
            chunk = items[start : start + ENCODE_CHUNK]
            ids, vectors = usable_rows([it.item_id for it in chunk], self.encode_items(chunk))
            if len(ids) < len(chunk):
                unusable = set(it.item_id for it in chunk) - set(ids)
                self.index.delete(unusable)
                for item_id in unusable:
                    self._online.pop(item_id, None)
                log.warning("items_without_vector", channel=self.ctx.name, count=len(unusable))
            if ids:
                self.index.add(ids, vectors)
                digests = {it.item_id: item_signature(it) for it in chunk}
                self._online.update((i, digests[i]) for i in ids)
                self._unsaved += len(ids)
            added += len(ids)
        return added

    def _reuse_saved(self, items: list[ItemRecord]) -> tuple[int, list[ItemRecord]]:
        """Index those of ``items`` whose vector was saved from the same metadata; return
        how many, and the items still to encode."""
        saved = read_online_vectors(
            self.ctx.catalog.online_vectors_file(self.ctx.name, self._version), self.index.dim
        )
        if not saved:
            return 0, items
        reuse: list[tuple[str, int, np.ndarray]] = []
        rest: list[ItemRecord] = []
        for it in items:
            hit = saved.get(it.item_id)
            digest = item_signature(it)
            if hit is not None and hit[0] == digest:
                reuse.append((it.item_id, digest, hit[1]))
            else:
                rest.append(it)
        if reuse:
            self.index.add([r[0] for r in reuse], np.stack([r[2] for r in reuse]))
            self._online.update((r[0], r[1]) for r in reuse)
        return len(reuse), rest

    def _reconcile(self, built: Mapping[str, int]) -> None:
        """Bring the index in line with the catalogue (see the module docstring)."""
        catalog = self.ctx.catalog
        if len(catalog) == 0:  # no catalogue configured: serve the bundle as built
            return
        started = time.perf_counter()
        index = self.index
        with self._write_lock:
            known = index.ids()
            stale = [known[n] for n in np.flatnonzero(~catalog.present(known)).tolist()]
            if stale:
                index.delete(stale)
            todo = _changed_items(catalog, built, index)
            reused, todo = self._reuse_saved(todo) if todo else (0, todo)
            added = reused + (self._index_items(todo) if todo else 0)
        self._reconciled = {"added": added, "removed": len(stale)}
        if stale or todo or reused:
            log.info(
                "index_reconciled",
                channel=self.ctx.name,
                removed=len(stale),
                reused=reused,
                encoded=len(todo),
                added=added,
                seconds=round(time.perf_counter() - started, 3),
            )

    # -- reporting ------------------------------------------------------------------------
    def info(self) -> ChannelInfo:
        index = self.index
        details = {
            "dims": str(index.dim),
            "metric": index.metric,
            "index_dtype": index.dtype,
            "index_simd": index.hardware_acceleration,
            **{k: str(v) for k, v in describe(index).items()},
            "text_queries": "yes" if self.supports_text else "no",
            "history_decay": str(self.params.history_decay),
            "reconciled_added": str(self._reconciled["added"]),
            "reconciled_removed": str(self._reconciled["removed"]),
            **self.encoder_details(),
        }
        return ChannelInfo(version=self._version, item_count=len(index), details=details)

    def explain(self, query: Query, item_ids: Sequence[str]) -> dict[str, Evidence]:
        """``Explainable``: per candidate, the three history items (of the newest
        ``max_history``) whose stored vectors have the highest cosine with the
        candidate's, and with text, the text vector's cosine and its weight in the
        query vector (``text_weight``; 1 without a usable history)."""
        index = self.index
        cand, found = index.vectors(item_ids)
        recent = list(dict.fromkeys(query.history[-self.params.max_history :]))
        hist, known = index.vectors(recent)
        cand = cand.reshape(len(found), -1)
        cand = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), _TINY)
        cos = np.zeros((len(found), 0))
        if known:
            hist = hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), _TINY)
            cos = cand @ hist.T
        text_cos, text_weight = None, 0.0
        if self.supports_text and query.text.strip():
            text = _unit(np.asarray(self.encode_texts([query.text])[0], dtype=np.float32))
            if text is not None:
                text_cos = cand @ text
                text_weight = self.params.text_weight if len(known) else 1.0
        out = {}
        for row, pos in enumerate(found):
            top = np.argsort(-cos[row], kind="stable")[:3].tolist()
            out[item_ids[pos]] = Evidence(
                nearest=tuple(NearItem(recent[known[j]], float(cos[row, j])) for j in top),
                similarity="cosine" if top else "",
                text_similarity=None if text_cos is None else float(text_cos[row]),
                text_weight=text_weight,
            )
        return out


def _in_building(build: Callable[..., Any]) -> Callable[..., Any]:
    """``build`` run inside :func:`building` for the channel it builds."""

    @functools.wraps(build)
    def wrapped(cls: type[VectorChannel], ctx: Any) -> Any:
        with building(ctx.name, ctx.params_as(cls.Params)):
            return build(cls, ctx)

    return wrapped


@dataclass(slots=True, frozen=True)
class _Rows:
    """Some indexed items' vectors as a matrix (``VectorChannel._rows``)."""

    ids: list[str]
    vectors: np.ndarray
    row_of: dict[str, int]


def _blend(
    history: np.ndarray | None, text: np.ndarray | None, text_weight: float
) -> np.ndarray | None:
    if history is None or text is None:
        return history if text is None else text
    mixed = _unit((1.0 - text_weight) * history + text_weight * text)
    return mixed if mixed is not None else history


def _candidates(ids: Sequence[str], scores: np.ndarray) -> Candidates:
    """Equal scores (items with identical vectors) ordered by id, so single and batched
    searches agree whatever order the index returned them in."""
    scores = np.asarray(scores, dtype=np.float32)
    if len(scores) > 1 and bool(np.any(np.diff(scores) == 0)):
        order = np.lexsort((np.asarray(ids, dtype=str), -scores))
        return Candidates([ids[i] for i in order.tolist()], scores[order])
    return Candidates(list(ids), scores)


def _changed_items(
    catalog: Catalog, built: Mapping[str, int], index: VectorStore
) -> list[ItemRecord]:
    """The catalogue's items that the index lacks or that changed since the build, a
    chunk at a time (the index answers ``in`` for a whole chunk when it can: over mapped
    id columns one search at a time would cost seconds at a million items)."""
    many = getattr(index, "contains_many", None)
    todo: list[ItemRecord] = []
    items = iter(catalog)
    while chunk := list(itertools.islice(items, 8192)):
        if many is not None:
            there = many([it.item_id for it in chunk]).tolist()
        else:
            there = [it.item_id in index for it in chunk]
        todo.extend(
            it
            for it, known in zip(chunk, there, strict=True)
            if not known or built.get(it.item_id) != item_signature(it)
        )
    return todo


def _read_signatures(path: Path) -> dict[str, int]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(zip(z["ids"].tolist(), z["digests"].tolist(), strict=True))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (rebuild the channel)") from None
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc

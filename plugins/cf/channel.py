"""The ``cf`` channel: build (learn + export), load and serve both modes, merge them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recall_engine.observability.logs import get_logger
from recall_engine.plugins.cf import item2item
from recall_engine.plugins.cf.histories import (
    VOCAB_FILE,
    Vocab,
    known_history,
    pad_left,
    recency_weights,
    training_log,
)
from recall_engine.plugins.cf.merge import rrf
from recall_engine.plugins.cf.params import CFParams
from recall_engine.sdk.channel import (
    BuildContext,
    Candidates,
    Channel,
    ChannelContext,
    ChannelInfo,
    Query,
)
from recall_engine.sdk.vector_channel import fetch_size

log = get_logger(__name__)

ENCODER_MANIFEST = "encoder/manifest.json"
INDEX_META = "index/index.json"
MANIFEST_FIELD = "cf"  # extra manifest field: {"modes": [...], "method": ..., ...}

Ranked = tuple[list[str], np.ndarray]
_EMPTY: Ranked = ([], np.zeros(0, dtype=np.float32))


@dataclass(slots=True, frozen=True)
class _Prepared:
    """One query's history as the modes read it."""

    query: Query
    idx: np.ndarray  # known history item indices, oldest first (newest max_history)
    positions: np.ndarray  # their positions in query.history


class CFChannel(Channel):
    """Collaborative filtering: item-to-item neighbours and a two-tower model."""

    trusted_output = True  # filters by the catalogue itself (recall_engine.sdk.testing)
    Params = CFParams

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.params: CFParams = ctx.params_as(CFParams)
        self._vocab: Vocab | None = None
        self._table: item2item.NeighbourTable | None = None
        self._encoder: Any = None  # recall_engine.runtime.encoders.OnnxModel
        self._index: Any = None  # recall_engine.runtime.index.VectorIndex
        self._version = ""
        self._built: dict[str, Any] = {}
        self._length = self.params.sequence_length

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, ctx: BuildContext) -> dict[str, Any]:
        """Learn the enabled modes from ``ctx.interactions`` and write ``vocab.npz``,
        ``item2item.npz``, ``encoder/`` and ``index/`` into ``ctx.out``."""
        params = ctx.params_as(CFParams)
        vocab, data = training_log(ctx.interactions)
        vocab.save(ctx.out / VOCAB_FILE)
        info: dict[str, Any] = {"modes": [], "users": data.n_users, "interactions": len(data.items)}
        fields: dict[str, Any] = {
            "item_count": len(vocab),
            "build_params": params.as_dict(),
            "model_hashes": {},
        }
        if params.item2item:
            method = params.resolved_method(len(vocab))
            t0 = time.perf_counter()
            x = item2item.user_item_matrix(
                data.users, data.items, data.weights, data.n_users, len(vocab), params.use_weights
            )
            table = item2item.learn(
                x,
                method,
                neighbours=params.neighbours,
                ease_lambda=params.ease_lambda,
                cosine_shrink=params.cosine_shrink,
                swing_alpha=params.swing_alpha,
                swing_max_users=params.swing_max_users,
                seed=ctx.seed,
                progress=ctx.progress,
            )
            table.save(ctx.out / item2item.ARTIFACT)
            info["modes"].append("item2item")
            info.update(
                method=method,
                neighbour_entries=table.nnz,
                item2item_seconds=round(time.perf_counter() - t0, 2),
            )
            log.info(
                "cf_item2item_built",
                method=method,
                items=len(vocab),
                entries=table.nnz,
                seconds=info["item2item_seconds"],
            )
        if params.two_tower:
            from recall_engine.plugins.cf import two_tower  # PyTorch: build time only

            model, report = two_tower.train(
                vocab, data, params, seed=ctx.seed, progress=ctx.progress
            )
            fields["model_hashes"] = two_tower.export(model, vocab, params, ctx.out, seed=ctx.seed)
            fields.update(dims=params.dim, metric="ip")
            info["modes"].append("two_tower")
            info.update(
                encoder=params.encoder,
                sequence_length=params.sequence_length,
                train_samples=report.samples,
                train_steps=report.steps,
                train_seconds=round(report.seconds, 2),
                final_loss=round(report.final_loss, 4),
            )
            log.info(
                "cf_two_tower_built",
                samples=report.samples,
                steps=report.steps,
                seconds=round(report.seconds, 2),
                loss=round(report.final_loss, 4),
            )
        fields[MANIFEST_FIELD] = info
        return fields

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        bundle = self.ctx.open_bundle()
        files = bundle.manifest["files"]
        self._built = dict(bundle.manifest.get(MANIFEST_FIELD) or {})
        vocab = Vocab.load(bundle.file(VOCAB_FILE))
        if self.params.item2item:
            self._require(bundle, item2item.ARTIFACT, files, "item2item")
            self._table = item2item.NeighbourTable.load(bundle.file(item2item.ARTIFACT), len(vocab))
        if self.params.two_tower:
            from recall_engine.runtime.encoders import OnnxModel
            from recall_engine.runtime.index import VectorIndex
            from recall_engine.runtime.index_check import check_index

            self._require(bundle, ENCODER_MANIFEST, files, "two_tower")
            self._require(bundle, INDEX_META, files, "two_tower")
            self._encoder = OnnxModel(
                bundle.file(ENCODER_MANIFEST).parent,
                device=self.params.device,
                intra_op_threads=self.params.encoder_threads,
            )
            ef = self.params.expansion_search
            overrides: dict[str, Any] = {"expansion_search": ef} if ef else {}
            self._index = VectorIndex.load(bundle.file(INDEX_META).parent, **overrides)
            # the digests say the files are the built ones; this says they work
            check_index(self._index, f"{self.name}/{bundle.version}/{INDEX_META}")
            # the encoder was trained (and its position table sized) for this length
            self._length = int(self._built.get("sequence_length", self.params.sequence_length))
        self._vocab = vocab
        self._version = bundle.version

    def _require(self, bundle: Any, name: str, files: Any, mode: str) -> None:
        if name not in files:
            raise ValueError(
                f"{bundle.path / name}: missing; this bundle was built without "
                f"{mode} (rebuild, or set channels.{self.name}.params.{mode} "
                "= false)"
            )

    def warmup(self) -> None:
        vocab = self._checked_vocab()
        history = tuple(vocab.ids[: min(len(vocab), 20)])
        for size in (1, 8):
            self.recall_batch([Query(user_id="__warmup__", history=history)] * size, 10)

    # ------------------------------------------------------------------ serve
    def accepts(self, query: Query) -> bool:
        """At least one history item was seen in training."""
        index = self._checked_vocab().index
        return any(item in index for item in query.history)

    def recall(self, query: Query, k: int) -> Candidates:
        return self.recall_batch([query], k)[0]

    def recall_batch(self, queries: Sequence[Query], k: int) -> list[Candidates]:
        """Item-to-item per query (NumPy, sub-millisecond); the two-tower mode runs one
        ONNX call and one index search for the whole batch."""
        vocab = self._checked_vocab()
        p = self.params
        limit = max(p.max_history if p.item2item else 0, self._length if p.two_tower else 0)
        prepared = [
            _Prepared(q, *known_history(vocab, q.history, limit))
            if k > 0
            else _Prepared(q, np.zeros(0, np.int64), np.zeros(0, np.int64))
            for q in queries
        ]
        use_i2i = p.item2item and (not p.two_tower or p.item2item_weight > 0)
        use_tt = p.two_tower and (not p.item2item or p.two_tower_weight > 0)
        i2i = [self._item2item(x, k) for x in prepared] if use_i2i else None
        tt = self._two_tower(prepared, k) if use_tt else None
        out = []
        for row in range(len(queries)):
            if i2i is not None and tt is not None:
                ids, scores = rrf(
                    [(i2i[row][0], p.item2item_weight), (tt[row][0], p.two_tower_weight)],
                    k,
                    p.rrf_k,
                )
            else:
                ids, scores = (i2i if i2i is not None else tt)[row]  # type: ignore[index]
            out.append(Candidates(ids, scores))
        return out

    def _item2item(self, x: _Prepared, k: int) -> Ranked:
        assert self._table is not None
        p = self.params
        idx, pos = x.idx[-p.max_history :], x.positions[-p.max_history :]
        if not len(idx):
            return _EMPTY
        q = x.query
        weights = recency_weights(
            pos,
            len(q.history),
            p.half_life,
            q.timestamps,
            p.half_life_days,
            q.events,
            p.event_weights,
        )
        cand, scores = self._table.aggregate(idx, weights)
        return self._select(cand, scores, q, k)

    def _select(self, cand: np.ndarray, scores: np.ndarray, q: Query, k: int) -> Ranked:
        """Top ``k`` of ``cand`` by score that the catalogue lets ``q`` see: sort only an
        over-fetch (``argpartition``), filter it, and widen it when too few survive."""
        ids = self._checked_vocab().ids
        fetch = min(len(cand), fetch_size(k, q))
        while True:
            if fetch < len(cand):
                top = np.argpartition(-scores, fetch - 1)[:fetch]
            else:
                top = np.arange(len(cand))
            top = top[np.lexsort((cand[top], -scores[top]))]
            names = [ids[i] for i in cand[top].tolist()]
            keep = np.asarray(self.ctx.catalog.filter_mask(names, q), dtype=bool)
            if keep.sum() >= k or fetch >= len(cand):
                chosen = np.flatnonzero(keep)[:k]
                return [names[i] for i in chosen.tolist()], scores[top[chosen]]
            fetch = min(len(cand), 4 * fetch)

    def _two_tower(self, prepared: Sequence[_Prepared], k: int) -> list[Ranked]:
        out: list[Ranked] = [_EMPTY] * len(prepared)
        rows = [r for r, x in enumerate(prepared) if len(x.idx)]
        if not rows:
            return out
        ids, mask = pad_left([prepared[r].idx for r in rows], self._length)
        vectors = self._encoder.run({"item_ids": ids, "mask": mask})
        fetch = max(fetch_size(k, prepared[r].query) for r in rows)
        hits = self._index.search(vectors, fetch)
        catalog = self.ctx.catalog
        for row, vector, (found, scores) in zip(rows, vectors, hits, strict=True):
            q = prepared[row].query
            keep = np.flatnonzero(catalog.filter_mask(found, q))[:k]
            if len(keep) < k and len(found) == fetch:  # a narrow filter: search with it
                found, scores = self._index.search(
                    vector,
                    k,
                    keep=lambda c, q=q: catalog.filter_mask(c, q),
                    max_fetch=self.params.max_filter_fetch,
                )[0]
                keep = np.arange(len(found))
            out[row] = ([found[i] for i in keep.tolist()], scores[keep])
        return out

    # ------------------------------------------------------------------ admin
    def info(self) -> ChannelInfo:
        vocab = self._vocab
        p = self.params
        modes = [m for m, on in (("item2item", p.item2item), ("two_tower", p.two_tower)) if on]
        details = {"modes": ",".join(modes), "merge": "rrf" if len(modes) == 2 else "none"}
        if p.item2item and self._table is not None:
            details.update(
                method=str(self._built.get("method", p.method)),
                neighbours=str(p.neighbours),
                neighbour_entries=str(self._table.nnz),
            )
        if p.two_tower and self._index is not None:
            details.update(
                dims=str(self._index.dim),
                metric=self._index.metric,
                index_dtype=self._index.dtype,
                index_simd=self._index.hardware_acceleration,
                encoder=str(self._built.get("encoder", p.encoder)),
                sequence_length=str(self._length),
                encoder_device=str(self._encoder.device),
            )
        return ChannelInfo(
            version=self._version, item_count=len(vocab) if vocab else 0, details=details
        )

    def delete_items(self, item_ids: Sequence[str]) -> int:
        """Deleted items leave the shared catalogue, which every recall checks."""
        index = self._checked_vocab().index
        return sum(1 for i in item_ids if i in index)

    def close(self) -> None:
        self._encoder = None
        self._index = None
        self._table = None

    def _checked_vocab(self) -> Vocab:
        if self._vocab is None:
            raise RuntimeError(f"channel {self.name!r}: load() was not called")
        return self._vocab

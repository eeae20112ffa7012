"""The ``cf`` channel: build (learn + export), load and serve both modes, merge them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from recall_engine.observability.logs import get_logger
from recall_engine.plugins.cf import item2item, mix
from recall_engine.plugins.cf.explain import evidence
from recall_engine.plugins.cf.histories import (
    VOCAB_FILE,
    Vocab,
    known_history,
    pad_left,
    recency_weights,
    training_log,
)
from recall_engine.plugins.cf.merge import rrf
from recall_engine.plugins.cf.mix import Choice, Mix
from recall_engine.plugins.cf.params import CFParams
from recall_engine.sdk.channel import (
    BuildContext,
    Candidates,
    Channel,
    ChannelContext,
    ChannelInfo,
    Query,
)
from recall_engine.sdk.types import Evidence
from recall_engine.sdk.vector_channel import fetch_size

if TYPE_CHECKING:
    from recall_engine.runtime.catalog_columns import BaseRows

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
        self._dense: item2item.DenseEase | None = None
        self._catalog_rows: BaseRows | None = None
        self._mix: Mix = _configured_mix(self.params)
        self._encoder: Any = None  # recall_engine.runtime.encoders.OnnxModel
        self._index: Any = None  # recall_engine.runtime.index.VectorIndex
        self._version = ""
        self._built: dict[str, Any] = {}
        self._length = self.params.sequence_length

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, ctx: BuildContext) -> dict[str, Any]:
        """Pick the mix on a validation carve of ``ctx.interactions`` (``auto_mix``,
        :mod:`.mix`), then learn the parts it uses from all of them and write
        ``vocab.npz``, ``item2item.npz`` (and ``ease.npy``), ``encoder/`` and
        ``index/`` into ``ctx.out``."""
        params = ctx.params_as(CFParams)
        vocab, data = training_log(ctx.interactions)
        vocab.save(ctx.out / VOCAB_FILE)
        info: dict[str, Any] = {"modes": [], "users": data.n_users, "interactions": len(data.items)}
        build_params = params.as_dict()
        fields: dict[str, Any] = {
            "item_count": len(vocab),
            "build_params": build_params,
            "model_hashes": {},
        }
        chosen = _configured_mix(params)
        lam = params.ease_lambda
        if params.auto_mix and params.item2item:  # two-tower alone: nothing to choose
            t0 = time.perf_counter()
            choice = _choose(params, vocab, data, ctx)
            if choice is not None:
                chosen, lam = choice.mix, choice.ease_lambda
                info["mix"] = chosen.as_dict()
                info["mix_seconds"] = round(time.perf_counter() - t0, 2)
                build_params.update(
                    mix=chosen.as_dict(), ease_lambda=lam, mix_validation=choice.report
                )
                log.info(
                    "cf_mix_chosen",
                    mix=chosen.name(),
                    ease_lambda=lam,
                    recall=choice.report["chosen_recall"],
                    best=choice.report["best_recall"],
                    score=choice.report["chosen_score"],
                    seconds=info["mix_seconds"],
                )
            else:
                log.warning("cf_mix_skipped", reason="no user has enough rows to carve from")
        # without a chosen mix every enabled mode is built, as configured
        mixed = "mix" in info
        if params.item2item and (not mixed or chosen.full_weight or chosen.recent_weight):
            cls._build_item2item(ctx, params, vocab, data, lam, info)
        if params.two_tower and (not mixed or chosen.two_tower_weight):
            cls._build_two_tower(ctx, params, vocab, data, info, fields)
        fields[MANIFEST_FIELD] = info
        return fields

    @staticmethod
    def _build_item2item(
        ctx: BuildContext,
        params: CFParams,
        vocab: Vocab,
        data: Any,
        lam: float,
        info: dict[str, Any],
    ) -> None:
        method = params.resolved_method(len(vocab))
        t0 = time.perf_counter()
        x = item2item.user_item_matrix(
            data.users, data.items, data.weights, data.n_users, len(vocab), params.use_weights
        )
        dense = params.auto_mix and params.dense_ease(len(vocab))
        if dense:
            b = item2item.ease_matrix(x, lam)
            item2item.DenseEase(b).save(ctx.out / item2item.DENSE_ARTIFACT)
            table = item2item.dense_neighbours(b, params.neighbours, ctx.progress)
            del b
        else:
            table = item2item.learn(
                x,
                method,
                neighbours=params.neighbours,
                ease_lambda=lam,
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
            dense=dense,
            ease_lambda=lam if method == "ease" else None,
            neighbour_entries=table.nnz,
            item2item_seconds=round(time.perf_counter() - t0, 2),
        )
        log.info(
            "cf_item2item_built",
            method=method,
            dense=dense,
            items=len(vocab),
            entries=table.nnz,
            seconds=info["item2item_seconds"],
        )

    @staticmethod
    def _build_two_tower(
        ctx: BuildContext,
        params: CFParams,
        vocab: Vocab,
        data: Any,
        info: dict[str, Any],
        fields: dict[str, Any],
    ) -> None:
        from recall_engine.plugins.cf import two_tower  # PyTorch: build time only

        model, report = two_tower.train(vocab, data, params, seed=ctx.seed, progress=ctx.progress)
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

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        bundle = self.ctx.open_bundle()
        files = bundle.manifest["files"]
        self._built = dict(bundle.manifest.get(MANIFEST_FIELD) or {})
        vocab = Vocab.load(bundle.file(VOCAB_FILE))
        self._mix = self._served_mix()
        m = self._mix
        if m.full_weight or m.recent_weight:
            self._require(bundle, item2item.ARTIFACT, files, "item2item")
            self._table = item2item.NeighbourTable.load(bundle.file(item2item.ARTIFACT), len(vocab))
            if self.params.auto_mix and item2item.DENSE_ARTIFACT in files:
                self._dense = item2item.DenseEase.load(
                    bundle.file(item2item.DENSE_ARTIFACT), len(vocab)
                )
        if m.two_tower_weight:
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
            self._index = VectorIndex.load(
                bundle.file(INDEX_META).parent, view=self.params.memory_map, **overrides
            )
            # the digests say the files are the built ones; this says they work
            check_index(self._index, f"{self.name}/{bundle.version}/{INDEX_META}")
            # the encoder was trained (and its position table sized) for this length
            self._length = int(self._built.get("sequence_length", self.params.sequence_length))
        # the vocabulary's rows in the catalogue's columns, found once: the item-to-item
        # candidates are vocabulary rows, so their filter skips the id search
        self._catalog_rows = (
            self.ctx.catalog.base_rows(vocab.ids.array.tolist())
            if self._table is not None
            else None
        )
        self._vocab = vocab
        self._version = bundle.version

    def _served_mix(self) -> Mix:
        """The bundle's chosen mix (``auto_mix``), less any mode the config turns off;
        otherwise the configured one."""
        p = self.params
        chosen = self._built.get("mix")
        if p.auto_mix and chosen:
            m = Mix(**chosen)
            m = Mix(
                m.full_weight if p.item2item else 0.0,
                m.recent_weight if p.item2item else 0.0,
                m.half_life,
                m.two_tower_weight if p.two_tower else 0.0,
            )
            if m.lists():
                return m
        return _configured_mix(p)

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
        """The item-to-item lists per query (NumPy, sub-millisecond); the two-tower list
        runs one ONNX call and one index search for the whole batch; several lists are
        merged by weighted RRF."""
        vocab = self._checked_vocab()
        p, m = self.params, self._mix
        empty = np.zeros(0, np.int64)
        prepared = [
            _Prepared(q, *known_history(vocab, q.history, self._history_limit(q)))
            if k > 0
            else _Prepared(q, empty, empty)
            for q in queries
        ]
        lists: list[tuple[list[Ranked], float]] = []
        if m.full_weight:
            lists.append(([self._item2item(x, k, full=True) for x in prepared], m.full_weight))
        if m.recent_weight:
            lists.append(([self._item2item(x, k, full=False) for x in prepared], m.recent_weight))
        if m.two_tower_weight:
            lists.append((self._two_tower(prepared, k), m.two_tower_weight))
        out = []
        for row in range(len(queries)):
            if len(lists) == 1:
                ids, scores = lists[0][0][row]
            else:
                ids, scores = rrf([(ranked[row][0], w) for ranked, w in lists], k, p.rrf_k)
            out.append(Candidates(ids, scores))
        return out

    def _history_limit(self, q: Query) -> int:
        m = self._mix
        full = len(q.history) if m.full_weight else 0
        recent = self.params.max_history if m.recent_weight else 0
        return max(full, recent, self._length if m.two_tower_weight else 0, 1)

    def _item2item(self, x: _Prepared, k: int, *, full: bool) -> Ranked:
        """``full``: every known history item, weight 1 (with the dense matrix: EASE);
        else the newest ``max_history`` with the recency weights of the mix's
        half-life (and ``half_life_days`` / ``event_weights`` as configured)."""
        assert self._table is not None
        p = self.params
        idx, pos = (
            (x.idx, x.positions)
            if full
            else (x.idx[-p.max_history :], x.positions[-p.max_history :])
        )
        if not len(idx):
            return _EMPTY
        q = x.query
        if full:
            weights = np.ones(len(idx), dtype=np.float32)
        else:
            weights = recency_weights(
                pos,
                len(q.history),
                self._mix.half_life,
                q.timestamps,
                p.half_life_days,
                q.events,
                p.event_weights,
            )
        scorer = self._dense if self._dense is not None else self._table
        cand, scores = scorer.aggregate(idx, weights)
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
            names = ids.take(cand[top])
            keep = np.asarray(
                self.ctx.catalog.filter_mask(names, q, rows=(self._catalog_rows, cand[top])),
                dtype=bool,
            )
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
        p, m = self.params, self._mix
        uses = (("item2item", m.full_weight or m.recent_weight), ("two_tower", m.two_tower_weight))
        modes = [mode for mode, on in uses if on]
        details = {
            "modes": ",".join(modes),
            "merge": "rrf" if m.lists() > 1 else "none",
            "mix": m.name(),
            "mix_source": "build" if p.auto_mix and self._built.get("mix") else "config",
        }
        if self._table is not None:
            details.update(
                method=str(self._built.get("method", p.method)),
                scorer="ease_dense" if self._dense is not None else "neighbours",
                neighbours=str(p.neighbours),
                neighbour_entries=str(self._table.nnz),
            )
        if self._index is not None:
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
        self._dense = None
        self._catalog_rows = None

    def _checked_vocab(self) -> Vocab:
        if self._vocab is None:
            raise RuntimeError(f"channel {self.name!r}: load() was not called")
        return self._vocab

    def explain(self, query: Query, item_ids: Sequence[str]) -> dict[str, Evidence]:
        """``Explainable``: the candidates' nearest history items by item-to-item score,
        and the two-tower score (:func:`.explain.evidence`)."""
        return evidence(
            self._checked_vocab(),
            query,
            item_ids,
            table=self._table,
            dense=self._dense,
            encoder=self._encoder,
            index=self._index,
            length=self._length,
        )


def _configured_mix(p: CFParams) -> Mix:
    """The lists as the config sets them (``auto_mix`` off, or a bundle without a
    chosen mix): the recent item-to-item list and the two-tower list, a mode alone
    whatever its weight."""
    i2i = (p.item2item_weight if p.two_tower else 1.0) if p.item2item else 0.0
    tt = (p.two_tower_weight if p.item2item else 1.0) if p.two_tower else 0.0
    return Mix(0.0, i2i, p.half_life, tt)


def _choose(params: CFParams, vocab: Vocab, data: Any, ctx: BuildContext) -> Choice | None:
    lists = None
    if params.two_tower:
        from recall_engine.plugins.cf import two_tower  # PyTorch: build time only

        lists = two_tower.validation_lists(
            vocab, params, mix.LIST_DEPTH * params.validation_k, seed=ctx.seed
        )
    return mix.select(
        params, data, len(vocab), seed=ctx.seed, two_tower_lists=lists, progress=ctx.progress
    )

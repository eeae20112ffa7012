"""``content``: item vectors computed from metadata alone, trained on behaviour.

An item's categories, title and text words, ``Label: value`` fields and year become
weighted terms (:mod:`.terms`, pure Python, the same at build and serve time); a small
encoder (weighted sum of term embeddings → linear → L2 norm, :mod:`.model`) maps them
to a vector. It is trained briefly with a contrastive objective on items co-consumed by
the same user, so that vectors reflect behaviour, but it reads metadata only: items
nobody has interacted with yet (brand-new ones included) get vectors as good as their
metadata, which is this channel's point. Served with ONNX Runtime, no PyTorch.

Queries: history (recency-weighted mean of stored item vectors) and/or free text (its
words as terms, through the same encoder); see :mod:`recall_engine.sdk.vector_channel`.

Params (:class:`ContentParams`: those of
:class:`~recall_engine.sdk.vector_channel.VectorParams`, and), build time:
``dim`` (64), ``epochs`` (4), ``batch_size`` (512), ``lr`` (0.005), ``temperature``
(0.1), ``term_dropout`` (0.1), ``window`` (3: pairs of items at most this many steps
apart in a user's history), ``max_pairs`` (200,000, sampled once), ``max_terms`` (64 per
item), ``min_df`` (1), ``max_steps`` (0: no cap; else training stops after this many
optimiser steps). The budget is counted in steps, never in seconds, so one seed and one
data set train the same weights on any machine, however busy.

Bundle: ``encoder/`` (``model.onnx`` + ``manifest.json``), ``vocabulary.json``,
``index/``, ``signatures.npz``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from annotated_types import Ge, Interval

from recall_engine.plugins.content.terms import Vocabulary, item_terms, query_terms
from recall_engine.runtime.encoders import OnnxModel
from recall_engine.sdk.channel import BuildContext, ChannelContext, ItemRecord
from recall_engine.sdk.params import NonNegativeInt, PositiveFloat, PositiveInt
from recall_engine.sdk.vector_channel import VectorChannel, VectorParams, encode_all, write_vectors

if TYPE_CHECKING:
    from recall_engine.runtime.artifacts import Bundle

ENCODER_DIR = "encoder"
VOCABULARY_FILE = "vocabulary.json"


@dataclass(slots=True, frozen=True)
class ContentParams(VectorParams):
    """``[channels.<name>.params]`` of the content channel (build-time fields here)."""

    dim: PositiveInt = 64
    epochs: NonNegativeInt = 4
    batch_size: Annotated[int, Ge(2)] = 512
    lr: PositiveFloat = 0.005
    temperature: PositiveFloat = 0.1
    term_dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    window: PositiveInt = 3
    max_pairs: PositiveInt = 200_000
    max_terms: PositiveInt = 64
    min_df: PositiveInt = 1
    max_steps: NonNegativeInt = 0


class ContentChannel(VectorChannel):
    Params = ContentParams
    params: ContentParams

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._vocab: Vocabulary | None = None
        self._model: OnnxModel | None = None

    @classmethod
    def build(cls, ctx: BuildContext) -> dict[str, Any]:
        """Fit the vocabulary on the catalogue, train the encoder on co-consumed pairs,
        export it, and index every item's vector (computed by the exported graph)."""
        from recall_engine.plugins.content.model import (
            TrainSettings,
            co_consumed_pairs,
            export_encoder,
            train_encoder,
        )

        p = ctx.params_as(ContentParams)
        items = list(ctx.catalog)
        docs = [item_terms(it) for it in items]
        Vocabulary.fit(docs, min_df=p.min_df, max_terms=p.max_terms).save(ctx.out / VOCABULARY_FILE)
        vocab = Vocabulary.load(ctx.out / VOCABULARY_FILE)  # exactly what serving reads
        term_ids, term_weights = vocab.featurize(docs)
        pairs = co_consumed_pairs(
            ctx.interactions,
            {it.item_id: i for i, it in enumerate(items)},
            window=p.window,
            max_pairs=p.max_pairs,
            seed=ctx.seed,
        )
        settings = TrainSettings(
            dim=p.dim,
            epochs=p.epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            temperature=p.temperature,
            term_dropout=p.term_dropout,
            max_steps=p.max_steps,
        )
        model, stats = train_encoder(
            term_ids,
            term_weights,
            pairs,
            len(vocab),
            settings,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        manifest = export_encoder(model, ctx.out / ENCODER_DIR, seed=ctx.seed)
        encoder = OnnxModel(
            ctx.out / ENCODER_DIR, device=p.device, intra_op_threads=p.intra_op_threads
        )
        vectors = encode_all(
            lambda chunk: _run(encoder, vocab, [item_terms(it) for it in chunk]),
            items,
            p.dim,
            progress=ctx.progress,
            desc=f"{ctx.name}: encoding items",
        )
        fields = write_vectors(ctx.out, items, vectors, dtype=p.index_dtype)
        build_params = {
            k: getattr(p, k)
            for k in (
                "dim",
                "epochs",
                "batch_size",
                "lr",
                "temperature",
                "term_dropout",
                "window",
                "max_pairs",
                "max_terms",
                "min_df",
                "max_steps",
                "index_dtype",
            )
        }
        return {
            **fields,
            "model_hashes": {
                f"{ENCODER_DIR}/{manifest.file}": manifest.model_sha256,
                "state_dict": manifest.source_hash,
            },
            "build_params": build_params,
            "vocabulary": len(vocab) - 1,
            "training": stats,
        }

    # -- encoder hooks ---------------------------------------------------------------
    def open_encoders(self, bundle: Bundle) -> None:
        self._vocab = Vocabulary.load(bundle.file(VOCABULARY_FILE))
        self._model = OnnxModel(
            bundle.path / ENCODER_DIR,
            device=self.params.device,
            intra_op_threads=self.params.intra_op_threads,
        )

    def _parts(self) -> tuple[OnnxModel, Vocabulary]:
        if self._model is None or self._vocab is None:
            raise RuntimeError(f"channel {self.ctx.name!r}: load() has not run")
        return self._model, self._vocab

    def encode_items(self, items: Sequence[ItemRecord]) -> np.ndarray:
        model, vocab = self._parts()
        return _run(model, vocab, [item_terms(it) for it in items])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        model, vocab = self._parts()
        return _run(model, vocab, [query_terms(t) for t in texts])

    def text_is_usable(self, text: str) -> bool:
        _, vocab = self._parts()
        return any(term in vocab.ids for term in query_terms(text))

    def warmup_encoders(self) -> None:
        model, vocab = self._parts()
        for batch in (1, 8, self.params.max_batch):
            _run(model, vocab, [{t: 1.0 for t in vocab.terms[:16]}] * batch)

    def encoder_details(self) -> dict[str, str]:
        model, vocab = self._parts()
        return {
            "encoder_file": model.path.name,
            "precision": model.precision,
            "device": model.device,
            "providers": ",".join(model.session.get_providers()),
            "vocabulary": str(len(vocab) - 1),
        }


def _run(model: OnnxModel, vocab: Vocabulary, docs: Sequence[Mapping[str, float]]) -> np.ndarray:
    term_ids, term_weights = vocab.featurize(docs)
    return model.run({"term_ids": term_ids, "term_weights": term_weights})

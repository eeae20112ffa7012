"""Optional variants of an exported model, written beside ``model.onnx`` and recorded in
its manifest with their agreement with fp32 (cosine per output row):

* ``optimized``: ONNX Runtime's transformer fusions (Attention, SkipLayerNorm,
  EmbedLayerNorm, BiasGelu) baked into an fp32 graph (on CPU, ONNX Runtime makes
  equivalent fusions itself at load time, so serving uses it only when asked);
* ``int8``: dynamic quantisation of weight MatMuls for CPU serving;
* ``fp16``: GPU-oriented fusions then float16 weights and compute, fp32 inputs and
  outputs kept so callers feed and read the same arrays.

Agreement is measured on :data:`~recall_engine.exporters.sentence_encoder.SENTENCES`
for text encoders; other models pass ``feeds``. Needs ``onnx`` and ONNX Runtime's
``transformers`` tools, not PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from recall_engine.exporters.external_data import externalize_weights
from recall_engine.exporters.sentence_encoder import PARITY_CHUNKS, SENTENCES, cosine_rows
from recall_engine.observability.logs import get_logger
from recall_engine.runtime.files import atomic_path, replace_file, sha256_file
from recall_engine.runtime.model_manifest import ModelManifest, Variant
from recall_engine.runtime.tokenizer import TextTokenizer

log = get_logger(__name__)

Feeds = Sequence[Mapping[str, np.ndarray]]
FILES = {"optimized": "model.optimized.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


def optimize_transformer(
    folder: str | os.PathLike[str],
    *,
    model_type: str = "bert",
    num_heads: int | None = None,
    hidden_size: int | None = None,
    feeds: Feeds | None = None,
) -> Variant:
    """Fuse transformer subgraphs into ONNX Runtime's kernels (fp32, CPU or GPU).

    ``num_heads``/``hidden_size`` default to what the manifest records (MiniLM-L6: 12
    heads, 384 wide); 0 lets the optimizer detect them from the graph.
    """
    folder = Path(folder)
    manifest = ModelManifest.read(folder)
    model = _fused(folder, manifest, model_type, num_heads, hidden_size, use_gpu=False)
    stats = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    with atomic_path(folder / FILES["optimized"]) as tmp:
        model.save_model_to_file(str(tmp))
    note = "fused: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
    return _record(folder, manifest, "optimized", feeds, note=note)


def quantize_int8(
    folder: str | os.PathLike[str], *, per_channel: bool | None = None, feeds: Feeds | None = None
) -> Variant:
    """Dynamic int8 quantisation of the MatMuls with constant weights (CPU serving).

    ``per_channel=None`` tries per-tensor and per-channel weight scales and keeps the
    one whose mean cosine to fp32 is higher (per-channel wins on MiniLM: ~0.99 against
    ~0.96). Embedding tables stay fp32: quantising the Gather saves memory, not time,
    and costs agreement.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    manifest = ModelManifest.read(folder)
    feeds = feeds if feeds is not None else sentence_feeds(folder, manifest)
    base = folder / manifest.file
    target = folder / FILES["int8"]
    best: tuple[float, bool] | None = None
    for choice in [per_channel] if per_channel is not None else [False, True]:
        tmp = folder / f"model.int8.{'pc' if choice else 'pt'}.tmp.onnx"
        quantize_dynamic(
            base,
            tmp,
            per_channel=choice,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        _, mean = agreement(base, tmp, feeds)
        log.info("int8_candidate", per_channel=choice, cosine_mean=mean)
        if best is None or mean > best[0]:
            best = (mean, choice)
            replace_file(tmp, target)
        else:
            tmp.unlink()
    assert best is not None
    return _record(
        folder,
        manifest,
        "int8",
        feeds,
        note=f"dynamic, weights QInt8 {'per-channel' if best[1] else 'per-tensor'}",
    )


def convert_fp16(
    folder: str | os.PathLike[str],
    *,
    model_type: str = "bert",
    num_heads: int | None = None,
    hidden_size: int | None = None,
    feeds: Feeds | None = None,
) -> Variant:
    """GPU fusions, then float16 weights and compute with float32 inputs and outputs.

    Meant for CUDA; agreement is measured on the CPU provider, which runs the graph
    (slowly) or, where it lacks an fp16 kernel, leaves the figures ``None``.
    """
    folder = Path(folder)
    manifest = ModelManifest.read(folder)
    model = _fused(folder, manifest, model_type, num_heads, hidden_size, use_gpu=True)
    model.convert_float_to_float16(keep_io_types=True)
    with atomic_path(folder / FILES["fp16"]) as tmp:
        model.save_model_to_file(str(tmp))
    try:
        return _record(folder, manifest, "fp16", feeds, note="keep_io_types: fp32 in/out")
    except Exception as exc:  # onnxruntime raises untyped errors for missing kernels
        log.warning("fp16_agreement_unmeasured", error=str(exc))
        data_files = externalize_weights(folder / FILES["fp16"])
        variant = Variant(
            file=FILES["fp16"],
            sha256=sha256_file(folder / FILES["fp16"]),
            cosine_vs_fp32_min=None,
            cosine_vs_fp32_mean=None,
            note=f"not measured on CPU: {exc}"[:300],
            data_files=data_files,
        )
        ModelManifest.read(folder).with_variant("fp16", variant).write(folder)
        return variant


def sentence_feeds(folder: Path, manifest: ModelManifest) -> list[dict[str, np.ndarray]]:
    """The real sentences, tokenised by the model's own tokenizer, in the parity chunks."""
    if manifest.kind != "sentence-encoder" or manifest.tokenizer is None:
        raise ValueError(f"{folder}: a {manifest.kind!r} model has no tokenizer; pass feeds=")
    assert manifest.max_length is not None
    tokenizer = TextTokenizer.from_file(folder / manifest.tokenizer, manifest.max_length)
    feeds, start = [], 0
    for size in PARITY_CHUNKS:
        chunk = SENTENCES[start : start + size]
        start += size
        if chunk:
            ids, mask = tokenizer.encode(chunk)
            feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds


def agreement(base: Path, variant: Path, feeds: Feeds) -> tuple[float, float]:
    """(min, mean) cosine between the two graphs' first outputs, row by row, on CPU."""
    a, b = _run_all(base, feeds), _run_all(variant, feeds)
    cos = cosine_rows(a, b)
    return float(cos.min()), float(cos.mean())


def _run_all(path: Path, feeds: Feeds) -> np.ndarray:
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    outs = [session.run(None, dict(f))[0] for f in feeds]
    return np.concatenate([o.reshape(len(o), -1) for o in outs]).astype(np.float32)


def _fused(
    folder: Path,
    manifest: ModelManifest,
    model_type: str,
    num_heads: int | None,
    hidden_size: int | None,
    *,
    use_gpu: bool,
):  # -> onnx_model.OnnxModel
    from onnxruntime.transformers import optimizer

    heads = num_heads if num_heads is not None else int(manifest.producer.get("num_heads", 0))
    if hidden_size is not None:
        hidden = hidden_size
    else:  # a sentence encoder's output dim is its hidden size (mean pooling)
        hidden = (manifest.dims or 0) if manifest.kind == "sentence-encoder" else 0
    # opt_level=0: only the Python fusions, so the saved graph does not depend on the
    # machine that made it; ONNX Runtime applies its own graph passes at load time.
    return optimizer.optimize_model(
        os.fspath(folder / manifest.file),
        model_type=model_type,
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
        use_gpu=use_gpu,
    )


def _record(
    folder: Path, manifest: ModelManifest, name: str, feeds: Feeds | None, *, note: str
) -> Variant:
    feeds = feeds if feeds is not None else sentence_feeds(folder, manifest)
    low, mean = agreement(folder / manifest.file, folder / FILES[name], feeds)
    # large weights beside the graph, mapped and shared by a host's processes
    data_files = externalize_weights(folder / FILES[name])
    variant = Variant(
        file=FILES[name],
        sha256=sha256_file(folder / FILES[name]),
        cosine_vs_fp32_min=low,
        cosine_vs_fp32_mean=mean,
        note=note,
        data_files=data_files,
    )
    ModelManifest.read(folder).with_variant(name, variant).write(folder)
    log.info(
        "onnx_variant_written", variant=name, file=variant.file, cosine_min=low, cosine_mean=mean
    )
    return variant

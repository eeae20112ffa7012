"""Text encoder benchmark: all-MiniLM-L6-v2 in PyTorch eager against ONNX Runtime fp32,
fused fp32, int8 (CPU) and fp16 (CUDA, when a GPU is present).

Every row is end to end, text in and vector out (tokenisation included): latency of
one sentence per call (p50/p99 over ``--iterations`` calls cycling through the real
sentences) and throughput at ``--batch`` sentences per call. The last column is each
backend's worst cosine to PyTorch on the real sentences, so a fast row that is wrong
shows it.

    recall-engine bench encoders [--model DIR] [--iterations 200] [--rounds 10] [--json F]

Without ``--model`` the packaged MiniLM is exported (with all variants) to a temporary
folder first, which needs the [train] extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(slots=True, frozen=True)
class Row:
    backend: str
    device: str
    p50_ms: float
    p99_ms: float
    throughput: float
    batch: int
    cosine_min: float | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="exported sentence-encoder folder (default: export MiniLM now)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="model folder for the PyTorch row (default: packaged MiniLM)",
    )
    parser.add_argument("--iterations", type=int, default=200, help="batch-1 calls timed")
    parser.add_argument("--rounds", type=int, default=10, help="large-batch calls timed")
    parser.add_argument("--batch", type=int, default=64, help="sentences per throughput call")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads for ONNX Runtime and PyTorch (0: default)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch row")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")


def run(args: argparse.Namespace) -> int:
    from recall_engine.exporters.manifest import ModelManifest
    from recall_engine.exporters.sentence_encoder import SENTENCES
    from recall_engine.runtime.encoders import TextEncoder, cuda_device_count, resolve_device

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or _export_all(Path(tmp) / "minilm")
        manifest = ModelManifest.read(folder)
        batch = [SENTENCES[i % len(SENTENCES)] for i in range(args.batch)]
        reference: np.ndarray | None = None
        rows: list[Row] = []

        if not args.no_torch:
            torch_encode = _torch_encoder(args.source, manifest, args.threads)
            reference = torch_encode(list(SENTENCES))
            rows.append(_measure("PyTorch eager fp32", "cpu", torch_encode, batch, args, reference))

        configs: list[tuple[str, str, str, bool]] = [("ONNX Runtime fp32", "fp32", "cpu", False)]
        if "optimized" in manifest.variants:
            configs.append(("ONNX Runtime fp32 fused", "fp32", "cpu", True))
        if "int8" in manifest.variants:
            configs.append(("ONNX Runtime int8", "int8", "cpu", False))
        if "fp16" in manifest.variants and resolve_device("auto") == "cuda":
            configs.append(("ONNX Runtime fp32", "fp32", "cuda", False))
            configs.append(("ONNX Runtime fp16", "fp16", "cuda", True))
        for label, precision, device, fused in configs:
            encoder = TextEncoder(
                folder,
                precision=precision,  # type: ignore[arg-type]
                device=device,  # type: ignore[arg-type]
                max_batch=args.batch,
                intra_op_threads=args.threads,
                prefer_optimized=fused,
            )
            if reference is None:
                reference = encoder.encode(list(SENTENCES))
            rows.append(
                _measure(label, encoder.model.device, encoder.encode, batch, args, reference)
            )

    env = {
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "gpus": cuda_device_count(),
        "threads": args.threads,
        "iterations": args.iterations,
        "rounds": args.rounds,
    }
    print(markdown(rows, env))
    if args.json:
        args.json.write_text(
            json.dumps({"env": env, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
        )
    return 0


def markdown(rows: Sequence[Row], env: dict[str, Any]) -> str:
    batch = rows[0].batch if rows else 0
    lines = [
        f"all-MiniLM-L6-v2, text -> vector, {env['cpus']} CPUs, {env['gpus']} GPUs, "
        f"threads={env['threads'] or 'default'}",
        "",
        f"| backend | device | p50 ms (batch 1) | p99 ms (batch 1) | "
        f"sentences/s (batch {batch}) | min cosine vs PyTorch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cos = "-" if r.cosine_min is None else f"{r.cosine_min:.5f}"
        lines.append(
            f"| {r.backend} | {r.device} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.throughput:.0f} | {cos} |"
        )
    return "\n".join(lines)


def _measure(
    label: str,
    device: str,
    encode: Callable[[list[str]], np.ndarray],
    batch: list[str],
    args: argparse.Namespace,
    reference: np.ndarray | None,
) -> Row:
    from recall_engine.exporters.sentence_encoder import SENTENCES, cosine_rows

    for i in range(args.warmup):
        encode([SENTENCES[i % len(SENTENCES)]])
    for _ in range(min(args.warmup, 2)):
        encode(batch)
    latencies = []
    for i in range(args.iterations):
        text = [SENTENCES[i % len(SENTENCES)]]
        start = time.perf_counter()
        encode(text)
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(args.rounds):
        encode(batch)
    elapsed = time.perf_counter() - start
    cos = None
    if reference is not None:
        cos = float(cosine_rows(encode(list(SENTENCES)), reference).min())
    ms = np.asarray(latencies) * 1000.0
    return Row(
        backend=label,
        device=device,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        throughput=len(batch) * args.rounds / elapsed,
        batch=len(batch),
        cosine_min=cos,
    )


def _torch_encoder(
    source: Path | None, manifest: Any, threads: int
) -> Callable[[list[str]], np.ndarray]:
    """The source model in PyTorch (SDPA attention, inference mode) with the
    ``transformers`` fast tokenizer: what serving would run without ONNX."""
    import torch
    from transformers import AutoTokenizer

    from recall_engine.exporters.sentence_encoder import default_model_folder, load_torch_encoder

    if threads:
        torch.set_num_threads(threads)
    source = source or default_model_folder()
    module, _ = load_torch_encoder(source, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(source), local_files_only=True)

    def encode(texts: list[str]) -> np.ndarray:
        enc = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=manifest.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            return module(enc["input_ids"], enc["attention_mask"]).numpy()

    return encode


def _export_all(out: Path) -> Path:
    from recall_engine.exporters import optimize
    from recall_engine.exporters.sentence_encoder import export_sentence_encoder

    export_sentence_encoder(None, out)
    optimize.optimize_transformer(out)
    optimize.quantize_int8(out)
    optimize.convert_fp16(out)
    return out

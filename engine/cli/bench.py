"""``recall-engine bench``: benchmarks, one module each in :mod:`recall_engine.benchmarks`
(the top-level ``bench/`` folder).

Each subcommand maps to ``recall_engine.benchmarks.<name>``, a module exposing
``add_arguments(parser)`` and ``run(args) -> int`` (the same contract as the top-level
CLI). Modules keep heavy imports (PyTorch, usearch) inside ``run`` so that building the
parser stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys

PACKAGE = "recall_engine.benchmarks"

BENCHMARKS: dict[str, str] = {
    "catalog": "a synthetic N-item catalogue built into artifacts every channel serves",
    "encoders": "text encoder latency and throughput: PyTorch vs ONNX Runtime variants",
    "index": "vector index build, search throughput, latency and recall",
    "load": "end-to-end load test against a running server",
    "memory": "resident memory per channel and per million items, each in a fresh process",
    "overload": "goodput under overload against the peak: OK/s, shed requests, deadlines",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(f"{PACKAGE}.{name}")
        except ImportError as exc:
            p.set_defaults(_unavailable=f"benchmark {name!r} is not available: {exc}")
            continue
        module.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 1
    return int(importlib.import_module(f"{PACKAGE}.{args.benchmark}").run(args) or 0)

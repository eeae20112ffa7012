"""``recall-engine`` console script.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so
``serve`` never imports PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("recall_engine.cli.serve", "serve recall over gRPC"),
    "query": ("recall_engine.cli.query", "call a running server and print candidates"),
    "build": ("recall_engine.cli.build", "build channel artifacts from interactions and items"),
    "export": ("recall_engine.cli.export", "export PyTorch models to ONNX with parity checks"),
    "bench": ("recall_engine.cli.bench", "benchmarks: encoders, index, catalog, load"),
    "eval": ("recall_engine.cli.eval", "offline evaluation on a hold-out split"),
    "tune-weights": (
        "recall_engine.cli.tune_weights",
        "search fusion weights on a validation split",
    ),
    "demo-data": (
        "recall_engine.cli.demo_data",
        "write the synthetic demo catalogue and interactions",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recall-engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

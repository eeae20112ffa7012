"""``recall-engine build``: channel artifacts from interactions and items."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recall_engine.cli._data_flags import add_data_arguments, load_inputs
from recall_engine.config import ConfigError, default_config, load_config
from recall_engine.observability.logs import configure
from recall_engine.offline.build import build_all
from recall_engine.offline.data.interactions import DataError
from recall_engine.runtime.catalog import CatalogInUse
from recall_engine.serving.registry import PluginError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="artifacts folder to write")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config: which channels and their params (default: all built-in)",
    )
    p.add_argument("--channels", default="", help="comma-separated subset of channels to build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    configure(json=False if sys.stderr.isatty() else None)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        config = load_config(args.config) if args.config else default_config(args.out.resolve())
        interactions, items = load_inputs(args, progress)
        built = build_all(
            interactions,
            items,
            args.out,
            config,
            channels=[c for c in args.channels.split(",") if c] or None,
            seed=args.seed,
            progress=progress,
        )
    except (ConfigError, DataError, PluginError, FileNotFoundError, CatalogInUse) as e:
        print(f"recall-engine build: {e}", file=sys.stderr)
        return 2
    print(f"built {len(items)} items, {len(interactions)} interactions into {args.out}")
    for b in built:
        state = f"version {b.version}" if b.version else f"skipped ({b.skipped})"
        print(f"  {b.channel:<10} {state:<28} {b.seconds:7.1f} s  items={b.item_count}")
    return 0

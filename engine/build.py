"""``recall-engine build``: interactions + items → a catalogue and one artifact bundle
per enabled channel whose plugin can build (``Channel.build``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .artifacts import ArtifactStore
from .catalog import Catalog
from .channel import BuildContext, ItemRecord
from .config import Config, ConfigError, default_config, load_config
from .data.interactions import DataError, Interactions, load_interactions
from .data.items import load_items
from .logs import configure, get_logger
from .registry import PluginError, discover, load_factory, resolve

log = get_logger(__name__)


@dataclass(slots=True, frozen=True)
class BuiltChannel:
    channel: str
    version: str | None
    seconds: float
    item_count: int | None
    skipped: str = ""


def build_all(interactions: Interactions, items: Sequence[ItemRecord], out: Path,
              config: Config, *, channels: Sequence[str] | None = None, seed: int = 0,
              progress: bool = False) -> list[BuiltChannel]:
    """Write ``out/catalog`` and a new current bundle under ``out/<channel>`` for every
    enabled channel (or just ``channels``; an empty list builds the catalogue alone)
    whose plugin defines ``build``."""
    out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(items, folder=out / "catalog")
    catalog.save(out / "catalog")
    store = ArtifactStore(out)
    plugins = discover()
    results: list[BuiltChannel] = []
    for name, cc in config.channels.items():
        if not cc.enabled or (channels is not None and name not in channels):
            continue
        try:
            factory = load_factory(resolve(plugins, cc.plugin))
        except PluginError as e:
            if cc.required:
                raise
            log.error("build_skipped", channel=name, error=str(e))
            results.append(BuiltChannel(name, None, 0.0, None, str(e)))
            continue
        builder = getattr(factory, "build", None)
        if builder is None:
            results.append(BuiltChannel(name, None, 0.0, None, "plugin has no build step"))
            continue
        t0 = time.perf_counter()
        log.info("build_started", channel=name, plugin=cc.plugin)
        with store.new_version(name, make_current=True) as writer:
            fields = builder(BuildContext(name, interactions, catalog, writer.path, cc.params,
                                          seed, progress)) or {}
            writer.update(**fields)
            bundle = writer.commit()
        seconds = time.perf_counter() - t0
        log.info("build_finished", channel=name, version=bundle.version,
                 seconds=round(seconds, 2))
        results.append(BuiltChannel(name, bundle.version, seconds,
                                    bundle.manifest.get("item_count")))
    return results


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The input flags :func:`load_inputs` reads (``build``, ``eval``, ``tune-weights``)."""
    p.add_argument("--interactions", type=Path,
                   help="CSV/Parquet with user_id,item_id[,timestamp,weight,event]")
    p.add_argument("--items", type=Path, help="CSV/Parquet with item_id,title,text,categories")
    p.add_argument("--dataset", help="a known dataset instead of the two files: "
                   "ml-100k:FOLDER, ml-1m:RATINGS[,MOVIES[,PLOTS]], ml-latest:FOLDER")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="malformed rows: stop (default) or skip and count")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="artifacts folder to write")
    p.add_argument("--config", type=Path,
                   help="TOML config: which channels and their params (default: all built-in)")
    p.add_argument("--channels", default="", help="comma-separated subset of channels to build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load_inputs(args: argparse.Namespace, progress: bool
                ) -> tuple[Interactions, list[ItemRecord]]:
    if args.dataset:
        from .data.movielens import load_dataset

        return load_dataset(args.dataset)
    if not args.interactions or not args.items:
        raise DataError("arguments", "give --interactions and --items, or --dataset")
    interactions, report = load_interactions(args.interactions, on_error=args.on_error,
                                             progress=progress)
    if report.skipped:
        log.warning("rows_skipped", file=str(args.interactions), summary=report.summary())
    items, item_report = load_items(args.items, on_error=args.on_error, progress=progress)
    if item_report.skipped:
        log.warning("rows_skipped", file=str(args.items), summary=item_report.summary())
    return interactions, items


def run(args: argparse.Namespace) -> int:
    configure(json=False if sys.stderr.isatty() else None)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        config = load_config(args.config) if args.config else default_config(args.out.resolve())
        interactions, items = load_inputs(args, progress)
        built = build_all(interactions, items, args.out, config,
                          channels=[c for c in args.channels.split(",") if c] or None,
                          seed=args.seed, progress=progress)
    except (ConfigError, DataError, PluginError, FileNotFoundError) as e:
        print(f"recall-engine build: {e}", file=sys.stderr)
        return 2
    print(f"built {len(items)} items, {len(interactions)} interactions into {args.out}")
    for b in built:
        state = f"version {b.version}" if b.version else f"skipped ({b.skipped})"
        print(f"  {b.channel:<10} {state:<28} {b.seconds:7.1f} s  items={b.item_count}")
    return 0

"""The data, config and split flags that ``build``, ``eval`` and ``tune-weights`` share,
and the loader that reads what they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall_engine.observability.logs import get_logger
from recall_engine.offline.data.interactions import DataError, Interactions, load_interactions
from recall_engine.offline.data.items import load_items
from recall_engine.sdk.types import ItemRecord

log = get_logger(__name__)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The input flags :func:`load_inputs` reads (``build``, ``eval``, ``tune-weights``)."""
    p.add_argument(
        "--interactions",
        type=Path,
        help="CSV/Parquet with user_id,item_id[,timestamp,weight,event]",
    )
    p.add_argument("--items", type=Path, help="CSV/Parquet with item_id,title,text,categories")
    p.add_argument(
        "--dataset",
        help="a known dataset instead of the two files: "
        "ml-100k:FOLDER, ml-1m:RATINGS[,MOVIES[,PLOTS]], ml-latest:FOLDER",
    )
    p.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="malformed rows: stop (default) or skip and count",
    )


def load_inputs(args: argparse.Namespace, progress: bool) -> tuple[Interactions, list[ItemRecord]]:
    if args.dataset:
        from recall_engine.offline.data.movielens import load_dataset

        return load_dataset(args.dataset)
    if not args.interactions or not args.items:
        raise DataError("arguments", "give --interactions and --items, or --dataset")
    interactions, report = load_interactions(
        args.interactions, on_error=args.on_error, progress=progress
    )
    if report.skipped:
        log.warning("rows_skipped", file=str(args.interactions), summary=report.summary())
    items, item_report = load_items(args.items, on_error=args.on_error, progress=progress)
    if item_report.skipped:
        log.warning("rows_skipped", file=str(args.items), summary=item_report.summary())
    return interactions, items


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The data and config flags ``eval`` and ``tune-weights`` share."""
    add_data_arguments(p)
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config: channels, plan and experiments to evaluate "
        "(default: every built-in channel, weight 1, RRF)",
    )
    p.add_argument("--seed", type=int, default=0)


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split",
        choices=("temporal", "time"),
        default="temporal",
        help="temporal: newest fraction of each user's interactions (default); "
        "time: one global time cut",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="temporal split: share of each user's interactions held out",
    )
    p.add_argument("--cut-time", type=int, help="time split: first test timestamp (seconds)")
    p.add_argument(
        "--cut-quantile",
        type=float,
        default=0.8,
        help="time split without --cut-time: the cut is this quantile of timestamps",
    )
    p.add_argument("--max-users", type=int, help="evaluate a seeded sample of this many users")


def parse_list(text: str, convert=str) -> list:
    return [convert(x.strip()) for x in text.split(",") if x.strip()]


def load_data(args: argparse.Namespace):
    """``--dataset`` or ``--interactions`` + ``--items``, as ``recall-engine build``."""
    return load_inputs(args, progress=False)

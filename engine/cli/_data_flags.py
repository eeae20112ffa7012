"""The data, config and split flags that ``build``, ``eval`` and ``tune-weights`` share,
and the loader that reads what they name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from recall_engine.observability.logs import get_logger
from recall_engine.offline.data.interactions import DataError, Interactions, load_interactions
from recall_engine.offline.data.items import load_items
from recall_engine.sdk.types import ItemRecord

if TYPE_CHECKING:
    from recall_engine.offline.data.movielens import TrainPart

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
        "ml-100k:FOLDER, ml-1m:RATINGS[,MOVIES[,PLOTS]], ml-latest:FOLDER, "
        "amazon:FOLDER (Amazon Review Data 2018: *_5.json.gz [+ meta_*.json.gz]), "
        "files:INTERACTIONS[,ITEMS], demo",
    )
    p.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="malformed rows: stop (default) or skip and count",
    )


def load_inputs(
    args: argparse.Namespace, progress: bool, train_part: TrainPart | None = None
) -> tuple[Interactions, list[ItemRecord]]:
    """``train_part``: what a split will train on, for datasets whose item metadata
    users wrote over time (ml-latest's tags; see ``load_dataset``)."""
    if args.dataset:
        from recall_engine.offline.data.movielens import load_dataset

        return load_dataset(args.dataset, train_part=train_part)
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
        f"(default: {default_plan_text()})",
    )
    p.add_argument("--seed", type=int, default=0)


def default_plan_text() -> str:
    """What runs without ``--config``, read from :func:`default_config` so the help
    cannot drift from it: the built-in channels and the default plan's fusion,
    parameters and weights."""
    from recall_engine.config import default_config

    plan = default_config(Path("artifacts")).plan
    params = ", ".join(f"{k} {v:g}" for k, v in plan.fusion_params.items())
    weights = ", ".join(f"{name} {w:g}" for name, w in plan.weights.items())
    fusion = plan.fusion.upper() + (f" ({params})" if params else "")
    learned = (
        " (replaced by the weights the build learns per history segment, for requests "
        "with a history and no text: [plan] learned_weights)"
        if plan.learned_weights
        else ""
    )
    return f"every built-in channel, {fusion}, weights {weights}{learned}"


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--protocol",
        "--split",
        dest="split",
        choices=("temporal", "random", "loo", "time"),
        default="temporal",
        help="temporal: newest fraction of each user's interactions (default); "
        "random: a seeded random fraction of each user's (--seed); "
        "loo: each user's newest one (leave-last-one-out); time: one global time cut",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="temporal and random splits: share of each user's interactions held out",
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
    """``--dataset`` or ``--interactions`` + ``--items``, as ``recall-engine build``, for
    a command that then splits the log (``eval``, ``tune-weights``): item metadata that
    users wrote over time comes from the training part of the split the flags name
    (the same deterministic split the command makes next)."""
    from recall_engine.evaluation.split import make_split

    def train_part(log: Interactions) -> Interactions:
        return make_split(
            log,
            args.split,
            test_fraction=args.test_fraction,
            cut_time=args.cut_time,
            quantile=args.cut_quantile,
            seed=args.seed,
        ).train

    return load_inputs(args, progress=False, train_part=train_part)

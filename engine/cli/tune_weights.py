"""``recall-engine tune-weights``: search a variant's fusion weights on a validation split
carved from the training data (see :mod:`recall_engine.evaluation.tune`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import MappingProxyType

from recall_engine.cli._data_flags import (
    add_input_arguments,
    add_split_arguments,
    load_data,
    parse_list,
)
from recall_engine.config import ConfigError, Plan, default_config, load_config
from recall_engine.evaluation.split import make_split, validation_split
from recall_engine.evaluation.tune import (
    DEFAULT_KEEP,
    PARAM_GRID,
    WEIGHT_GRID,
    coordinate_ascent,
    full_config,
    tune_candidates,
    variant_plans,
    variant_toml,
)
from recall_engine.observability.logs import configure
from recall_engine.offline.data.interactions import DataError
from recall_engine.serving.fusion import validate_params
from recall_engine.serving.registry import PluginError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    add_split_arguments(p)
    p.add_argument("--k", type=int, default=100, help="maximise recall at this K (default 100)")
    p.add_argument(
        "--variant",
        default="default",
        help="plan to start from: 'default' or EXPERIMENT/VARIANT of the config",
    )
    p.add_argument(
        "--fusion",
        choices=sorted(PARAM_GRID),
        help="fusion strategy to tune (default: the starting plan's)",
    )
    p.add_argument(
        "--weights",
        default=",".join(map(str, WEIGHT_GRID)),
        help="candidate weights per channel (default %(default)s)",
    )
    p.add_argument("--rounds", type=int, default=3, help="coordinate-ascent rounds")
    p.add_argument(
        "--keep",
        default=",".join(DEFAULT_KEEP),
        help="channels whose weight stays > 0 (default %(default)s: the fallback "
        "for users without history); '' for none",
    )
    p.add_argument("--name", default="tuned", help="name of the tuned variant")
    p.add_argument("--traffic", type=float, default=0.5, help="traffic share of the variant")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("tuned-variant.toml"),
        help="where to write the [[experiments.variants]] snippet",
    )
    p.add_argument(
        "--write-config",
        type=Path,
        help="also write a full config: the base config plus a 50/50 experiment (control vs tuned)",
    )
    p.add_argument(
        "--check-test",
        action="store_true",
        help="also rebuild on the full training part and report test recall before/after",
    )


def run(args: argparse.Namespace) -> int:
    configure(level="WARNING", json=False if sys.stderr.isatty() else None)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    try:
        config = load_config(args.config) if args.config else default_config(Path("artifacts"))
        plans = variant_plans(config)
        if args.variant not in plans:
            raise ValueError(
                f"--variant: {args.variant!r} is not in the config (have: {', '.join(plans)})"
            )
        start = plans[args.variant]
        if args.fusion and args.fusion != start.fusion:
            start = Plan(
                args.fusion,
                start.weights,
                start.channel_k,
                MappingProxyType(validate_params(args.fusion, {})),
            )
        grid = parse_list(args.weights, float)
        interactions, items = load_data(args)
        split = make_split(
            interactions,
            args.split,
            test_fraction=args.test_fraction,
            cut_time=args.cut_time,
            quantile=args.cut_quantile,
        )
        val = validation_split(split)
        say(f"validation split: {len(val.train)} train / {len(val.test)} test rows")
        cands = tune_candidates(val, items, config, args.k, args.max_users, args.seed)
        say(f"channel lists for {len(cands.truth)} users: {', '.join(cands.per_channel)}")
        search = coordinate_ascent(
            cands, start, args.k, grid=grid, rounds=args.rounds, keep=parse_list(args.keep), log=say
        )
        test_before = test_after = None
        if args.check_test:
            test = tune_candidates(split, items, config, args.k, args.max_users, args.seed)
            test_before, test_after = test.recall(start, args.k), test.recall(search.best, args.k)
    except (ConfigError, DataError, PluginError, FileNotFoundError, ValueError) as e:
        print(f"recall-engine tune-weights: {e}", file=sys.stderr)
        return 2
    comment = (
        f"recall-engine tune-weights, {args.dataset or args.interactions}, "
        f"{split.kind} split: validation recall@{args.k} "
        f"{search.start_recall:.4f} -> {search.best_recall:.4f} "
        f"({search.evaluations} plans tried)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        variant_toml(search.best, args.name, args.traffic, comment), encoding="utf-8"
    )
    if args.write_config:
        text = args.config.read_text(encoding="utf-8") if args.config else None
        args.write_config.write_text(
            full_config(config, text, search.start, search.best, args.name, f"{args.name}-weights"),
            encoding="utf-8",
        )
    print(
        f"validation recall@{args.k}: before {search.start_recall:.4f}  "
        f"after {search.best_recall:.4f}"
    )
    if test_before is not None:
        print(f"test recall@{args.k}:       before {test_before:.4f}  after {test_after:.4f}")
    print(
        f"weights: {json.dumps(dict(search.best.weights))}  "
        f"params: {json.dumps(dict(search.best.fusion_params))}"
    )
    print(f"wrote {args.out}" + (f" and {args.write_config}" if args.write_config else ""))
    return 0

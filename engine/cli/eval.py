"""``recall-engine eval``: offline evaluation of the channels, the fused variants and
reference baselines on a hold-out split; writes ``eval.json``, ``report.md`` and plots.

Example (MovieLens 1M, per-user newest 20 % held out)::

    recall-engine eval --dataset ml-1m:ratings.dat,movies.dat --out eval-ml1m
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from recall_engine.cli._data_flags import (
    add_input_arguments,
    add_split_arguments,
    load_data,
    parse_list,
)
from recall_engine.config import ConfigError, load_config
from recall_engine.evaluation.baselines import BASELINES
from recall_engine.evaluation.runner import (
    DEFAULT_BASELINES,
    DEFAULT_KS,
    EvalOptions,
    run_evaluation,
)
from recall_engine.evaluation.significance import DEFAULT_RESAMPLES
from recall_engine.observability.logs import configure
from recall_engine.offline.data.interactions import DataError
from recall_engine.serving.registry import PluginError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    add_split_arguments(p)
    p.add_argument(
        "--k",
        default=",".join(map(str, DEFAULT_KS)),
        help="comma-separated cut-offs (default %(default)s)",
    )
    p.add_argument(
        "--baselines",
        default=",".join(DEFAULT_BASELINES),
        help=f"comma-separated, from {', '.join(BASELINES)}; '' for none",
    )
    p.add_argument("--out", type=Path, default=Path("eval"), help="report folder")
    p.add_argument(
        "--workdir", type=Path, help="keep the built artifacts here (default: a temporary folder)"
    )
    p.add_argument(
        "--parity-users",
        type=int,
        default=100,
        help="users sent through Engine.recall per variant to check the offline fusion (0: skip)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_RESAMPLES,
        help="paired bootstrap resamples for the fused-vs-reference intervals (0: skip; "
        "default %(default)s, seeded with --seed)",
    )
    p.add_argument(
        "--cold-quotas",
        default="",
        help="comma-separated cold_quota values: the default plan is also evaluated with "
        "each (systems fused:default+cold<q>), for the cold-item trade-off table",
    )


def run(args: argparse.Namespace) -> int:
    configure(level="WARNING", json=False if sys.stderr.isatty() else None)
    started = time.perf_counter()
    try:
        ks = parse_list(args.k, int)
        if not ks or min(ks) < 1:
            raise ValueError(f"--k: give positive cut-offs, got {args.k!r}")
        names = parse_list(args.baselines)
        unknown = [b for b in names if b not in BASELINES]
        if unknown:
            raise ValueError(
                f"--baselines: unknown {', '.join(unknown)} (known: {', '.join(BASELINES)})"
            )
        quotas = parse_list(args.cold_quotas, float)
        bad = [q for q in quotas if not 0 <= q <= 1]
        if bad:
            raise ValueError(f"--cold-quotas: give shares between 0 and 1, got {bad}")
        if args.bootstrap < 0:
            raise ValueError(f"--bootstrap: give a count >= 0, got {args.bootstrap}")
        config = load_config(args.config) if args.config else None
        interactions, items = load_data(args)
        options = EvalOptions(
            ks=tuple(ks),
            baselines=tuple(names),
            split=args.split,
            test_fraction=args.test_fraction,
            cut_time=args.cut_time,
            cut_quantile=args.cut_quantile,
            config=config,
            max_users=args.max_users,
            seed=args.seed,
            parity_users=args.parity_users,
            workdir=args.workdir,
            bootstrap=args.bootstrap,
            cold_quotas=tuple(quotas),
            progress=lambda msg: print(
                f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True
            ),
        )
        result = run_evaluation(interactions, items, options)
    except (ConfigError, DataError, PluginError, FileNotFoundError, ValueError) as e:
        print(f"recall-engine eval: {e}", file=sys.stderr)
        return 2
    from recall_engine.evaluation.report import main_table, write_report

    result["dataset"] = args.dataset or f"{args.interactions} + {args.items}"
    result["command"] = "recall-engine " + shlex.join(
        sys.argv[1:] if sys.argv[1:2] == ["eval"] else ["eval", *_argv(args)]
    )
    paths = write_report(result, args.out)
    print(main_table(result))
    print(
        f"\nwrote {paths['json']}, {paths['markdown']} and "
        f"{len(paths) - 2} plots in {result['timings']['total_seconds']:.0f} s"
    )
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """A command line equivalent to ``args`` (when called as a function, not a script)."""
    out = []
    for key, value in vars(args).items():
        if key == "command" or value is None or value is False:
            continue
        out += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return out

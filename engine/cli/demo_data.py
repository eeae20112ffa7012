"""``recall-engine demo-data``: write the synthetic demo catalogue and interactions."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall_engine.offline.data.demo import N_ITEMS, N_USERS, write_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo/data"),
        metavar="DIR",
        help="folder for interactions.csv, items.csv, demo_meta.json (default: %(default)s)",
    )
    parser.add_argument(
        "--items",
        type=int,
        default=N_ITEMS,
        metavar="N",
        help="number of items (default: %(default)s)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=N_USERS,
        metavar="N",
        help="number of users (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed writes the same bytes"
    )


def run(args: argparse.Namespace) -> int:
    interactions_path, items_path = write_demo(
        args.out, n_items=args.items, n_users=args.users, seed=args.seed
    )
    print(f"wrote {interactions_path} and {items_path}")
    return 0

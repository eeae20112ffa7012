"""The command line the split probes share (``bench/ease_l2_probe.py``,
``bench/rp3_blend_probe.py``): a dataset as ``recall-engine eval --dataset`` names it,
its split by the evaluation's own protocol and seed, and whether the test part may be
read (after the choice, on ``--test`` only)."""

from __future__ import annotations

import argparse

from recall_engine.evaluation.split import PROTOCOLS, Split, make_split
from recall_engine.offline.data.movielens import load_dataset


def probe_split(description: str, argv: list[str] | None) -> tuple[Split, list[str], bool]:
    """The outer split, every item id of the dataset (sorted), and ``--test``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", required=True, help="as `recall-engine eval --dataset`")
    p.add_argument("--protocol", default="random", choices=PROTOCOLS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", action="store_true", help="also score the test part")
    args = p.parse_args(argv)
    interactions = load_dataset(args.dataset)[0]
    items = sorted(set(interactions.item_ids.tolist()))
    return make_split(interactions, args.protocol, seed=args.seed), items, args.test

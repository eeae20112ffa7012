"""Are the cold test items new releases? A freshness prior for issue 15's cold row, probed.

The cold row asks the fused list for half of content alone's cold-item recall@100 at a
cost of at most 1 % of warm recall. Cold slots filled in the channels' order cannot buy
that (docs/evaluation.md, "Where every target row stands"). If the items nobody rated
in training were mostly recent releases, a prior "newest first" could fill the slots
better than the text channels. This probe checks that on the evaluation's own split,
without the engine: cold items (no training row) ranked by the release year in their
title, newest first (ties: the larger id, added later), and the cold-item recall of the
first ``q`` of that one list for every user, as ``recall-engine eval`` counts it (per
user with a cold test item, hits over their cold test items, averaged), beside the
expected recall of ``q`` cold items drawn at random.

    python bench/cold_freshness_probe.py --dataset ml-latest:../shared/data/ml-latest-small

A few seconds. Result: docs/evaluation.md, "What was tried".
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import numpy as np

from recall_engine.evaluation.split import PROTOCOLS, held_out_items, make_split
from recall_engine.offline.data.movielens import load_dataset

_YEAR = re.compile(r"\((\d{4})\)\s*$")
QUOTAS = (2, 5, 10, 20, 50, 100)


def _id_order(item_id: str) -> tuple[int, str]:
    return (int(item_id), item_id) if item_id.isdigit() else (-1, item_id)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="as `recall-engine eval --dataset`")
    p.add_argument("--protocol", default="temporal", choices=PROTOCOLS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    interactions, items = load_dataset(args.dataset)[:2]
    split = make_split(interactions, args.protocol, seed=args.seed)
    seen = set(split.train.item_ids.tolist())
    year = {}
    for it in items:
        m = _YEAR.search(it.title)
        year[it.item_id] = int(m.group(1)) if m else 0
    cold = [i for i in year if i not in seen]
    newest = sorted(cold, key=lambda i: (year[i], _id_order(i)), reverse=True)
    truth = {
        u: {i for i in found if i not in seen}
        for u, found in held_out_items(split).items()
        if any(i not in seen for i in found)
    }
    rows = [i for found in truth.values() for i in found]
    takers = Counter(rows)
    years = np.array([year[i] for i in rows if year[i]])
    all_years = np.array([year[i] for f in held_out_items(split).values() for i in f if year[i]])
    print(f"items {len(year)}, cold items {len(cold)}, users with a cold test item {len(truth)}")
    print(
        f"cold test items {len(rows)} on {len(takers)} distinct items; "
        f"{sum(1 for n in takers.values() if n == 1) / len(takers):.0%} of them held out "
        "by one user only"
    )
    print(
        "release year, median (quartiles): cold test items "
        f"{np.median(years):.0f} ({np.percentile(years, 25):.0f}-{np.percentile(years, 75):.0f}), "
        f"all test items {np.median(all_years):.0f} "
        f"({np.percentile(all_years, 25):.0f}-{np.percentile(all_years, 75):.0f})"
    )
    print("| q | newest first | random q cold items (expected) |")
    print("|---:|---:|---:|")
    for q in QUOTAS:
        top = set(newest[:q])
        recall = np.mean([len(found & top) / len(found) for found in truth.values()])
        print(f"| {q} | {recall:.4f} | {min(q, len(cold)) / max(len(cold), 1):.4f} |")


if __name__ == "__main__":
    main()

"""Offline quality and latency of the ``cf`` channel on the MovieLens 1M subset.

Protocol (the team's reference split): each user's interactions sorted by time, the
last ceil(20%) held out; the channel is built on the rest; every user with held-out
items asks for 100 candidates with their whole training history (oldest first,
timestamps attached) as the request history and their training items excluded;
recall@100 = |top-100 ∩ held-out| / |held-out|, averaged over users. Reference figures
on this split: popularity 0.23, ItemKNN (cosine, 200 neighbours) 0.31, EASE (λ=500) 0.40.

The channel is built once with both modes and then loaded three times from the same
bundle (item2item only, two_tower only, both), so every mode is scored on the same
artifacts. Latency: single ``recall`` calls (p50/p99 over ``--latency-queries``
requests, histories cut to the newest ``--latency-history`` items) and ``recall_batch``
throughput.

    python bench/cf_quality.py [--params '{"epochs": 5}'] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET = "ml-1m:../shared/data/ml-1m-cs100-subset/ratings.dat.gz,../shared/data/ml-1m/movies.dat"


def temporal_split(inter, share: float = 0.2):
    """Boolean mask of held-out rows: the last ceil(share * n) of each user's rows by
    time (file order breaks ties)."""
    _, users = np.unique(inter.user_ids, return_inverse=True)
    order = np.lexsort((np.arange(len(users)), inter.timestamps, users))
    u = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    ends = np.r_[starts[1:], len(u)]
    test_sorted = np.zeros(len(u), dtype=bool)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        test_sorted[e - math.ceil(share * (e - s)) : e] = True
    test = np.zeros(len(u), dtype=bool)
    test[order] = test_sorted
    return test


def make_queries(train, test_inter):
    from recall_engine.sdk.channel import Query

    held: dict[str, set[str]] = {}
    for u, i in zip(test_inter.user_ids.tolist(), test_inter.item_ids.tolist(), strict=True):
        held.setdefault(u, set()).add(i)
    ordered = train.sorted_by_time()
    queries, truths = [], []
    for user, rows in ordered.by_user().items():
        if user not in held:
            continue
        history = tuple(ordered.item_ids[rows].tolist())
        queries.append(
            Query(
                user_id=user,
                history=history,
                timestamps=tuple(ordered.timestamps[rows].tolist()),
                exclude=frozenset(history),
            )
        )
        truths.append(held[user])
    return queries, truths


def recall_at(channel, queries, truths, k: int, batch: int = 256) -> tuple[float, float]:
    t0 = time.perf_counter()
    scores = []
    for lo in range(0, len(queries), batch):
        got = channel.recall_batch(queries[lo : lo + batch], k)
        for cands, truth in zip(got, truths[lo : lo + batch], strict=True):
            scores.append(len(truth.intersection(cands.item_ids)) / len(truth))
    return float(np.mean(scores)), time.perf_counter() - t0


def latency(channel, queries, n: int, history: int, k: int) -> dict[str, float]:
    from dataclasses import replace

    rng = np.random.default_rng(0)
    picks = [queries[i] for i in rng.integers(0, len(queries), n)]
    picks = [
        replace(q, history=q.history[-history:], timestamps=q.timestamps[-history:]) for q in picks
    ]
    for q in picks[:50]:
        channel.recall(q, k)
    times = []
    for q in picks:
        t0 = time.perf_counter()
        channel.recall(q, k)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="{}", help="JSON object of cf params")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--latency-queries", type=int, default=1000)
    ap.add_argument("--latency-history", type=int, default=50)
    ap.add_argument("--out", type=Path, help="artifacts folder (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)

    from recall_engine.config import parse_config
    from recall_engine.observability.logs import configure
    from recall_engine.offline.build import build_all
    from recall_engine.offline.data.movielens import load_dataset
    from recall_engine.plugins.cf import CFChannel
    from recall_engine.runtime.catalog import Catalog
    from recall_engine.sdk.channel import ChannelContext

    configure(json=False)
    params = json.loads(args.params)
    inter, items = load_dataset(DATASET)
    test = temporal_split(inter)
    train, held = inter.subset(~test), inter.subset(test)
    queries, truths = make_queries(train, held)
    print(f"{len(train)} train rows, {len(held)} held out, {len(queries)} users", flush=True)

    root = args.out or Path(tempfile.mkdtemp(prefix="cf_quality_"))
    config = parse_config(
        {"artifacts": {"root": str(root)}, "channels": {"cf": {"plugin": "cf", "params": params}}},
        root,
    )
    t0 = time.perf_counter()
    build_all(train, items, root, config, progress=args.progress)
    build_s = time.perf_counter() - t0
    catalog = Catalog.load(root / "catalog")
    cc = config.channels["cf"]
    report: dict = {"params": params, "build_seconds": round(build_s, 1), "modes": {}}
    for mode, flags in (
        ("item2item", {"two_tower": False}),
        ("two_tower", {"item2item": False}),
        ("combined", {}),
    ):
        ctx = ChannelContext("cf", "cf", {**params, **flags}, cc.artifacts, catalog)
        channel = CFChannel(ctx)
        channel.load()
        channel.warmup()
        if mode == "combined":
            report["manifest_cf"] = channel._built
        r, seconds = recall_at(channel, queries, truths, args.k)
        lat = latency(channel, queries, args.latency_queries, args.latency_history, args.k)
        report["modes"][mode] = {
            f"recall@{args.k}": round(r, 4),
            "eval_seconds": round(seconds, 1),
            **{key: round(v, 3) for key, v in lat.items()},
        }
        print(mode, report["modes"][mode], flush=True)
        channel.close()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

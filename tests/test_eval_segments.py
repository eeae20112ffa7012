"""Segments: history-length buckets partition the users, popularity deciles (and cold)
partition the test items, and every figure adds back up to the overall one."""

from __future__ import annotations

import numpy as np
import pytest

from recall_engine.evaluation.metrics import Truth, evaluate, per_user
from recall_engine.evaluation.segments import (
    history_segments,
    item_segments,
    popularity_segments,
    score_segments,
    train_popularity,
)

N_ITEMS = 60
KS = (5, 20)


def _random_case(seed: int = 0, users: int = 80):
    """Truth, two systems' lists, history lengths and an item popularity with zeros."""
    rng = np.random.default_rng(seed)
    truth = Truth.from_sets(
        [set(rng.choice(N_ITEMS, int(rng.integers(1, 8)), replace=False)) for _ in range(users)]
    )
    recs = {
        f"s{n}": ("channel", np.stack([rng.permutation(N_ITEMS)[:20] for _ in range(users)]))
        for n in range(2)
    }
    lengths = rng.integers(0, 300, users)
    popularity = rng.integers(0, 40, N_ITEMS)
    popularity[:7] = 0  # cold items
    return truth, recs, lengths, popularity


def test_history_buckets_partition_users_and_average_back_to_overall():
    truth, recs, lengths, _ = _random_case()
    segs = history_segments(lengths, truth)
    bounds = {
        "0": (0, 0),
        "1-5": (1, 5),
        "6-20": (6, 20),
        "21-50": (21, 50),
        "51-100": (51, 100),
        "101-200": (101, 200),
        "201+": (201, np.inf),
    }
    assert [s.name for s in segs] == [n for n in bounds if any(s.name == n for s in segs)]
    rows = np.concatenate([s.rows for s in segs])
    assert sorted(rows.tolist()) == list(range(len(truth)))
    for seg in segs:
        lo, hi = bounds[seg.name]
        assert ((lengths[seg.rows] >= lo) & (lengths[seg.rows] <= hi)).all(), seg.name
    scored = score_segments(recs, segs, KS)["history_length"]
    for name, (_, m) in recs.items():
        for k in KS:
            overall = evaluate(m, truth, [k], N_ITEMS)[k]
            for metric in ("recall", "ndcg"):
                weighted = sum(
                    s["users"] * s["systems"][name]["metrics"][str(k)][metric]
                    for s in scored.values()
                )
                assert weighted / len(truth) == pytest.approx(overall[metric], abs=1e-5)


def test_popularity_deciles_and_cold_partition_the_test_items_and_hits():
    truth, recs, _, popularity = _random_case(1)
    segs = popularity_segments(popularity, truth)
    names = [s.name for s in segs]
    assert set(names) <= {f"d{d}" for d in range(1, 11)} | {"cold"} and "cold" in names
    assert sum(len(s.truth.items) for s in segs) == len(truth.items)
    cold = next(s for s in segs if s.name == "cold")
    assert (popularity[cold.truth.items] == 0).all()
    d1 = next(s for s in segs if s.name == "d1")
    assert popularity[d1.truth.items].min() >= np.median(popularity[popularity > 0])
    scored = score_segments(recs, segs, KS)["item_popularity"]
    for name, (_, m) in recs.items():
        for k in KS:
            total = int(per_user(m, truth, k)["hits"].sum())
            assert (
                sum(s["systems"][name]["metrics"][str(k)]["hits"] for s in scored.values()) == total
            )


def test_deciles_hold_equal_shares_of_the_warm_items():
    popularity = np.arange(1, 101)  # 100 warm items
    truth = Truth.from_sets([list(range(100))])
    segs = popularity_segments(popularity, truth)
    assert [len(s.truth.items) for s in segs] == [10] * 10
    assert segs[0].truth.items.min() == 90  # d1 = the most popular tenth


def test_cold_and_warm_item_segments_split_each_users_truth():
    truth, recs, _, popularity = _random_case(2)
    segs = {s.name: s for s in item_segments(popularity, truth)}
    assert len(segs["cold"].truth.items) + len(segs["warm"].truth.items) == len(truth.items)
    assert (popularity[segs["cold"].truth.items] == 0).all()
    assert (popularity[segs["warm"].truth.items] > 0).all()


def test_train_popularity_counts_distinct_users():
    users = np.array([0, 0, 1, 2, 2])
    items = np.array([3, 3, 3, 1, -1])  # a repeat and an unknown item
    assert train_popularity(users, items, 5).tolist() == [0, 1, 0, 2, 0]

"""Hold-out splits: sizes, no leakage from a user's future (per user for the temporal
and leave-last-one-out splits, globally for the time cut), the seeded random split,
validation splits carved from train only."""

from __future__ import annotations

import numpy as np
import pytest

from recall_engine.evaluation.split import (
    PROTOCOLS,
    held_out_items,
    leave_last_out_split,
    make_split,
    random_split,
    temporal_split,
    time_split,
    validation_split,
)
from recall_engine.offline.data.interactions import Interactions


def _log(seed: int = 0, users: int = 40) -> Interactions:
    """Random log: users with 1-30 rows, shuffled, with repeated timestamps."""
    rng = np.random.default_rng(seed)
    u, i, t = [], [], []
    for n in range(users):
        count = int(rng.integers(1, 31))
        u += [f"u{n}"] * count
        i += [f"i{x}" for x in rng.integers(0, 50, count)]
        t += rng.integers(0, 20, count).tolist()  # many ties
    order = rng.permutation(len(u))
    return Interactions(np.asarray(u)[order], np.asarray(i)[order], np.asarray(t)[order])


def _per_user(data: Interactions) -> dict[str, np.ndarray]:
    return {u: data.timestamps[rows] for u, rows in data.by_user().items()}


def test_temporal_split_holds_out_the_newest_fraction_of_each_user():
    data = _log()
    split = temporal_split(data, 0.2)
    total = _per_user(data)
    test = _per_user(split.test)
    assert len(split.train) + len(split.test) == len(data)
    for user, stamps in total.items():
        n = len(stamps)
        expected = 0 if n < 2 else min(max(round(0.2 * n), 1), n - 1)
        assert len(test.get(user, ())) == expected, user


def test_temporal_split_never_tests_on_interactions_older_than_training_ones():
    for seed in range(5):
        split = temporal_split(_log(seed), 0.3)
        train = _per_user(split.train)
        for user, stamps in _per_user(split.test).items():
            assert stamps.min() >= train[user].max(), user


def test_temporal_split_breaks_timestamp_ties_by_file_order():
    data = Interactions(["a"] * 4, ["x", "y", "z", "w"], [5, 5, 5, 5])
    split = temporal_split(data, 0.5)
    assert split.train.item_ids.tolist() == ["x", "y"]
    assert split.test.item_ids.tolist() == ["z", "w"]


def test_users_with_fewer_than_two_interactions_stay_in_train():
    data = Interactions(["a", "b", "b"], ["x", "x", "y"], [1, 1, 2])
    split = temporal_split(data, 0.5)
    assert split.test.user_ids.tolist() == ["b"]
    assert sorted(split.train.user_ids.tolist()) == ["a", "b"]


def test_time_split_cuts_at_the_given_time_or_quantile():
    data = Interactions(["a", "a", "b", "b", "c"], ["x", "y", "x", "z", "y"], [1, 2, 3, 4, 5])
    split = time_split(data, cut_time=4)
    assert split.test.timestamps.tolist() == [4, 5]
    assert split.train.timestamps.max() < 4
    by_quantile = make_split(data, "time", quantile=0.6)
    assert by_quantile.params["cut_time"] == 4


def test_time_split_needs_timestamps():
    with pytest.raises(ValueError, match="timestamps"):
        time_split(Interactions(["a"], ["x"]))


def test_validation_split_is_carved_from_train_only():
    split = temporal_split(_log(), 0.2)
    val = validation_split(split)
    assert len(val.train) + len(val.test) == len(split.train)
    assert val.kind == "temporal"
    val_rows = set(
        zip(
            val.test.user_ids.tolist(),
            val.test.timestamps.tolist(),
            val.test.item_ids.tolist(),
            strict=True,
        )
    )
    assert not (
        val_rows
        - set(
            zip(
                split.train.user_ids.tolist(),
                split.train.timestamps.tolist(),
                split.train.item_ids.tolist(),
                strict=True,
            )
        )
    )
    time_val = validation_split(time_split(_log(), cut_time=15))
    assert time_val.train.timestamps.max() < time_val.params["cut_time"] <= 15


def test_held_out_items_drop_items_the_user_already_has_in_train():
    data = Interactions(["a", "a", "a", "b", "b"], ["x", "y", "x", "x", "y"], [1, 2, 3, 1, 2])
    assert held_out_items(temporal_split(data, 0.34)) == {"b": {"y"}}


def _rows(data: Interactions) -> list[tuple[str, str, int]]:
    return sorted(
        zip(data.user_ids.tolist(), data.item_ids.tolist(), data.timestamps.tolist(), strict=True)
    )


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_every_protocol_partitions_the_log(kind):
    data = _log(3)
    split = make_split(data, kind, seed=7)
    assert split.kind == kind and len(split.test) > 0
    assert sorted(_rows(split.train) + _rows(split.test)) == _rows(data)


def test_random_split_holds_out_the_same_counts_as_temporal_at_random():
    data = _log(1)
    rand, temp = random_split(data, 0.3, seed=0), temporal_split(data, 0.3)
    counts = {u: len(r) for u, r in rand.test.by_user().items()}
    assert counts == {u: len(r) for u, r in temp.test.by_user().items()}
    # at random: some user has a test row older than one of their training rows
    train = _per_user(rand.train)
    assert any(s.min() < train[u].max() for u, s in _per_user(rand.test).items())


def test_random_split_is_seeded():
    data = _log(2)
    a, b, c = (random_split(data, 0.2, seed=s) for s in (5, 5, 6))
    assert _rows(a.test) == _rows(b.test)
    assert _rows(a.test) != _rows(c.test)
    assert a.params == {"test_fraction": 0.2, "seed": 5}


def test_leave_last_out_holds_out_exactly_the_newest_row_of_each_user():
    data = _log(4)
    split = leave_last_out_split(data)
    test = split.test.by_user()
    for user, rows in data.by_user().items():
        if len(rows) < 2:
            assert user not in test
            continue
        assert len(test[user]) == 1, user
        newest = data.timestamps[rows].max()
        assert split.test.timestamps[test[user][0]] == newest
        assert split.train.timestamps[split.train.by_user()[user]].max() <= newest


def test_leave_last_out_breaks_ties_by_file_order():
    data = Interactions(["a", "a", "a"], ["x", "y", "z"], [5, 7, 7])
    assert leave_last_out_split(data).test.item_ids.tolist() == ["z"]


def test_time_split_tests_only_on_rows_after_every_training_row():
    for seed in range(3):
        split = make_split(_log(seed), "time", quantile=0.7)
        assert split.test.timestamps.min() > split.train.timestamps.max()


@pytest.mark.parametrize("kind", ["random", "loo"])
def test_validation_split_of_the_new_protocols_is_carved_from_train(kind):
    split = make_split(_log(), kind, seed=3)
    val = validation_split(split)
    assert val.kind == kind
    assert sorted(_rows(val.train) + _rows(val.test)) == _rows(split.train)
    if kind == "random":
        assert val.params["seed"] == 4  # not the outer split's draw again


def test_unknown_protocol_names_the_known_ones():
    with pytest.raises(ValueError, match="temporal, random, loo, time"):
        make_split(_log(), "shuffle")  # type: ignore[arg-type]

"""Fusion: known answers computed by hand, tie-breaks, validation, and properties that
every strategy (and every normalisation) must keep."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_engine.serving.fusion import STRATEGIES, Fused, RankedList, fuse, validate_params

CONFIGS = [
    ("rrf", {}),
    ("rrf", {"rrf_k": 1}),
    ("weighted_sum", {"normalization": "minmax"}),
    ("weighted_sum", {"normalization": "zscore"}),
    ("weighted_sum", {"normalization": "dbsf"}),
    ("weighted_sum", {"normalization": "l2"}),
    ("quota", {}),
]
CONFIG_IDS = [f"{s}-{'-'.join(map(str, p.values())) or 'default'}" for s, p in CONFIGS]


def rl(channel: str, ids: str, scores: list[float] | None = None) -> RankedList:
    """A list from space-separated ids; scores default to n, n-1, ..., 1."""
    items = ids.split()
    return RankedList(
        channel,
        items,
        scores if scores is not None else [float(len(items) - i) for i in range(len(items))],
    )


def assert_same(a: Fused, b: Fused) -> None:
    assert a.item_ids == b.item_ids
    assert a.scores.dtype == b.scores.dtype == np.float32
    assert np.array_equal(a.scores, b.scores)
    assert a.provenance == b.provenance


# --------------------------------------------------------------------------- rrf


def test_rrf_matches_formula_by_hand():
    lists = [rl("a", "x y z"), rl("b", "y w")]
    out = fuse("rrf", lists, {"a": 1.0, "b": 2.0}, 10)
    expected = {
        "y": 1 / 62 + 2 / 61,
        "w": 2 / 62,
        "x": 1 / 61,
        "z": 1 / 63,
    }
    assert out.item_ids == ["y", "w", "x", "z"]
    assert out.scores == pytest.approx([expected[i] for i in out.item_ids], rel=1e-6)


def test_rrf_k_param_changes_the_denominator():
    out = fuse("rrf", [rl("a", "x y")], {"a": 1.0}, 5, params={"rrf_k": 1})
    assert out.scores == pytest.approx([1 / 2, 1 / 3], rel=1e-6)


def test_weight_change_changes_fused_order_as_formula_says():
    lists = [rl("a", "x y"), rl("b", "y x2 z")]
    # Equal weights: y = 1/62 + 1/61 beats x = 1/61 beats x2 = 1/62.
    even = fuse("rrf", lists, {"a": 1.0, "b": 1.0}, 3)
    assert even.item_ids == ["y", "x", "x2"]
    # b's x2 = w/62 passes a's x = 1/61 once w > 62/61 = 1.0164, while b's z = w/63 stays
    # below x until w > 63/61: at w = 1.02, x2 = .016452 > x = .016393 > z = .016190.
    assert 1.02 / 62 > 1 / 61 > 1.02 / 63
    raised = fuse("rrf", lists, {"a": 1.0, "b": 1.02}, 3)
    assert raised.item_ids == ["y", "x2", "x"]
    assert raised.scores == pytest.approx([1 / 62 + 1.02 / 61, 1.02 / 62, 1 / 61], rel=1e-6)


# --------------------------------------------------------------------------- weighted sum
# Channel a: scores 4, 2, 0 for x, y, z. Channel b: 10, 0 for y, w. Weights a=1, b=2.


WS_LISTS = [rl("a", "x y z", [4.0, 2.0, 0.0]), rl("b", "y w", [10.0, 0.0])]
WS_WEIGHTS = {"a": 1.0, "b": 2.0}


def ws(normalization: str, lists: list[RankedList] = WS_LISTS, k: int = 10) -> Fused:
    return fuse("weighted_sum", lists, WS_WEIGHTS, k, params={"normalization": normalization})


def test_weighted_sum_minmax_known_answer():
    # a -> 1, .5, 0 ; b -> 1, 0
    out = ws("minmax")
    assert out.item_ids == ["y", "x", "w", "z"]  # w and z tie at 0: w's best rank (2) wins
    assert out.scores == pytest.approx([0.5 + 2.0, 1.0, 0.0, 0.0])


def test_weighted_sum_zscore_known_answer():
    # a: mean 2, population std sqrt(8/3) -> +-sqrt(3/2), 0 ; b: mean 5, std 5 -> +1, -1
    z = math.sqrt(1.5)
    out = ws("zscore")
    assert out.item_ids == ["y", "x", "z", "w"]
    assert out.scores == pytest.approx([0 + 2 * 1, z, -z, 2 * -1], rel=1e-6)


def test_weighted_sum_dbsf_known_answer():
    # a: (s - (2 - 3 sd)) / (6 sd) with sd = sqrt(8/3): x = .5 + 2/(6 sd), z = .5 - 2/(6 sd)
    # b: sd = 5 -> y = .5 + 5/30, w = .5 - 5/30
    d = 2 / (6 * math.sqrt(8 / 3))
    out = ws("dbsf")
    assert out.item_ids == ["y", "x", "w", "z"]
    assert out.scores == pytest.approx(
        [0.5 + 2 * (0.5 + 1 / 6), 0.5 + d, 2 * (0.5 - 1 / 6), 0.5 - d], rel=1e-6
    )


def test_dbsf_clips_outliers_beyond_three_sigma_to_one():
    # 19 zeros and one 1: mean .05, sd ~.218, mean + 3 sd ~ .70 < 1, so the top saturates.
    lst = RankedList("a", [f"i{n:02d}" for n in range(20)], [1.0] + [0.0] * 19)
    out = fuse("weighted_sum", [lst], {"a": 1.0}, 2, params={"normalization": "dbsf"})
    assert out.scores[0] == 1.0


def test_weighted_sum_l2_known_answer():
    # a: ||(4, 2, 0)|| = sqrt(20) ; b: ||(10, 0)|| = 10
    r = math.sqrt(20)
    out = ws("l2")
    assert out.item_ids == ["y", "x", "w", "z"]
    assert out.scores == pytest.approx([2 / r + 2 * 1.0, 4 / r, 0.0, 0.0], rel=1e-6)


def test_weighted_sum_defaults_to_minmax():
    out = fuse("weighted_sum", WS_LISTS, WS_WEIGHTS, 10)
    assert_same(out, ws("minmax"))


@pytest.mark.parametrize("normalization", ["minmax", "zscore", "dbsf", "l2"])
@pytest.mark.parametrize(
    "scores", [[3.0], [2.5, 2.5, 2.5], [0.0, 0.0]], ids=["single", "all-equal", "all-zero"]
)
def test_degenerate_list_normalises_to_one_without_nan(normalization, scores):
    lst = RankedList("a", [f"i{n}" for n in range(len(scores))], scores)
    out = fuse("weighted_sum", [lst], {"a": 2.0}, 10, params={"normalization": normalization})
    if normalization == "l2" and scores[0] != 0.0:
        expected = 2.0 * scores[0] / np.linalg.norm(scores)  # L2 is only degenerate at zero
    else:
        expected = 2.0
    assert out.scores == pytest.approx([expected] * len(scores))


@pytest.mark.parametrize("normalization", ["minmax", "zscore", "dbsf", "l2"])
def test_extreme_scores_do_not_overflow(normalization):
    lst = RankedList("a", ["x", "y", "z"], [1.7e308, 0.0, -1.7e308])
    out = fuse("weighted_sum", [lst], {"a": 1.0}, 3, params={"normalization": normalization})
    assert out.item_ids == ["x", "y", "z"]
    assert np.isfinite(out.scores).all()


# --------------------------------------------------------------------------- quota


def test_quota_splits_k_by_weight_with_largest_remainder():
    # k = 5, weights 2 : 1 : 1 -> shares 2.5, 1.25, 1.25 -> floors 2, 1, 1, and the one
    # spare slot goes to the largest remainder (a: .5) -> quotas 3, 1, 1.
    lists = [rl("a", "a1 a2 a3 a4 a5"), rl("b", "b1 b2 b3"), rl("c", "c1 c2 c3")]
    out = fuse("quota", lists, {"a": 2.0, "b": 1.0, "c": 1.0}, 5)
    assert sorted(out.item_ids) == ["a1", "a2", "a3", "b1", "c1"]
    # Turns at (j + 1/2) / q: a .17 .5 .83, b .5, c .5 ; ties in weight order, then name.
    assert out.item_ids == ["a1", "a2", "b1", "c1", "a3"]


def test_quota_with_equal_weights_is_round_robin_in_priority_order():
    lists = [rl("a", "a1 a2 a3"), rl("b", "b1 b2 b3")]
    out = fuse("quota", lists, {"a": 1.0, "b": 1.0}, 4, priority=("b", "a"))
    assert out.item_ids == ["b1", "a1", "b2", "a2"]


def test_quota_channel_takes_its_next_untaken_item_on_duplicates():
    lists = [rl("a", "s a2 a3"), rl("b", "s b2 b3")]
    out = fuse("quota", lists, {"a": 1.0, "b": 1.0}, 4)
    assert out.item_ids == ["s", "b2", "a2", "b3"]
    # Dedupe keeps both channels' provenance for s.
    assert out.provenance["a"] == ([0, 2], [1, 2], [3.0, 2.0])
    assert out.provenance["b"] == ([0, 1, 3], [1, 2, 3], [3.0, 2.0, 1.0])


def test_quota_backfills_from_other_channels_in_weight_order():
    # k = 6, weights 1 : 2 : 3 -> quotas 1, 2, 3, but c has only one item.
    lists = [rl("a", "a1 a2 a3 a4"), rl("b", "b1 b2 b3 b4"), rl("c", "c1")]
    out = fuse("quota", lists, {"a": 1.0, "b": 2.0, "c": 3.0}, 6)
    # Turns: c 1/6, b 1/4, c 1/2, a 1/2, b 3/4, c 5/6; c's last two find nothing, so two
    # slots are backfilled at the end in weight order: c (empty), then b.
    assert out.item_ids == ["c1", "b1", "a1", "b2", "b3", "b4"]


def test_quota_scores_fall_with_output_position():
    lists = [rl("a", "a1 a2"), rl("b", "b1")]
    out = fuse("quota", lists, {"a": 1.0, "b": 1.0}, 4)
    assert out.item_ids == ["a1", "b1", "a2"]
    assert out.scores.tolist() == pytest.approx([4 / 4, 3 / 4, 2 / 4])


# --------------------------------------------------------------------------- shared rules


@pytest.mark.parametrize(("strategy", "params"), CONFIGS, ids=CONFIG_IDS)
def test_zero_weight_channel_never_adds_candidate(strategy, params):
    lists = [rl("a", "x y"), rl("zero", "only_zero y"), rl("missing", "only_missing")]
    out = fuse(strategy, lists, {"a": 1.0, "zero": 0.0}, 10, params=params)
    assert sorted(out.item_ids) == ["x", "y"]
    assert set(out.provenance) == {"a"}


@pytest.mark.parametrize(("strategy", "params"), CONFIGS, ids=CONFIG_IDS)
def test_dedupe_keeps_every_channels_provenance(strategy, params):
    lists = [rl("a", "x y", [0.9, 0.5]), rl("b", "z y", [7.0, 3.0])]
    out = fuse(strategy, lists, {"a": 1.0, "b": 1.0}, 10, params=params)
    assert sorted(out.item_ids) == ["x", "y", "z"]
    y = out.item_ids.index("y")
    assert (y, 2, 0.5) in zip(*out.provenance["a"], strict=True)
    assert (y, 2, 3.0) in zip(*out.provenance["b"], strict=True)


def test_provenance_lists_only_candidates_that_made_the_cut():
    lists = [rl("a", "x y z"), rl("b", "q")]
    out = fuse("rrf", lists, {"a": 1.0, "b": 0.1}, 2)
    assert out.item_ids == ["x", "y"]
    assert out.provenance == {"a": ([0, 1], [1, 2], [3.0, 2.0])}


def test_equal_scores_break_by_best_rank_before_priority():
    # x = 61/61 = 1 at rank 1 in a ; y = 62/62 = 1 at rank 2 in b (b is preferred).
    lists = [rl("a", "x"), rl("b", "top y")]
    out = fuse("rrf", lists, {"a": 61.0, "b": 62.0}, 3, priority=("b", "a"))
    assert out.scores[1] == out.scores[2]
    assert out.item_ids == ["top", "x", "y"]


def test_equal_scores_and_ranks_break_by_channel_priority_then_name():
    lists = [rl("a", "x"), rl("b", "y")]
    assert fuse("rrf", lists, {"a": 1.0, "b": 1.0}, 2).item_ids == ["x", "y"]
    assert fuse("rrf", lists, {"a": 1.0, "b": 1.0}, 2, priority=("b",)).item_ids == ["y", "x"]


def test_full_tie_breaks_by_item_id():
    # Both at ranks 1 and 2, both first seen in a: same score, best rank, channel.
    lists = [rl("a", "b_item a_item"), rl("b", "a_item b_item")]
    out = fuse("rrf", lists, {"a": 1.0, "b": 1.0}, 1)
    assert out.item_ids == ["a_item"]


def test_fused_scores_are_float32_and_lists_may_be_numpy():
    lst = RankedList("a", np.array(["x", "y"]), np.array([0.5, 0.25], dtype=np.float32))
    out = fuse("weighted_sum", [lst], {"a": 1.0}, 5)
    assert out.scores.dtype == np.float32
    assert out.item_ids == ["x", "y"]


def test_no_taking_part_channel_gives_empty_result():
    out = fuse("rrf", [rl("a", "x")], {"a": 0.0}, 5)
    assert out.item_ids == [] and out.scores.dtype == np.float32 and out.provenance == {}
    assert fuse("quota", [], {}, 5).item_ids == []


# --------------------------------------------------------------------------- validation


def test_validate_params_fills_defaults():
    assert validate_params("rrf", {}) == {"rrf_k": 60}
    assert validate_params("weighted_sum", {}) == {"normalization": "minmax"}
    assert validate_params("quota", {}) == {}
    assert set(STRATEGIES) == {"rrf", "weighted_sum", "quota"}


def test_unknown_strategy_names_the_known_ones():
    msg = "fusion: unknown strategy 'foo' (known: quota, rrf, weighted_sum)"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        validate_params("foo", {})
    with pytest.raises(ValueError, match="unknown strategy 'foo'"):
        fuse("foo", [rl("a", "x")], {"a": 1.0}, 5)


@pytest.mark.parametrize(
    ("strategy", "params", "message"),
    [
        ("rrf", {"rrf_k": -1}, "fusion_params.rrf_k: must be a positive number, got -1"),
        ("rrf", {"rrf_k": 0}, "fusion_params.rrf_k: must be a positive number, got 0"),
        ("rrf", {"rrf_k": float("nan")}, "fusion_params.rrf_k: must be a positive number"),
        ("rrf", {"rrf_k": "60"}, "fusion_params.rrf_k: must be a positive number, got '60'"),
        ("rrf", {"rrf_k": True}, "fusion_params.rrf_k: must be a positive number"),
        (
            "weighted_sum",
            {"normalization": "max"},
            "fusion_params.normalization: must be one of dbsf, l2, minmax, zscore, got 'max'",
        ),
        ("rrf", {"normalization": "l2"}, "fusion_params.normalization: unknown parameter"),
        ("quota", {"rrf_k": 60}, "fusion_params.rrf_k: unknown parameter"),
    ],
)
def test_bad_params_name_the_offending_key(strategy, params, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        validate_params(strategy, params)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        fuse(strategy, [rl("a", "x")], {"a": 1.0}, 5, params=params)


@pytest.mark.parametrize("k", [0, -3])
def test_non_positive_k_is_rejected(k):
    with pytest.raises(ValueError, match=r"^k: must be a positive integer"):
        fuse("rrf", [rl("a", "x")], {"a": 1.0}, k)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), float("-inf")])
def test_bad_weight_names_the_channel(bad):
    with pytest.raises(ValueError, match=r"^weights\.b: must be a finite number >= 0"):
        fuse("rrf", [rl("a", "x"), rl("b", "y")], {"a": 1.0, "b": bad}, 5)


def test_malformed_lists_are_rejected():
    with pytest.raises(ValueError, match=r"lists\['a'\]\.item_ids: duplicate"):
        fuse("rrf", [rl("a", "x y x")], {"a": 1.0}, 5)
    with pytest.raises(ValueError, match=r"lists\['a'\]\.scores: expected 2 scores"):
        fuse("rrf", [RankedList("a", ["x", "y"], [1.0])], {"a": 1.0}, 5)
    with pytest.raises(ValueError, match=r"lists\['a'\]\.scores: must be finite"):
        fuse("rrf", [RankedList("a", ["x"], [float("nan")])], {"a": 1.0}, 5)
    with pytest.raises(ValueError, match=r"lists: channel 'a' given more than once"):
        fuse("rrf", [rl("a", "x"), rl("a", "y")], {"a": 1.0}, 5)


def test_the_duplicate_check_names_the_list_that_repeats_and_allows_sharing():
    # ids shared between lists are the point of fusion; a repeat within one list is not
    shared = fuse("rrf", [rl("a", "x y z"), rl("b", "z y x")], {"a": 1.0, "b": 1.0}, 5)
    assert sorted(shared.item_ids) == ["x", "y", "z"]
    with pytest.raises(ValueError, match=r"^lists\['b'\]\.item_ids: duplicate item ids$"):
        fuse("rrf", [rl("a", "x y z"), rl("b", "w z w")], {"a": 1.0, "b": 1.0}, 5)
    with pytest.raises(ValueError, match=r"^lists\['a'\]\.item_ids: duplicate item ids$"):
        fuse("rrf", [rl("a", "q x q"), rl("b", "w w")], {"a": 1.0, "b": 1.0}, 5)


# --------------------------------------------------------------------------- properties

CHANNELS = ["a", "b", "c", "d"]
ITEM_POOL = [f"i{n}" for n in range(12)]
score_values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, 1.0, 0.5]),  # ties and degenerate lists
)


@st.composite
def ranked_list(draw, channel: str) -> RankedList:
    ids = draw(st.lists(st.sampled_from(ITEM_POOL), unique=True, max_size=8))
    scores = sorted(
        draw(st.lists(score_values, min_size=len(ids), max_size=len(ids))), reverse=True
    )
    as_array = draw(st.booleans())
    return RankedList(channel, ids, np.array(scores, dtype=np.float32) if as_array else scores)


@st.composite
def fusion_inputs(draw):
    channels = draw(st.lists(st.sampled_from(CHANNELS), unique=True, max_size=4))
    lists = [draw(ranked_list(c)) for c in channels]
    weights = {}
    for c in CHANNELS:
        w = draw(
            st.one_of(st.none(), st.just(0.0), st.floats(0.01, 100.0), st.sampled_from([1.0, 2.0]))
        )
        if w is not None:
            weights[c] = w
    k = draw(st.integers(1, 15))
    priority = tuple(draw(st.lists(st.sampled_from(CHANNELS), unique=True, max_size=4)))
    return lists, weights, k, priority


def positive(lists: list[RankedList], weights: dict[str, float]) -> list[RankedList]:
    return [lst for lst in lists if weights.get(lst.channel, 0.0) > 0]


prop = settings(max_examples=60, deadline=None)
by_config = pytest.mark.parametrize(("strategy", "params"), CONFIGS, ids=CONFIG_IDS)


@by_config
@prop
@given(data=fusion_inputs())
def test_output_is_deduped_at_most_k_and_ordered_by_fused_score(strategy, params, data):
    lists, weights, k, priority = data
    out = fuse(strategy, lists, weights, k, priority=priority, params=params)
    available = {i for lst in positive(lists, weights) for i in lst.item_ids}
    assert len(out.item_ids) == len(set(out.item_ids)) == min(k, len(available))
    assert out.scores.dtype == np.float32 and out.scores.shape == (len(out.item_ids),)
    assert np.isfinite(out.scores).all()
    assert (np.diff(out.scores) <= 0).all()


@by_config
@prop
@given(data=fusion_inputs())
def test_zero_weight_channel_changes_nothing(strategy, params, data):
    lists, weights, k, priority = data
    out = fuse(strategy, lists, weights, k, priority=priority, params=params)
    kept = positive(lists, weights)
    assert set(out.item_ids) <= {i for lst in kept for i in lst.item_ids}
    assert set(out.provenance) <= {lst.channel for lst in kept}
    assert_same(out, fuse(strategy, kept, weights, k, priority=priority, params=params))


@by_config
@prop
@given(data=fusion_inputs())
def test_inputs_are_not_mutated(strategy, params, data):
    lists, weights, k, priority = data
    before = copy.deepcopy((lists, weights, priority))
    out = fuse(strategy, lists, weights, k, priority=priority, params=params)
    after = (lists, weights, priority)
    assert [(x.channel, list(x.item_ids), np.asarray(x.scores).tolist()) for x in after[0]] == [
        (x.channel, list(x.item_ids), np.asarray(x.scores).tolist()) for x in before[0]
    ]
    assert after[1:] == before[1:]
    for lst in lists:  # the result never aliases the caller's arrays
        if isinstance(lst.scores, np.ndarray):
            assert not np.shares_memory(out.scores, lst.scores)


@by_config
@prop
@given(data=fusion_inputs(), seed=st.randoms(use_true_random=False))
def test_result_is_deterministic_and_independent_of_list_order(strategy, params, data, seed):
    lists, weights, k, priority = data
    out = fuse(strategy, lists, weights, k, priority=priority, params=params)
    assert_same(out, fuse(strategy, lists, weights, k, priority=priority, params=params))
    shuffled = list(lists)
    seed.shuffle(shuffled)
    assert_same(out, fuse(strategy, shuffled, weights, k, priority=priority, params=params))


@by_config
@prop
@given(data=fusion_inputs())
def test_provenance_points_at_the_channels_own_rank_and_score(strategy, params, data):
    lists, weights, k, priority = data
    out = fuse(strategy, lists, weights, k, priority=priority, params=params)
    by_name = {lst.channel: lst for lst in positive(lists, weights)}
    covered = set()
    for name, (index, ranks, raw) in out.provenance.items():
        lst = by_name[name]
        assert ranks == sorted(ranks)
        for i, r, s in zip(index, ranks, raw, strict=True):
            assert out.item_ids[i] == lst.item_ids[r - 1]
            assert s == float(lst.scores[r - 1])
            covered.add(i)
        fused = set(out.item_ids)
        assert len(index) == sum(1 for i in lst.item_ids if i in fused)
    assert covered == set(range(len(out.item_ids)))


@prop
@given(data=fusion_inputs(), rrf_k=st.sampled_from([1, 60, 0.5]))
def test_rrf_equals_a_plain_python_reference(data, rrf_k):
    lists, weights, k, priority = data
    kept = positive(lists, weights)
    kept.sort(
        key=lambda x: (
            priority.index(x.channel) if x.channel in priority else len(priority),
            x.channel,
        )
    )
    score: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}
    for c, lst in enumerate(kept):
        for r, item in enumerate(lst.item_ids, start=1):
            score[item] = score.get(item, 0.0) + weights[lst.channel] / (rrf_k + r)
            best_r, best_c = best.get(item, (r, c))
            best[item] = (min(best_r, r), min(best_c, c))  # best rank, first channel
    expected = sorted(score, key=lambda i: (-np.float32(score[i]), *best[i], i))[:k]
    out = fuse("rrf", lists, weights, k, priority=priority, params={"rrf_k": rrf_k})
    assert out.item_ids == expected
    assert out.scores.tolist() == [np.float32(score[i]) for i in expected]


# --------------------------------------------------------------------------- cold quota


def cold_of(cold_ids: set[str]):
    return lambda ids: np.asarray([i in cold_ids for i in ids], dtype=bool)


def test_cold_quota_puts_the_best_cold_items_in_place_of_the_last_warm_ones():
    cf = rl("cf", "w1 w2 w3 w4 w5 w6")
    content = rl("content", "w2 c1 w7 c2 c3")
    weights = {"cf": 1.0, "content": 0.1}
    base = fuse("rrf", [cf, content], weights, 5)
    assert base.item_ids == ["w2", "w1", "w3", "w4", "w5"]
    out = fuse("rrf", [cf, content], weights, 5, cold_quota=0.4, cold=cold_of({"c1", "c2", "c3"}))
    # floor(0.4 * 5) = 2 slots: the two best cold items in fused order, at the end
    assert out.item_ids == ["w2", "w1", "w3", "c1", "c2"]
    assert out.scores.tolist()[:3] == base.scores.tolist()[:3]
    assert out.scores[3] == np.float32(0.1 / 62) and out.scores[4] == np.float32(0.1 / 64)
    assert out.provenance["content"] == ([0, 3, 4], [1, 2, 4], [5.0, 4.0, 2.0])


def test_cold_items_already_in_the_list_count_towards_the_quota():
    cf = rl("cf", "w1 c1 w2 w3")
    content = rl("content", "c2 c3")
    cold = cold_of({"c1", "c2", "c3"})
    out = fuse("rrf", [cf, content], {"cf": 1.0, "content": 0.01}, 4, cold_quota=0.5, cold=cold)
    assert out.item_ids == ["w1", "c1", "w2", "c2"]  # c1 earned its place; one more slot


def test_cold_quota_never_takes_items_no_taking_part_channel_returned():
    cf = rl("cf", "w1 w2 w3 w4")
    content = rl("content", "c1 c2")
    cold = cold_of({"c1", "c2", "c9"})
    muted = fuse("rrf", [cf, content], {"cf": 1.0, "content": 0.0}, 4, cold_quota=1.0, cold=cold)
    assert muted.item_ids == ["w1", "w2", "w3", "w4"]  # content has weight 0
    out = fuse("rrf", [cf, content], {"cf": 1.0, "content": 1.0}, 4, cold_quota=1.0, cold=cold)
    assert sorted(out.item_ids) == ["c1", "c2", "w1", "w2"]  # c9: nobody returned it


def test_cold_quota_without_a_cold_signal_changes_nothing():
    lists = [rl("cf", "w1 w2 w3"), rl("content", "c1")]
    base = fuse("rrf", lists, {"cf": 1.0, "content": 0.1}, 2)
    assert_same(base, fuse("rrf", lists, {"cf": 1.0, "content": 0.1}, 2, cold_quota=1.0, cold=None))
    assert_same(
        base,
        fuse("rrf", lists, {"cf": 1.0, "content": 0.1}, 2, cold_quota=1.0, cold=lambda ids: None),
    )


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_cold_quota_names_the_key(bad):
    with pytest.raises(ValueError, match=r"^cold_quota: "):
        fuse("rrf", [rl("a", "x")], {"a": 1.0}, 3, cold_quota=bad, cold=cold_of(set()))


def test_a_cold_mask_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match=r"^cold: expected 2 flags"):
        fuse("rrf", [rl("a", "x y")], {"a": 1.0}, 1, cold_quota=1.0, cold=lambda ids: [True])


@st.composite
def cold_inputs(draw):
    lists, weights, k, priority = draw(fusion_inputs())
    cold = set(draw(st.lists(st.sampled_from(ITEM_POOL), unique=True)))
    quota = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]))
    return lists, weights, k, priority, cold, quota


@by_config
@prop
@given(data=fusion_inputs(), cold=st.sets(st.sampled_from(ITEM_POOL)))
def test_cold_quota_zero_is_exactly_the_plain_fusion(strategy, params, data, cold):
    lists, weights, k, priority = data
    plain = fuse(strategy, lists, weights, k, priority=priority, params=params)
    out = fuse(strategy, lists, weights, k, priority=priority, params=params, cold=cold_of(cold))
    assert_same(plain, out)


@by_config
@prop
@given(data=cold_inputs())
def test_cold_quota_reserves_at_most_the_cap_and_only_returned_cold_items(strategy, params, data):
    lists, weights, k, priority, cold, quota = data
    base = fuse(strategy, lists, weights, k, priority=priority, params=params)
    out = fuse(
        strategy,
        lists,
        weights,
        k,
        priority=priority,
        params=params,
        cold_quota=quota,
        cold=cold_of(cold),
    )
    cap = math.floor(quota * k + 1e-9)
    returned = {i for lst in positive(lists, weights) for i in lst.item_ids}
    added = [i for i in out.item_ids if i not in base.item_ids]
    dropped = [i for i in base.item_ids if i not in out.item_ids]
    # same length, deduped, sorted scores
    assert len(out.item_ids) == len(set(out.item_ids)) == len(base.item_ids)
    assert (np.diff(out.scores) <= 0).all() and out.scores.dtype == np.float32
    # what came in: cold items a taking-part channel returned, no more than the cap
    assert set(added) <= cold & returned and len(added) <= cap
    # the quota is filled as far as the channels allow, and never beyond by promotion
    in_out = sum(i in cold for i in out.item_ids)
    in_base = sum(i in cold for i in base.item_ids)
    assert in_out == max(in_base, min(cap, len(cold & returned)))
    # what went: the last non-cold items of the plain list; the rest keep their order
    warm = [i for i in base.item_ids if i not in cold]
    assert dropped == warm[len(warm) - len(dropped) :]
    assert [i for i in out.item_ids if i in base.item_ids] == [
        i for i in base.item_ids if i not in dropped
    ]


@pytest.mark.parametrize("strategy", ["rrf", "weighted_sum"])
@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    k=st.integers(1, 60),
    quota=st.sampled_from([0.05, 0.1, 0.3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cold_quota_from_one_full_order_equals_the_top_k_then_the_full_order(
    strategy, sizes, k, quota, seed
):
    """With a cold quota, rrf and weighted_sum are computed once over the whole pool
    and cut at k: the same list, scores and per-channel columns as the top-k call
    followed by the full-order call it replaces (ties included: few distinct scores)."""
    from recall_engine.serving import fusion as f

    rng = np.random.default_rng(seed)
    lists = []
    for c, n in enumerate(sizes):
        ids = [f"i{j}" for j in rng.choice(50, size=n, replace=False)]
        scores = rng.integers(0, 4, size=n).astype(np.float32)  # ties on purpose
        lists.append(RankedList(f"c{c}", ids, np.sort(scores)[::-1].copy()))
    weights = {lst.channel: float(rng.choice([0.5, 1.0])) for lst in lists}
    cold_ids = {f"i{j}" for j in range(0, 50, 3)}

    def cold(ids):
        return np.array([i in cold_ids for i in ids], dtype=bool)

    priority = [lst.channel for lst in lists]
    got = fuse(strategy, lists, weights, k, priority=priority, cold_quota=quota, cold=cold)

    checked = validate_params(strategy, {})
    pool = f._build_pool(lists, weights, priority)
    if not pool.ids:
        assert got.item_ids == []
        return
    order, scores = f.STRATEGIES[strategy](pool, k, checked)
    slots = f.cold_slots(quota, k)
    order, scores = f._reserve_cold(pool, order, scores, k, slots, cold, strategy, checked)
    want = f._assemble(pool, order, scores)
    assert got.item_ids == want.item_ids
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.provenance == want.provenance


# --------------------------------------------------------------------------- given ranks


def test_a_list_with_ranks_fuses_as_the_longer_ranking_it_was_filtered_from():
    """A scout's new items carry the ranks they hold in its full ranking: RRF gives
    them the terms of those ranks, so ``b`` (rank 2 of its list) beats ``z`` (rank 150),
    where by position they would tie and channel priority would pick ``z``."""
    lists = [
        RankedList("one", ["z"], [0.9], ranks=[150]),
        RankedList("two", ["b"], [0.1], ranks=[2]),
    ]
    got = fuse("rrf", lists, {"one": 1.0, "two": 1.0}, 2, priority=["one", "two"])
    assert got.item_ids == ["b", "z"]
    np.testing.assert_allclose(got.scores, np.float32([1 / 62, 1 / 210]))
    assert got.provenance["one"] == ([1], [150], [pytest.approx(0.9)])
    by_position = [RankedList(lst.channel, lst.item_ids, lst.scores) for lst in lists]
    assert fuse(
        "rrf", by_position, {"one": 1.0, "two": 1.0}, 2, priority=["one", "two"]
    ).item_ids == ["z", "b"]
    single = fuse("rrf", lists[:1], {"one": 1.0}, 1)  # the one-list path reads them too
    np.testing.assert_allclose(single.scores, np.float32([1 / 210]))


@pytest.mark.parametrize("ranks", [[2, 2], [3, 1], [0, 5], [1], [1.5, 3]])
def test_ranks_that_do_not_increase_or_undercut_their_position_are_refused(ranks):
    lst = RankedList("one", ["a", "b"], [0.5, 0.4], ranks=ranks)
    with pytest.raises(ValueError, match=r"^lists\['one'\]\.ranks: "):
        fuse("rrf", [lst], {"one": 1.0}, 2)

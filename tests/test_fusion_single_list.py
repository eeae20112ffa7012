"""One taking-part list is pooled directly (``fusion._single_pool``) instead of through
the union numbering: the pool, and so every strategy's output with and without the cold
quota, must be what the general path (``fusion._union_pool``) gives for the same list."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_engine.serving import fusion
from recall_engine.serving.fusion import STRATEGIES, RankedList, fuse, validate_params
from tests.test_fusion import CONFIG_IDS, CONFIGS  # every strategy and normaliser


@st.composite
def one_list(draw):
    n = draw(st.integers(0, 60))
    ids = draw(st.lists(st.integers(0, 500), min_size=n, max_size=n, unique=True))
    # few distinct values: ties between neighbours are common
    raw = draw(st.lists(st.sampled_from([-2.0, 0.0, 0.25, 0.5, 3.0]), min_size=n, max_size=n))
    scores = np.sort(np.asarray(raw, dtype=np.float32))[::-1]
    cold = {i for i in ids if draw(st.booleans())}
    return [f"i{i}" for i in ids], scores, cold


def _reference(lst: RankedList, weight: float, k: int, strategy, params, quota, cold):
    """What ``fuse`` returned for one list before the direct pool: the union pool."""
    checked = validate_params(strategy, params)
    pool = fusion._union_pool([lst], (fusion._checked_scores(lst),), {lst.channel: weight})
    if not pool.ids:
        return [], np.zeros(0, np.float32), {}
    order, scores = STRATEGIES[strategy](pool, k, checked)
    slots = fusion.cold_slots(quota, k)
    if slots:
        order, scores = fusion._reserve_cold(pool, order, scores, k, slots, cold, strategy, checked)
    out = fusion._assemble(pool, order, scores)
    return out.item_ids, out.scores, out.provenance


@pytest.mark.parametrize(("strategy", "params"), CONFIGS, ids=CONFIG_IDS)
@settings(max_examples=60, deadline=None)
@given(
    data=one_list(),
    k=st.integers(1, 80),
    weight=st.sampled_from([0.3, 1.0, 2.5]),
    quota=st.sampled_from([0.0, 0.02, 0.5]),
)
def test_a_single_list_fuses_exactly_as_the_union_path(strategy, params, data, k, weight, quota):
    ids, scores, cold_set = data
    lst = RankedList("cf", ids, scores)

    def cold(xs):
        return np.fromiter((x in cold_set for x in xs), bool, len(xs))

    # a second list at weight 0 takes no part: the single-list path is taken
    lists = [lst, RankedList("popular", ["p1", "i1"], [1.0, 0.5])]
    weights = {"cf": weight, "popular": 0.0}
    got = fuse(
        strategy,
        lists,
        weights,
        k,
        priority=("popular", "cf"),
        params=params,
        cold_quota=quota,
        cold=cold,
    )
    want_ids, want_scores, want_prov = _reference(lst, weight, k, strategy, params, quota, cold)
    assert got.item_ids == want_ids
    assert got.scores.dtype == np.float32
    np.testing.assert_array_equal(got.scores, want_scores)
    assert got.provenance == want_prov


@settings(max_examples=100, deadline=None)
@given(data=one_list(), weight=st.sampled_from([0.5, 1.0]))
def test_the_direct_pool_equals_the_union_pool_field_by_field(data, weight):
    ids, scores, _ = data
    lst = RankedList("cf", ids, scores)
    checked = (fusion._checked_scores(lst),)
    single = fusion._single_pool(lst, checked[0], weight)
    union = fusion._union_pool([lst], checked, {"cf": weight})
    assert single is not None
    for field in dataclasses.fields(union):
        a, b = getattr(single, field.name), getattr(union, field.name)
        if isinstance(b, tuple) and b and isinstance(b[0], np.ndarray):
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
        elif isinstance(b, np.ndarray):
            assert a.dtype == b.dtype, field.name
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, field.name


def test_a_single_list_with_repeated_ids_is_still_refused_naming_it():
    lst = RankedList("cf", ["a", "b", "a"], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"lists\['cf'\]\.item_ids: duplicate item ids"):
        fuse("rrf", [lst], {"cf": 1.0}, 5)

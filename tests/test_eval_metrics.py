"""Evaluation metrics against hand-computed values, and the baselines' contract."""

from __future__ import annotations

import math

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse", reason="the baselines need the [eval] extra (scipy)")

from recall_engine.evaluation.baselines import (  # noqa: E402
    ALS,
    EASE,
    ItemKNN,
    Popularity,
    top_k,
    tune_ease,
)
from recall_engine.evaluation.metrics import (  # noqa: E402
    Truth,
    evaluate,
    hits_matrix,
    ids_to_matrix,
    novelty_table,
)

# Two users, catalogue of 10 items.
# user 0: recs [1, 2, 3, 4], test items {2, 4, 9}  -> hits at ranks 2 and 4
# user 1: recs [5, 6, -1, -1] (only two), test {5} -> hit at rank 1
RECS = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
TRUTH = Truth.from_sets([{2, 4, 9}, {5}])


def test_hits_matrix_marks_test_items_and_ignores_padding():
    assert hits_matrix(RECS, TRUTH).tolist() == [
        [False, True, False, True],
        [True, False, False, False],
    ]


def test_recall_divides_hits_by_number_of_test_items():
    m = evaluate(RECS, TRUTH, [2, 4], n_catalog=10)
    assert m[2]["recall"] == pytest.approx((1 / 3 + 1) / 2)
    assert m[4]["recall"] == pytest.approx((2 / 3 + 1) / 2)


def test_recall_is_not_capped_at_k():
    # 3 test items, K = 1, one hit: 1/3 (not 1/min(K, 3) = 1).
    m = evaluate(np.array([[2]]), Truth.from_sets([{2, 4, 9}]), [1], n_catalog=10)
    assert m[1]["recall"] == pytest.approx(1 / 3)


def test_ndcg_uses_binary_gains_and_ideal_over_min_k_and_test_size():
    m = evaluate(RECS, TRUTH, [2, 4], n_catalog=10)
    # user 0 @2: DCG = 1/log2(3); IDCG = 1 + 1/log2(3) (min(2, 3) = 2 hits)
    u0_2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    # user 0 @4: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/log2(4)
    u0_4 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    assert m[2]["ndcg"] == pytest.approx((u0_2 + 1.0) / 2)
    assert m[4]["ndcg"] == pytest.approx((u0_4 + 1.0) / 2)


def test_hit_rate_counts_users_with_any_hit():
    recs = np.array([[1, 2], [7, 8]])
    m = evaluate(recs, TRUTH, [1, 2], n_catalog=10)
    assert m[1]["hit"] == 0.0
    assert m[2]["hit"] == 0.5


def test_coverage_counts_distinct_recommended_items_over_catalogue():
    m = evaluate(RECS, TRUTH, [1, 2, 4], n_catalog=10)
    assert m[1]["coverage"] == pytest.approx(2 / 10)  # {1, 5}
    assert m[4]["coverage"] == pytest.approx(6 / 10)  # {1..6}, padding ignored


def test_novelty_is_mean_self_information_of_recommended_items():
    # 4 training users; item 0 seen by all 4, item 1 by 1 user, item 2 by nobody.
    users = np.array([0, 1, 2, 3, 0, 0])
    items = np.array([0, 0, 0, 0, 1, 1])  # the repeat of (0, 1) counts once
    info = novelty_table(users, items, 3)
    assert info.tolist() == pytest.approx([0.0, 2.0, 2.0])  # unseen counts as one user
    m = evaluate(np.array([[0, 1]]), Truth.from_sets([{1}]), [1, 2], 3, info)
    assert m[1]["novelty"] == pytest.approx(0.0)
    assert m[2]["novelty"] == pytest.approx(1.0)


def test_ids_to_matrix_pads_and_drops_unknown_ids():
    index = {"a": 0, "b": 1, "c": 2}
    out = ids_to_matrix([["b", "zz", "a"], []], index, 3)
    assert out.tolist() == [[1, 0, -1], [-1, -1, -1]]


def test_evaluate_needs_enough_columns():
    with pytest.raises(ValueError, match="max"):
        evaluate(RECS, TRUTH, [5], n_catalog=10)


# -- baselines ------------------------------------------------------------------------------

# Items 0-2 form one cluster and 3-5 another; user 4 has seen 0 and 1 only.
X = sp.csr_matrix(
    np.array(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 1],
            [0, 1, 0, 1, 1, 0],
            [1, 1, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
)


def test_top_k_excludes_history_breaks_ties_by_index_and_pads():
    scores = np.array([[5.0, 1.0, 1.0, 9.0]])
    hist = sp.csr_matrix(np.array([[0, 0, 0, 1]], dtype=np.float32))
    assert top_k(scores, hist, 2).tolist() == [[0, 1]]
    assert top_k(scores, hist, 6).tolist() == [[0, 1, 2, -1, -1, -1]]


def test_popularity_ranks_by_distinct_users_and_skips_seen_items():
    # users per item: 3, 4, 2, 2, 2, 1; items 0 and 1 seen; 2, 3, 4 tie (lower id first)
    assert Popularity().fit(X).recommend(X[4:5], 3).tolist() == [[2, 3, 4]]


@pytest.mark.parametrize(
    "model",
    [ItemKNN(), ItemKNN(neighbours=2), EASE(lam=1.0), ALS(factors=4, iterations=10, threads=1)],
)
def test_models_recommend_the_missing_cluster_item_first(model):
    if isinstance(model, ALS):
        pytest.importorskip("implicit", reason="ALS needs the [eval] extra (implicit)")
    recs = model.fit(X).recommend(X[4:5], 2)
    assert recs[0, 0] == 2
    assert not set(recs[0].tolist()) & {0, 1}


def test_model_baselines_return_nothing_for_an_empty_history():
    empty = sp.csr_matrix((1, 6), dtype=np.float32)
    assert (EASE(1.0).fit(X).recommend(empty, 3) == -1).all()
    assert (Popularity().fit(X).recommend(empty, 3) >= 0).all()


def test_tune_ease_picks_from_the_grid():
    lam, scores = tune_ease(X, X[4:5], Truth.from_sets([{2}]), 1, grid=(1.0, 10.0))
    assert lam in (1.0, 10.0) and set(scores) == {1.0, 10.0}
    assert scores[lam] == 1.0

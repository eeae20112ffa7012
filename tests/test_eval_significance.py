"""Paired bootstrap: the interval holds the point estimate, narrows with more users,
is reproducible with its seed and centres on zero for identical systems."""

from __future__ import annotations

import numpy as np
import pytest

from recall_engine.evaluation.significance import paired_bootstrap


def _pair(users: int, seed: int = 0, lift: float = 0.05):
    rng = np.random.default_rng(seed)
    b = rng.uniform(0, 1, users)
    a = np.clip(b + rng.normal(lift, 0.2, users), 0, 1)
    return a, b


@pytest.mark.parametrize("seed", range(5))
def test_interval_contains_the_point_estimate(seed):
    a, b = _pair(200, seed)
    out = paired_bootstrap(a, b, resamples=500, seed=seed)
    assert out["diff"] == pytest.approx(a.mean() - b.mean())
    assert out["ci"][0] <= out["diff"] <= out["ci"][1]
    assert out["a"] == pytest.approx(a.mean()) and out["b"] == pytest.approx(b.mean())


def test_interval_narrows_with_more_users():
    widths = []
    for users in (50, 200, 800, 3200):
        a, b = _pair(users, seed=1)
        lo, hi = paired_bootstrap(a, b, resamples=400, seed=0)["ci"]
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < widths[0] / 4  # ~ 1/sqrt(n): 8x the users, ~1/8 the width


def test_same_seed_same_interval():
    a, b = _pair(300)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3)["ci"] != paired_bootstrap(a, b, seed=4)["ci"]


def test_identical_systems_differ_by_exactly_zero():
    a, _ = _pair(100)
    out = paired_bootstrap(a, a.copy(), resamples=200)
    assert out["diff"] == 0 and out["ci"] == [0.0, 0.0] and out["p_value"] == 1.0


def test_a_clear_difference_is_significant():
    a, b = _pair(2000, lift=0.1)
    out = paired_bootstrap(a, b, resamples=500)
    assert out["ci"][0] > 0 and out["p_value"] < 0.01


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(np.zeros(3), np.zeros(3), resamples=0)
    empty = paired_bootstrap(np.zeros(0), np.zeros(0))
    assert empty["users"] == 0 and empty["diff"] is None

"""Paired bootstrap confidence intervals for the difference between two systems.

Both systems are scored on the same users (the same split), so the comparison is
paired: each resample draws the evaluated users with replacement and takes the mean of
the per-user differences ``a_u - b_u`` (Efron & Tibshirani 1993; for IR evaluation,
Sakai, SIGIR 2006). The interval is the percentile interval of those means; the
p-value is the two-sided share of resamples on the other side of zero. The generator is
seeded, so a run is reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "paired_bootstrap"]

DEFAULT_RESAMPLES = 1000
_CHUNK = 4_000_000  # resampled values held at once


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """``mean(a) - mean(b)`` over users with its bootstrap interval at ``level``.

    Returns ``a``, ``b`` (the means), ``diff``, ``ci`` ([low, high]), ``p_value``,
    ``users``, ``resamples``, ``seed`` and ``level``. With no users every figure is None.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"a and b must be per-user vectors of one length, got {a.shape}, {b.shape}"
        )
    if resamples < 1:
        raise ValueError(f"resamples: must be at least 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level: must be between 0 and 1, got {level}")
    n = len(a)
    out: dict[str, Any] = {"users": n, "resamples": resamples, "seed": seed, "level": level}
    if n == 0:
        return {**out, "a": None, "b": None, "diff": None, "ci": [None, None], "p_value": None}
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, resamples, step):
        m = min(step, resamples - start)
        means[start : start + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    p = 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0)))
    return {
        **out,
        "a": float(a.mean()),
        "b": float(b.mean()),
        "diff": float(d.mean()),
        "ci": [float(low), float(high)],
        "p_value": min(1.0, p),
    }

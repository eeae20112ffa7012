"""Train / test splits of an interaction log for offline evaluation.

Four protocols (``--protocol``):

``temporal`` (default)
    Per-user temporal hold-out: each user's interactions are ordered by timestamp (file
    order breaks ties) and the newest ``fraction`` of them is held out as test —
    ``round(fraction * n)`` rows, at least 1 and at most ``n - 1``. Users with fewer
    than 2 interactions stay entirely in train. Every user's test rows are therefore no
    older than that user's newest training row (no leakage from the future of a user).
``random``
    Per-user random hold-out: the same number of rows per user as ``temporal``, drawn
    uniformly from the user's rows by a generator seeded with ``seed`` (same seed, same
    split). Ignores time, so a test row may be older than training rows: the classic
    protocol, optimistic for anything that models recency.
``loo``
    Leave-last-one-out: each user with at least 2 interactions has exactly their newest
    row held out (file order breaks timestamp ties), the usual protocol for sequential
    recommenders.
``time``
    Global time cut: rows with ``timestamp < cut`` are train, the others test. ``cut`` is
    given (``cut_time``) or the ``quantile`` of all timestamps (0.8 by default). Users
    first seen after the cut have no training history at all (the cold-user case).

:func:`validation_split` carves a validation split out of a split's *train* part with
the same protocol (for the time cut: the same quantile of the training timestamps), so
λ and fusion weights are tuned without looking at the test part.

Test sets (:func:`held_out_items`) are the *distinct* items of a user's test rows that the
user has no training row for: re-consumed items are excluded from every recommendation
(the engine excludes the history), so they could never be hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from recall_engine.offline.data.interactions import Interactions

__all__ = [
    "PROTOCOLS",
    "DEFAULT_QUANTILE",
    "DEFAULT_TEST_FRACTION",
    "Split",
    "leave_last_out_split",
    "make_split",
    "random_split",
    "temporal_split",
    "held_out_items",
    "time_split",
    "validation_split",
]

DEFAULT_TEST_FRACTION = 0.2
DEFAULT_QUANTILE = 0.8
SplitKind = Literal["temporal", "random", "loo", "time"]
PROTOCOLS: tuple[str, ...] = ("temporal", "random", "loo", "time")


@dataclass(slots=True, frozen=True, eq=False)
class Split:
    """A train / test partition of one log. ``params`` records how it was made
    (protocol, fraction or cut) for the report; ``split_again`` makes the same kind of
    split of another log (the validation split)."""

    train: Interactions
    test: Interactions
    kind: SplitKind
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Sizes and parameters, JSON-ready."""
        return {
            "kind": self.kind,
            **self.params,
            "train_rows": len(self.train),
            "test_rows": len(self.test),
            "train_users": int(len(self.train.users())),
            "test_users": int(len(self.test.users())),
        }


def _per_user_positions(data: Interactions, key: np.ndarray) -> tuple[np.ndarray, ...]:
    """One stable sort over (user, ``key``): ``order`` (rows per user by key, file order
    on ties), each sorted row's user row count ``n`` and 1-based position from the
    user's end (1 = the last)."""
    _, codes, counts = np.unique(data.user_ids, return_inverse=True, return_counts=True)
    order = np.lexsort((key, codes))
    n = counts[codes[order]]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    from_end = n - (np.arange(len(order)) - starts[codes[order]])
    return order, n, from_end


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"test fraction must be between 0 and 1 (exclusive), got {fraction}")


def temporal_split(data: Interactions, fraction: float = DEFAULT_TEST_FRACTION) -> Split:
    """Hold out the newest ``fraction`` of every user's interactions (see module doc)."""
    _check_fraction(fraction)
    is_test = np.zeros(len(data), dtype=bool)
    if len(data):
        # rows per user oldest first, file order on ties (the order of Interactions.by_user)
        order, n, from_end = _per_user_positions(data, data.timestamps)
        n_test = np.clip(np.rint(fraction * n).astype(np.int64), 1, n - 1)
        is_test[order] = (n >= 2) & (from_end <= n_test)
    return Split(
        data.subset(~is_test), data.subset(is_test), "temporal", {"test_fraction": fraction}
    )


def random_split(
    data: Interactions, fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
) -> Split:
    """Hold out a seeded random ``fraction`` of every user's interactions (module doc)."""
    _check_fraction(fraction)
    is_test = np.zeros(len(data), dtype=bool)
    if len(data):
        # the same counts as temporal_split, on a random order within each user
        key = np.random.default_rng(seed).permutation(len(data))
        order, n, from_end = _per_user_positions(data, key)
        n_test = np.clip(np.rint(fraction * n).astype(np.int64), 1, n - 1)
        is_test[order] = (n >= 2) & (from_end <= n_test)
    return Split(
        data.subset(~is_test),
        data.subset(is_test),
        "random",
        {"test_fraction": fraction, "seed": seed},
    )


def leave_last_out_split(data: Interactions) -> Split:
    """Hold out each user's newest interaction (users with at least 2; module doc)."""
    is_test = np.zeros(len(data), dtype=bool)
    if len(data):
        order, n, from_end = _per_user_positions(data, data.timestamps)
        is_test[order] = (n >= 2) & (from_end == 1)
    return Split(data.subset(~is_test), data.subset(is_test), "loo", {"test_per_user": 1})


def time_split(
    data: Interactions, cut_time: int | None = None, quantile: float = DEFAULT_QUANTILE
) -> Split:
    """Rows before ``cut_time`` (default: the ``quantile`` of all timestamps) are train."""
    if not data.has_timestamps:
        raise ValueError(
            "a time split needs timestamps; this log has none "
            "(use the temporal split, which falls back to file order)"
        )
    params: dict[str, Any] = {}
    if cut_time is None:
        if not 0 < quantile < 1:
            raise ValueError(f"cut quantile must be between 0 and 1 (exclusive), got {quantile}")
        if len(data) == 0:
            raise ValueError("can't place a time cut in an empty log")
        cut_time = int(np.quantile(data.timestamps, quantile, method="higher"))
        params["quantile"] = quantile
    is_test = data.timestamps >= cut_time
    params["cut_time"] = int(cut_time)
    params["test_share"] = float(is_test.mean()) if len(data) else 0.0
    return Split(data.subset(~is_test), data.subset(is_test), "time", params)


def make_split(
    data: Interactions,
    kind: SplitKind = "temporal",
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    cut_time: int | None = None,
    quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
) -> Split:
    """The split the CLI names (``--protocol``): one of :data:`PROTOCOLS`."""
    if kind == "temporal":
        return temporal_split(data, test_fraction)
    if kind == "random":
        return random_split(data, test_fraction, seed)
    if kind == "loo":
        return leave_last_out_split(data)
    if kind == "time":
        return time_split(data, cut_time, quantile)
    raise ValueError(f"unknown protocol {kind!r}: use one of {', '.join(PROTOCOLS)}")


def validation_split(split: Split) -> Split:
    """A split of ``split.train`` made the same way: the per-user newest fraction, a
    random fraction (with the next seed), the newest row, or for a time cut the same
    quantile of the training timestamps (for an explicit cut time, the quantile that
    holds out the same share of rows as the outer split)."""
    if split.kind == "temporal":
        return temporal_split(split.train, split.params["test_fraction"])
    if split.kind == "random":
        return random_split(split.train, split.params["test_fraction"], split.params["seed"] + 1)
    if split.kind == "loo":
        return leave_last_out_split(split.train)
    quantile = split.params.get("quantile")
    if quantile is None:  # an explicit cut: hold out the same share of the training rows
        quantile = min(max(1.0 - split.params["test_share"], 0.05), 0.95)
    return time_split(split.train, None, quantile)


def held_out_items(split: Split) -> dict[str, set[str]]:
    """Per user with something to find: the distinct test items not in their train rows."""
    seen: dict[str, set[str]] = {}
    for u, i in zip(split.train.user_ids.tolist(), split.train.item_ids.tolist(), strict=True):
        seen.setdefault(u, set()).add(i)
    out: dict[str, set[str]] = {}
    for u, i in zip(split.test.user_ids.tolist(), split.test.item_ids.tolist(), strict=True):
        if i not in seen.get(u, ()):
            out.setdefault(u, set()).add(i)
    return out

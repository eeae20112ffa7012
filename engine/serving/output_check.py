"""Distrust channel output: the engine checks every answer before fusion.

A channel is a plugin; its answer may be anything. One bad list (NaN or infinite scores,
scores not parallel to the ids, ids that are not strings, duplicates) must cost only
that channel's part of the response, not the request: :func:`check_answer` names the
problem and the engine reports the channel ``ERROR`` (DESIGN decision 12).

Cheap on purpose, it runs on every channel answer: the scores are checked with numpy
in one pass, the ids with two C-level passes (a join that fails on anything but a str,
then a set for duplicates): about 10 µs per 200-item answer.
``bench/overload.py --check-cost`` measures it per request.
"""

from __future__ import annotations

import numpy as np

from recall_engine.sdk.types import Candidates
from recall_engine.serving.fusion import checked_ranks

__all__ = ["BadOutput", "check_answer"]

_NUMERIC = frozenset("fiub")


class BadOutput(ValueError):
    """A channel's answer breaks the contract; the message says how."""


def check_answer(answer: object, k: int | None, *, unique: bool = True) -> Candidates:
    """``answer`` as :class:`Candidates` with float32 scores and at most ``k`` entries
    (``None``: as many as it has), or :class:`BadOutput` naming what is wrong.

    ``unique``: duplicates are an error (a channel that vouches for its output, e.g.
    ``trusted_output``); otherwise the engine's repair step removes them."""
    if not isinstance(answer, Candidates):
        raise BadOutput(f"recall returned {type(answer).__name__}, not Candidates")
    ids = answer.item_ids
    try:
        n = len(ids)
        scores = np.asarray(answer.scores)
    except Exception as e:  # noqa: BLE001 - whatever the plugin put there
        raise BadOutput(f"unreadable answer: {type(e).__name__}: {e}") from None
    if scores.shape != (n,):
        raise BadOutput(f"{n} item ids but scores of shape {scores.shape}")
    if scores.dtype.kind not in _NUMERIC:
        raise BadOutput(f"scores must be numbers, got dtype {scores.dtype}")
    ranks = _checked_ranks(answer.ranks, n)
    if n == 0:
        return Candidates((), scores.astype(np.float32, copy=False))
    scores = scores.astype(np.float32, copy=False)
    finite = np.isfinite(scores)
    if not finite.all():
        bad = int(n - np.count_nonzero(finite))
        raise BadOutput(f"{bad} of {n} scores are not finite (NaN or infinite)")
    _check_ids(ids, n, unique)
    if k is not None and n > k:
        return Candidates(ids[:k], scores[:k], None if ranks is None else ranks[:k])
    return Candidates(ids, scores, ranks)


def _checked_ranks(ranks: object, n: int) -> np.ndarray | None:
    """``Candidates.ranks`` as int64 (None stays None), or :class:`BadOutput`."""
    try:
        return checked_ranks(ranks, n)
    except Exception as e:  # noqa: BLE001 - whatever the plugin put there
        raise BadOutput(f"{n} item ids, ranks: {e}") from None


def _check_ids(ids, n: int, unique: bool) -> None:
    if isinstance(ids, str | bytes):
        raise BadOutput(f"item ids must be a sequence of strings, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray) and ids.dtype.kind != "O":
        if ids.dtype.kind != "U":
            raise BadOutput(f"item ids must be strings, got an array of {ids.dtype}")
    else:
        try:
            # join checks every element is a str (subclasses too) in one C loop, ~4x
            # faster than collecting their types
            "".join(ids)
        except TypeError:
            wrong = sorted({type(i).__name__ for i in ids if not isinstance(i, str)})
            raise BadOutput(f"item ids must be strings, got {', '.join(wrong)}") from None
    if unique and len(set(ids)) != n:
        raise BadOutput(f"{n - len(set(ids))} duplicate item ids")

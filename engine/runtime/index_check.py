"""A loaded index answers sanely before it serves (DESIGN decision 14).

The bundle's digests say its files are the ones the build wrote; this says that what
was loaded from them works: a sample of the stored vectors is searched, and every answer
must be non-empty, with finite scores and ids the index knows. A reload that fails it is
refused and the old version keeps serving.
"""

from __future__ import annotations

import numpy as np

from recall_engine.runtime.index import VectorIndex

#: Stored vectors searched per check: a few milliseconds whatever the index size.
SELF_CHECK_SAMPLE = 16


class IndexCheckError(ValueError):
    """The loaded index failed its self-check; the message names the index and why."""


def check_index(index: VectorIndex, where: str, *, sample: int = SELF_CHECK_SAMPLE) -> int:
    """Search ``sample`` stored vectors (spread evenly over the ids) in ``index``;
    raise :class:`IndexCheckError` naming ``where`` on the first bad answer. Returns how
    many were checked."""
    picked = index.sample_ids(sample)
    if not picked:
        return 0
    vectors, found = index.vectors(picked)
    if len(found) != len(picked):
        missing = [picked[i] for i in sorted(set(range(len(picked))) - set(found))]
        raise IndexCheckError(f"{where}: no stored vector for ids {missing[:5]}")
    if not np.isfinite(vectors).all():
        raise IndexCheckError(f"{where}: stored vectors hold NaN or infinite values")
    answers = index.search(vectors, min(10, len(index)))
    for item, (got, scores) in zip(picked, answers, strict=True):
        if not got:
            raise IndexCheckError(f"{where}: the stored vector of {item!r} finds nothing")
        if not np.isfinite(np.asarray(scores, dtype=np.float64)).all():
            raise IndexCheckError(f"{where}: non-finite scores searching {item!r}")
        unknown = [g for g in got if g not in index]
        if unknown:
            raise IndexCheckError(f"{where}: searching {item!r} returned unknown ids {unknown[:5]}")
    return len(picked)

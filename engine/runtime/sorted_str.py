"""Ids looked up in a sorted numpy ``str`` column (often memory-mapped from an ``.npz``),
many at once, instead of a dict of them held by every process."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["find_sorted"]


def find_sorted(column: np.ndarray, items: Sequence[str]) -> np.ndarray:
    """int64 position of each of ``items`` in ``column`` (a sorted, unique ``<U``
    array), -1 for one that is not there. numpy's ``str`` arrays drop trailing NULs and
    the column's width cuts longer ids: such an id is not there, whatever its cut form
    matches."""
    n = len(items)
    if not n or not len(column):
        return np.full(n, -1, dtype=np.int64)
    keys = np.asarray(list(items), dtype=str)
    lengths = np.char.str_len(keys)
    exact = lengths == np.fromiter(map(len, items), np.int64, n)
    exact &= lengths <= column.dtype.itemsize // 4  # UCS-4
    keys = keys.astype(column.dtype)
    pos = np.minimum(np.searchsorted(column, keys), len(column) - 1)
    return np.where((column[pos] == keys) & exact, pos, -1).astype(np.int64)

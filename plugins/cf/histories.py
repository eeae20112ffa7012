"""Item vocabulary and user histories as index arrays (NumPy only: build and serve).

The vocabulary is every item that has at least one training interaction, sorted by id;
its position is the item's *index* everywhere in the channel (neighbour lists, the
popularity column, the rows of the item tower). The two-tower model reserves id 0 for
padding, so its embedding row for index ``i`` is ``i + 1`` (:data:`PAD`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from recall_engine.runtime.sorted_str import find_sorted

VOCAB_FILE = "vocab.npz"
PAD = 0
SECONDS_PER_DAY = 86_400.0


class VocabIds(Sequence[str]):
    """Item ids by index, over one str array sorted by id (mapped read-only from
    ``vocab.npz`` when served, so a host's processes share it: a list of a million ids
    and a dict over them cost ≈ 150 MiB per process). An int gives the id, a slice a
    list; :meth:`take` turns many indices into ids in one step."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return list(self.array[i].tolist())
        return str(self.array[i])

    def __iter__(self) -> Iterator[str]:
        return iter(self.array.tolist())

    def take(self, indices: np.ndarray) -> list[str]:
        """The ids at ``indices``, in their order."""
        return list(self.array[indices].tolist())


class VocabIndex(Mapping[str, int]):
    """Item id -> index, by binary search over the sorted ids of a :class:`VocabIds`
    (nothing per id in the process). :meth:`positions` looks up many ids at once."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def positions(self, items: Sequence[str]) -> np.ndarray:
        """int64 index of each of ``items``, -1 for one not in the vocabulary."""
        return find_sorted(self.array, items)

    def get(self, item: object, default: Any = None) -> Any:
        if not isinstance(item, str):
            return default
        p = int(self.positions([item])[0])
        return p if p >= 0 else default

    def __getitem__(self, item: str) -> int:
        p = self.get(item)
        if p is None:
            raise KeyError(item)
        return int(p)

    def __contains__(self, item: object) -> bool:
        return self.get(item) is not None

    def __len__(self) -> int:
        return len(self.array)

    def __iter__(self) -> Iterator[str]:
        return iter(self.array.tolist())


@dataclass(slots=True, frozen=True, eq=False)
class Vocab:
    """``ids``: item ids by index; ``index``: item id -> index; ``counts``: training
    interactions per item. The ids are sorted (``np.unique`` made them), which is what
    lets ``index`` search them instead of holding a dict."""

    ids: VocabIds
    index: VocabIndex
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_ids(cls, ids: Sequence[str] | np.ndarray, counts: np.ndarray) -> Vocab:
        array = ids.array if isinstance(ids, VocabIds) else np.asarray(list(ids), dtype=str)
        return cls._of(array, np.asarray(counts, dtype=np.float32), "ids")

    @classmethod
    def _of(cls, array: np.ndarray, counts: np.ndarray, where: str) -> Vocab:
        if array.ndim != 1 or (len(array) and array.dtype.kind != "U"):
            raise ValueError(f"{where}: not a one-dimensional str array")
        if len(array) > 1 and not bool(np.all(array[1:] > array[:-1])):
            raise ValueError(f"{where}: item ids not sorted and unique")
        if counts.shape != array.shape:
            raise ValueError(f"{where}: {len(counts)} counts for {len(array)} ids")
        return cls(VocabIds(array), VocabIndex(array), counts)

    def save(self, path: str | os.PathLike[str]) -> None:
        from recall_engine.runtime.npz_map import save_npz

        with open(path, "wb") as fh:
            save_npz(fh, ids=self.ids.array.astype(str), counts=self.counts)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        """``vocab.npz`` mapped read-only (shared by the host's processes); errors name
        the file."""
        from recall_engine.runtime.npz_map import map_npz

        arrays = map_npz(Path(path))
        missing = {"ids", "counts"} - set(arrays)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        counts = arrays["counts"]
        if counts.dtype != np.float32:
            counts = counts.astype(np.float32)
        return cls._of(arrays["ids"], counts, str(path))


@dataclass(slots=True, frozen=True, eq=False)
class TrainingLog:
    """The interactions as indices: ``users``/``items`` codes in (user, time) order,
    ``weights`` parallel, ``starts`` where each user's run begins (plus the end)."""

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    starts: np.ndarray
    n_users: int

    def sequences(self) -> list[np.ndarray]:
        """Each user's item indices, oldest first."""
        return np.split(self.items, self.starts[1:-1])


def training_log(interactions) -> tuple[Vocab, TrainingLog]:
    """Index ``interactions`` (a :class:`recall_engine.offline.data.interactions.Interactions`):
    sort by user, then time (file order breaks ties), and count items."""
    if len(interactions) == 0:
        raise ValueError("cf: no interactions to learn from")
    item_ids, items = np.unique(interactions.item_ids, return_inverse=True)
    _, users = np.unique(interactions.user_ids, return_inverse=True)
    order = np.lexsort((np.arange(len(users)), interactions.timestamps, users))
    users, items = users[order].astype(np.int64), items[order].astype(np.int64)
    weights = np.asarray(interactions.weights, dtype=np.float32)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(users)].astype(np.int64)
    counts = np.bincount(items, minlength=len(item_ids))
    vocab = Vocab.from_ids(item_ids.tolist(), counts)
    return vocab, TrainingLog(users, items, weights, starts, int(users.max()) + 1)


def known_history(
    vocab: Vocab, history: Sequence[str], limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, positions)`` of the newest ``limit`` distinct known items of
    ``history`` (oldest first), with their positions in ``history``. Unknown ids are
    dropped; a repeated item counts once, at its newest position."""
    found = vocab.index.positions(history).tolist()
    seen: set[int] = set()
    idx: list[int] = []
    pos: list[int] = []
    for p in range(len(history) - 1, -1, -1):
        i = found[p]
        if i < 0 or i in seen:
            continue
        seen.add(i)
        idx.append(i)
        pos.append(p)
        if len(idx) == limit:
            break
    return (np.asarray(idx[::-1], dtype=np.int64), np.asarray(pos[::-1], dtype=np.int64))


def recency_weights(
    positions: np.ndarray,
    n: int,
    half_life: float,
    timestamps: Sequence[int] = (),
    half_life_days: float = 0.0,
    events: Sequence[str] = (),
    event_weights: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Weight per kept history item: ``0.5 ** (age / half_life)``.

    Age is counted in seconds from the newest history item when the request carries
    ``timestamps`` and ``half_life_days > 0`` (so the weights do not depend on the
    server's clock), else in positions from the end of the history (newest: age 0).
    A half-life of 0 turns decay off. ``event_weights`` scales items by their event.
    """
    w = np.ones(len(positions), dtype=np.float64)
    if half_life_days > 0 and len(timestamps) == n and n:
        ts = np.asarray(timestamps, dtype=np.float64)
        age = (ts.max() - ts[positions]) / SECONDS_PER_DAY
        w = np.power(0.5, np.maximum(age, 0.0) / half_life_days)
    elif half_life > 0:
        w = np.power(0.5, (n - 1 - positions) / half_life)
    if event_weights and len(events) == n:
        w = w * np.asarray([event_weights.get(events[p], 1.0) for p in positions.tolist()])
    return w.astype(np.float32)


def pad_left(histories: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for the history encoder: ``ids`` int64 ``[B, length]`` holding
    ``index + 1`` right-aligned (newest last, :data:`PAD` on the left) and ``mask`` bool
    ``[B, length]``. Longer histories keep their newest ``length`` items."""
    ids = np.zeros((len(histories), length), dtype=np.int64)
    for row, h in enumerate(histories):
        h = h[-length:]
        if len(h):
            ids[row, length - len(h) :] = h + 1
    return ids, ids != PAD

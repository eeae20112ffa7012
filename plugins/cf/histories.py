"""Item vocabulary and user histories as index arrays (NumPy only: build and serve).

The vocabulary is every item that has at least one training interaction, sorted by id;
its position is the item's *index* everywhere in the channel (neighbour lists, the
popularity column, the rows of the item tower). The two-tower model reserves id 0 for
padding, so its embedding row for index ``i`` is ``i + 1`` (:data:`PAD`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

VOCAB_FILE = "vocab.npz"
PAD = 0
SECONDS_PER_DAY = 86_400.0


@dataclass(slots=True, frozen=True, eq=False)
class Vocab:
    """``ids``: item ids by index (a list, for cheap lookups of a few positions);
    ``index``: item id -> index; ``counts``: training interactions per item."""

    ids: list[str]
    index: Mapping[str, int]
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_ids(cls, ids: Sequence[str], counts: np.ndarray) -> Vocab:
        ids = list(map(sys.intern, ids))  # shared with the catalogue's (catalog.py)
        return cls(
            ids, {item: i for i, item in enumerate(ids)}, np.asarray(counts, dtype=np.float32)
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, ids=np.asarray(self.ids, dtype=str), counts=self.counts)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        with np.load(path, allow_pickle=False) as z:
            return cls.from_ids(z["ids"].tolist(), z["counts"])


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
    get = vocab.index.get
    seen: set[int] = set()
    idx: list[int] = []
    pos: list[int] = []
    for p in range(len(history) - 1, -1, -1):
        i = get(history[p])
        if i is None or i in seen:
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

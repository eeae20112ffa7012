"""The value types that cross every layer: a request as channels see it, a channel's
answer, a catalogue item, what ``ListChannels`` reports.

This module imports nothing from the engine, so the runtime (catalogue), serving and
offline layers and third-party plugins can all share these types without pulling in
each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Candidates",
    "ChannelInfo",
    "ColdItems",
    "Evidence",
    "ItemRecord",
    "NearItem",
    "Query",
]


@dataclass(slots=True, frozen=True)
class Query:
    """One user's request as every channel sees it (already validated).

    ``history`` holds item ids oldest first, newest last. ``events`` and
    ``timestamps`` are either empty or exactly as long as ``history``.
    ``exclude`` already contains the history items unless the caller asked to keep
    them. ``categories``, when non-empty, restricts results to items having at least
    one of them. Channels must honour ``exclude`` and ``categories`` (over-fetch, then
    filter; :meth:`Catalog.filter_mask` helps); the engine filters again as a safety net.
    """

    user_id: str = ""
    history: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    timestamps: tuple[int, ...] = ()
    text: str = ""
    exclude: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()


@dataclass(slots=True, frozen=True)
class Candidates:
    """A channel's answer: item ids best first and their raw scores (larger is better).

    ``scores`` is a float32 array as long as ``item_ids``, non-increasing. Scores keep
    the channel's own scale; fusion normalises them when it needs to. ``ranks``
    (optional, ``recall_cold`` answers): the 1-based positions the items would hold in
    the channel's full ranking for the query, exact or estimated, strictly increasing
    and each at least its position here; rank fusion uses them, so a new item the channel
    likes a lot outranks one it barely returned.
    """

    item_ids: Sequence[str]
    scores: np.ndarray
    ranks: np.ndarray | None = None

    @staticmethod
    def empty() -> Candidates:
        return Candidates((), np.zeros(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(slots=True, frozen=True, eq=False)
class ColdItems:
    """The catalogue's cold items at one moment (no interaction when the catalogue was
    built, or first seen less than the plan's ``cold_max_age_days`` before its log's
    end): ``ids`` sorted. ``token`` is new whenever the set changes, so a channel may
    key what it derives from the set (a matrix of their vectors) on it."""

    ids: tuple[str, ...]
    token: int
    _members: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_members", frozenset(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._members

    def mask(self, item_ids: Sequence[str]) -> np.ndarray:
        """Per id, whether it is one of these (a bool array)."""
        return np.fromiter(map(self._members.__contains__, item_ids), bool, len(item_ids))


@dataclass(slots=True, frozen=True)
class ChannelInfo:
    """What ``ListChannels`` reports about a loaded channel."""

    version: str = ""
    item_count: int = 0
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ItemRecord:
    """One catalogue item as given to ``upsert_items`` (and stored in the catalogue)."""

    item_id: str
    title: str = ""
    text: str = ""
    categories: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class NearItem:
    """A history item near a candidate; ``similarity`` on the measure the
    :class:`Evidence` names."""

    item_id: str
    similarity: float


@dataclass(slots=True, frozen=True)
class Evidence:
    """Why a channel returned one candidate (``Explainable.explain``); every field is
    optional, a channel fills what it knows.

    ``nearest``: the history items that pulled the candidate in, most similar first (at
    most three), measured by ``similarity`` (``"cosine"`` of stored vectors,
    ``"item2item"`` neighbour scores, ``"ease"`` weights). ``text_similarity``: the
    cosine of the query text's vector and the candidate's (None: no text was used), and
    ``text_weight`` the text's share of the query vector. ``popularity_rank``: 1-based
    rank in the popularity list (0: unknown) with its ``popularity_score``.
    ``two_tower_score``: the user vector's inner product with the candidate's (None: no
    two-tower model took part).
    """

    nearest: tuple[NearItem, ...] = ()
    similarity: str = ""
    text_similarity: float | None = None
    text_weight: float = 0.0
    popularity_rank: int = 0
    popularity_score: float = 0.0
    two_tower_score: float | None = None

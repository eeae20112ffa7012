"""Optional channel capabilities, as typed protocols.

A channel implements :class:`~recall_engine.sdk.channel.Channel`; these are what it
*may* add. The engine checks for them with ``isinstance`` once, where it needs them,
so a plugin declares a capability by defining the methods, with the signatures below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from recall_engine.sdk.types import Candidates, ColdItems, Evidence, ItemRecord, Query

if TYPE_CHECKING:
    from recall_engine.sdk.channel import BuildContext

__all__ = ["Buildable", "Explainable", "RecallsColdItems", "SupportsOnlineUpdates"]


@runtime_checkable
class Buildable(Protocol):
    """A channel class whose artifacts ``recall-engine build`` makes.

    ``build`` is a classmethod: it runs offline, without an instance, on the build
    machine (PyTorch may be imported here, never in ``recall``)."""

    @classmethod
    def build(cls, ctx: BuildContext) -> Mapping[str, Any] | None:
        """Write artifact files into ``ctx.out`` (an empty staging folder) from
        ``ctx.interactions`` and ``ctx.catalog``, and return manifest fields (``dims``,
        ``metric``, ``item_count``, ``build_params``, ``model_hashes``...). The build
        then seals the folder as a new artifact version (a digest per file) and points
        ``current`` at it. Raise with a message naming the problem; nothing is sealed
        then."""
        ...


@runtime_checkable
class SupportsOnlineUpdates(Protocol):
    """A channel that indexes catalogue changes online (``AdminService.UpsertItems`` /
    ``DeleteItems``). Channels without it are told nothing and keep serving their
    bundle; the catalogue still filters deleted items out of every answer.

    Called from the engine's admin thread, concurrently with ``recall``: guard the
    index with a lock. Changes must survive a restart (persist beside the artifacts)."""

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        """Add or replace ``items``; return how many this channel indexed (0 when it
        cannot index new items, e.g. collaborative filtering without interactions).
        Visible to the next ``recall``."""
        ...

    def delete_items(self, item_ids: Sequence[str]) -> int:
        """Remove ``item_ids``; return how many this channel removed. Visible to the
        next ``recall``."""
        ...


@runtime_checkable
class Explainable(Protocol):
    """A channel that can say why it returned a candidate (``RecallRequest.explain``).
    Channels without it still get the fusion arithmetic, and no evidence.

    Called only for requests that ask, after fusion, for the fused candidates this
    channel returned; from a worker thread, concurrently with ``recall``."""

    def explain(self, query: Query, item_ids: Sequence[str]) -> Mapping[str, Evidence]:
        """Evidence per item of ``item_ids`` (items this channel returned for ``query``,
        the same query ``recall`` got); an item it has nothing to say about may be left
        out. Cheap enough per request: a few lookups per item, no index search."""
        ...


@runtime_checkable
class RecallsColdItems(Protocol):
    """A channel that can search the catalogue's cold items alone (items without
    interactions, or younger than the plan's ``cold_max_age_days``).

    The fusion's cold quota keeps a few slots for new items. When the learned weights
    leave a text channel out of a request, the engine still asks it for new items (it
    *scouts*, serving/segment_weights.py), and only the cold items of its answer can
    reach the list. A channel with this capability is asked for those directly, which
    costs a fraction of a full search; the engine asks any other channel for its full
    list and keeps the cold items of it.

    Called from a worker thread, concurrently with ``recall``."""

    def recall_cold(self, query: Query, k: int, cold: ColdItems) -> Candidates | None:
        """The best ``k`` items of ``cold.ids`` for ``query``, best first, honouring
        ``query.exclude`` and ``query.categories`` as ``recall`` does, with the scores
        ``recall`` would give them and, best, the ranks ``recall``'s full ranking would
        give them (``Candidates.ranks``, exact or estimated; the engine keeps those
        ranked within ``k`` and fuses them at those ranks; without ranks, positions in
        this answer count). None: not cheaply here (a cold set too large to scan, say);
        the engine then calls ``recall`` and keeps its cold items."""
        ...

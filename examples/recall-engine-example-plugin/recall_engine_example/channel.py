"""``same_category``: items that share categories with the user's recent history.

Shows the whole channel contract: typed params (``Params``, checked at start-up), build state in
``load``, say which requests you can serve in ``accepts``, answer ``recall`` from many
threads at once, follow online catalogue updates, and (optional, ``RecallsColdItems``)
rank the catalogue's new items alone when the engine asks for them for the fusion's cold
slots.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recall_engine.sdk.channel import (
    Candidates,
    Channel,
    ChannelContext,
    ChannelInfo,
    ItemRecord,
    Query,
)
from recall_engine.sdk.params import PositiveInt
from recall_engine.sdk.types import ColdItems


@dataclass(slots=True, frozen=True, kw_only=True)
class SameCategoryParams:
    """``[channels.<name>.params]``, checked when the config loads (a typo or a bad value
    stops start-up naming the key)."""

    recent: PositiveInt = 5  # how many of the newest history items to follow


class SameCategoryChannel(Channel):
    Params = SameCategoryParams

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._recent = ctx.params_as(SameCategoryParams).recent
        self._by_category: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        by_cat: dict[str, list[str]] = defaultdict(list)
        for item in self.ctx.catalog:
            for c in item.categories:
                by_cat[c].append(item.item_id)
        self._by_category = {c: sorted(ids) for c, ids in by_cat.items()}

    def accepts(self, query: Query) -> bool:
        return bool(query.history)

    def _category_weights(self, query: Query) -> dict[str, float]:
        # newest history item weighs 1, the one before 1/2, then 1/3 ...
        cat_weight: dict[str, float] = defaultdict(float)
        for age, item_id in enumerate(reversed(query.history[-self._recent :])):
            for c in self.ctx.catalog.categories(item_id):
                cat_weight[c] += 1.0 / (age + 1)
        return cat_weight

    def recall(self, query: Query, k: int) -> Candidates:
        scores: dict[str, float] = defaultdict(float)
        for c, w in self._category_weights(query).items():
            for item_id in self._by_category.get(c, ()):
                scores[item_id] += w
        return self._best(scores, query, k)

    def recall_cold(self, query: Query, k: int, cold: ColdItems) -> Candidates:
        """Only the new items (``cold.ids``), scored as ``recall`` scores them: what the
        engine asks a channel for when it only scouts for the fusion's cold slots."""
        weights, catalog = self._category_weights(query), self.ctx.catalog
        scores = {i: sum(weights.get(c, 0.0) for c in catalog.categories(i)) for i in cold.ids}
        return self._best({i: s for i, s in scores.items() if s > 0}, query, k)

    def _best(self, scores: dict[str, float], query: Query, k: int) -> Candidates:
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = self.ctx.catalog.filter_mask([i for i, _ in ranked], query)
        out = [(i, s) for (i, s), ok in zip(ranked, keep, strict=True) if ok][:k]
        return Candidates([i for i, _ in out], np.asarray([s for _, s in out], np.float32))

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        with self._lock:  # copy-on-write: readers keep the dict they started with
            by_cat = {c: list(ids) for c, ids in self._by_category.items()}
            for item in items:
                for ids in by_cat.values():
                    if item.item_id in ids:
                        ids.remove(item.item_id)
                for c in item.categories:
                    by_cat.setdefault(c, []).append(item.item_id)
            self._by_category = {c: sorted(ids) for c, ids in by_cat.items()}
        return len(items)

    def info(self) -> ChannelInfo:
        return ChannelInfo(
            version="builtin",
            item_count=len(self.ctx.catalog),
            details={"categories": str(len(self._by_category))},
        )

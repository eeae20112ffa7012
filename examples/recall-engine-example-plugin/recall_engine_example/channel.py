"""``same_category``: items that share categories with the user's recent history.

Shows the whole channel contract: typed params (``Params``, checked at start-up), build state in
``load``, say which requests you can serve in ``accepts``, answer ``recall`` from many
threads at once, and follow online catalogue updates.
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

    def recall(self, query: Query, k: int) -> Candidates:
        catalog, by_category = self.ctx.catalog, self._by_category
        # newest history item weighs 1, the one before 1/2, then 1/3 ...
        cat_weight: dict[str, float] = defaultdict(float)
        for age, item_id in enumerate(reversed(query.history[-self._recent :])):
            for c in catalog.categories(item_id):
                cat_weight[c] += 1.0 / (age + 1)
        scores: dict[str, float] = defaultdict(float)
        for c, w in cat_weight.items():
            for item_id in by_category.get(c, ()):
                scores[item_id] += w
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        ids = [i for i, _ in ranked]
        keep = catalog.filter_mask(ids, query)
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

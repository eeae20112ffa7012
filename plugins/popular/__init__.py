"""``popular``: most-interacted items, optionally per category.

The fallback channel: it needs no history, so it serves anonymous and brand-new users,
and it exists before any learned channel has been built. Scores are interaction counts
(weighted, optionally time-decayed with ``half_life_days``).

Artifact (``ARTIFACTS/popular/<version>/popular.npz``): ``ids`` (str, best first),
``scores`` (float32), and per category ``cat:<name>`` (int32 positions into ``ids``).

Params: ``half_life_days`` (build time; 0: no decay). Category filters need none: the
artifact always holds the per-category lists.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.catalog_columns import BaseRows
from recall_engine.runtime.npz_map import map_npz, save_npz
from recall_engine.sdk.channel import (
    BuildContext,
    Candidates,
    Channel,
    ChannelContext,
    ChannelInfo,
    Query,
)
from recall_engine.sdk.params import NonNegativeFloat
from recall_engine.sdk.types import Evidence

ARTIFACT = "popular.npz"


@dataclass(slots=True, frozen=True)
class PopularParams:
    """``[channels.<name>.params]`` of the popular channel."""

    half_life_days: NonNegativeFloat = 0.0  # interaction weight halves every this many days


def popularity(
    item_ids: np.ndarray,
    weights: np.ndarray | None = None,
    timestamps: np.ndarray | None = None,
    half_life_days: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids best first, scores): weighted interaction counts with optional decay."""
    uniq, inv = np.unique(np.asarray(item_ids).astype(str), return_inverse=True)
    w = np.ones(len(inv)) if weights is None else np.asarray(weights, dtype=np.float64)
    if half_life_days > 0 and timestamps is not None and len(timestamps):
        age_days = (np.max(timestamps) - np.asarray(timestamps)) / 86400.0
        w = w * np.power(0.5, age_days / half_life_days)
    scores = np.bincount(inv, weights=w, minlength=len(uniq))
    order = np.lexsort((uniq, -scores))  # score desc, id asc: deterministic
    return uniq[order], scores[order].astype(np.float32)


def write_artifact(folder: Path, ids: np.ndarray, scores: np.ndarray, catalog: Catalog) -> Path:
    arrays: dict[str, np.ndarray] = {"ids": ids.astype(str), "scores": scores}
    by_cat: dict[str, list[int]] = {}
    for pos, item in enumerate(ids):
        for c in catalog.categories(str(item)):
            by_cat.setdefault(c, []).append(pos)
    for c, positions in by_cat.items():
        arrays[f"cat:{c}"] = np.asarray(positions, dtype=np.int32)
    path = folder / ARTIFACT
    with open(path, "wb") as fh:
        save_npz(fh, **arrays)
    return path


def union_head(parts: Sequence[np.ndarray], n: int) -> np.ndarray:
    """The ``n`` smallest values of the union of the ascending arrays ``parts``. Each of
    them ranks below ``n`` in its own array, so the arrays' first ``n`` entries suffice."""
    if len(parts) == 1:
        return parts[0][:n]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate([p[:n] for p in parts]))[:n]


class PopularChannel(Channel):
    trusted_output = True  # filters by the catalogue itself (recall_engine.sdk.testing)
    Params = PopularParams

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.params = ctx.params_as(PopularParams)
        # best first; mapped read-only from the bundle (shared by every process of the
        # host): a list of a million str objects cost ≈ 60 MiB per process
        self._ids: np.ndarray = np.zeros(0, dtype="U1")
        self._scores = np.zeros(0, dtype=np.float32)
        self._by_cat: dict[str, np.ndarray] = {}
        # the list's rows in the catalogue's mapped columns, found once at load, so the
        # filter of every request reads them instead of searching for each id
        self._catalog_rows: BaseRows | None = None
        self._version = ""

    @classmethod
    def build(cls, ctx: BuildContext) -> dict[str, Any]:
        """Popularity over ``ctx.interactions``, written into ``ctx.out``."""
        data = ctx.interactions
        half_life = ctx.params_as(PopularParams).half_life_days
        ids, scores = popularity(
            data.item_ids, data.weights, data.timestamps if data.has_timestamps else None, half_life
        )
        write_artifact(ctx.out, ids, scores, ctx.catalog)
        return {"item_count": len(ids), "build_params": {"half_life_days": half_life}}

    def load(self) -> None:
        bundle = self.ctx.open_bundle()
        arrays = map_npz(bundle.file(ARTIFACT))
        self._ids = arrays["ids"]
        scores = arrays["scores"]
        self._scores = scores if scores.dtype == np.float32 else scores.astype(np.float32)
        self._by_cat = {k[4:]: v for k, v in arrays.items() if k.startswith("cat:")}
        self._catalog_rows = self.ctx.catalog.base_rows(self._ids.tolist())
        self._version = bundle.version

    def recall(self, query: Query, k: int) -> Candidates:
        ids, scores = self._ids, self._scores
        parts = None
        if query.categories:
            parts = [self._by_cat[c] for c in query.categories if c in self._by_cat]
        # The catalogue filter (excludes, deleted items: they leave the catalogue, and
        # categories as the catalogue has them now: an upsert may have changed them)
        # runs on a slice just long enough when nothing is deleted, widened while short.
        # With categories the slice comes from the head of each category's list, never
        # from a union of whole lists (a large category holds most of the catalogue).
        filter_mask, rows = self.ctx.catalog.filter_mask, self._catalog_rows
        out: list[int] = []
        start, want = 0, k + len(query.exclude)
        while len(out) < k:
            end = start + want
            if parts is None:
                stop = min(end, len(ids))
                chunk: Sequence[int] = range(start, stop)
                at, names = np.arange(start, stop), ids[start:stop]
            else:
                at = union_head(parts, end)[start:]
                chunk, names = at.tolist(), ids[at]
            if not len(chunk):
                break
            mask = filter_mask(names.tolist(), query, rows=(rows, at))
            out.extend(pos for pos, keep in zip(chunk, mask, strict=True) if keep)
            start += len(chunk)
            want = 2 * want
        out = out[:k]
        return Candidates(ids[out].tolist(), scores[out])

    def delete_items(self, item_ids: Sequence[str]) -> int:
        """Deleted items leave the shared catalogue, which :meth:`recall` checks."""
        if not len(item_ids) or not len(self._ids):
            return 0
        asked = np.asarray(list(item_ids), dtype=str)
        return int(np.isin(asked, self._ids).sum())

    def info(self) -> ChannelInfo:
        return ChannelInfo(
            version=self._version,
            item_count=len(self._ids),
            details={"categories": str(len(self._by_cat))},
        )

    def explain(self, query: Query, item_ids: Sequence[str]) -> dict[str, Evidence]:
        """``Explainable``: each item's 1-based rank in the whole popularity list and its
        score (the weighted, optionally decayed, interaction count)."""
        rank_of = self._rank_of
        return {
            i: Evidence(
                popularity_rank=rank_of[i] + 1, popularity_score=float(self._scores[rank_of[i]])
            )
            for i in item_ids
            if i in rank_of
        }

    @functools.cached_property
    def _rank_of(self) -> dict[str, int]:
        # built on the first explain, never on the recall path
        return {item: pos for pos, item in enumerate(self._ids.tolist())}

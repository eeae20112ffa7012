"""The shipped contract suite (recall_engine.sdk.testing) catches what it says it
catches: small reference channels pass every check, and each deliberately broken
variant fails the check for its fault, with a message that names it."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest

from recall_engine.runtime.artifacts import ArtifactStore
from recall_engine.sdk.channel import Candidates, Channel, ChannelInfo, ItemRecord, Query
from recall_engine.sdk.testing import (
    ChannelContract,
    VectorChannelContract,
    channel_context,
    open_channel,
)
from recall_engine.sdk.types import ColdItems
from recall_engine.sdk.vector_channel import VectorChannel, write_vectors

CATS = ("jazz", "space", "cooking", "finance")
ITEMS = [
    ItemRecord(f"i{n:03d}", f"Item {n}", categories=(CATS[n % 4], *(("x",) if n % 5 == 0 else ())))
    for n in range(120)
]
QUERIES = [
    Query(history=("i010", "i040"), exclude=frozenset({"i010", "i040"})),
    Query(user_id="u2", history=("i077",)),
    Query(history=("no-such-item", "i100")),
]


# -- a reference channel and its broken variants ---------------------------------------


class Ranked(Channel):
    """Items nearest (by number) to the newest known history item, filtered by the live
    catalogue: keeps every promise of the contract."""

    trusted_output = True

    def load(self) -> None:
        self._ready = True

    def accepts(self, query: Query) -> bool:
        return True

    def anchor(self, query: Query) -> int:
        known = [i for i in query.history if i in self.ctx.catalog]
        return int(known[-1][1:]) if known else 0

    def ranked(self, query: Query, anchor: int) -> list[tuple[float, str]]:
        catalog = self.ctx.catalog
        ids = catalog.ids()
        kept = [i for i, ok in zip(ids, catalog.filter_mask(ids, query), strict=True) if ok]
        scored = [(1.0 / (1 + abs(_number(i) - anchor)), i) for i in kept]
        return sorted(scored, key=lambda t: (-t[0], t[1]))

    def recall(self, query: Query, k: int) -> Candidates:
        top = self.ranked(query, self.anchor(query))[:k]
        return Candidates([i for _, i in top], np.asarray([s for s, _ in top], np.float32))

    def recall_cold(self, query: Query, k: int, cold: ColdItems) -> Candidates:
        top = [(s, i) for s, i in self.ranked(query, self.anchor(query)) if i in cold][:k]
        return Candidates([i for _, i in top], np.asarray([s for s, _ in top], np.float32))

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        return len({it.item_id for it in items})

    def delete_items(self, item_ids: Sequence[str]) -> int:
        return sum(1 for i in set(item_ids) if i in self.ctx.catalog)

    def info(self) -> ChannelInfo:
        return ChannelInfo("v1", len(self.ctx.catalog), {"kind": "reference"})


def _number(item_id: str) -> int:
    return int(item_id[1:]) if item_id[1:].isdigit() else 10_000


class IgnoresExclude(Ranked):
    def ranked(self, query, anchor):
        return super().ranked(replace(query, exclude=frozenset()), anchor)


class IgnoresCategories(Ranked):
    def ranked(self, query, anchor):
        return super().ranked(replace(query, categories=frozenset()), anchor)


class Duplicates(Ranked):
    def recall(self, query, k):
        got = super().recall(query, k)
        if len(got) < 2:
            return got
        ids = [*got.item_ids[:-1], got.item_ids[0]]
        return Candidates(ids, np.asarray(got.scores))


class OneTooMany(Ranked):
    def recall(self, query, k):
        return super().recall(query, k + 1)


class UnknownIds(Ranked):
    def recall(self, query, k):
        got = super().recall(query, k)
        return Candidates(["ghost", *got.item_ids[1:]], np.asarray(got.scores))


class NanScore(Ranked):
    def recall(self, query, k):
        got = super().recall(query, k)
        scores = np.asarray(got.scores).copy()
        scores[-1] = np.nan
        return Candidates(got.item_ids, scores)


class RisingScores(Ranked):
    def recall(self, query, k):
        got = super().recall(query, k)
        return Candidates(got.item_ids, np.asarray(got.scores)[::-1].copy())


class BatchOutOfOrder(Ranked):
    def recall_batch(self, queries, k):
        return super().recall_batch(queries, k)[::-1]


class SharedRequestState(Ranked):
    """Keeps the request in ``self`` between two steps: threads see each other's."""

    def recall(self, query, k):
        self._current = query
        time.sleep(0.001)  # a window in which another thread's request replaces ours
        return super().recall(self._current, k)


class NonStringDetails(Ranked):
    def info(self):
        return ChannelInfo("v1", len(self.ctx.catalog), {"items": len(self.ctx.catalog)})


class CloseBreaksOtherInstances(Ranked):
    """A process-wide table that any instance's ``close`` empties."""

    shared: ClassVar[dict[str, int]] = {}

    def load(self):
        type(self).shared.update((it.item_id, 1) for it in self.ctx.catalog)

    def ranked(self, query, anchor):
        return [t for t in super().ranked(query, anchor) if t[1] in type(self).shared]

    def close(self):
        type(self).shared.clear()


class CatalogueSnapshot(Ranked):
    """Filters by the catalogue as it was at load: deletes never reach it."""

    def load(self):
        self._known = frozenset(self.ctx.catalog.ids())

    def ranked(self, query, anchor):
        scored = ((1.0 / (1 + abs(_number(i) - anchor)), i) for i in self._known)
        kept = [
            t
            for t in scored
            if t[1] not in query.exclude
            and (
                not query.categories
                or not query.categories.isdisjoint(self.ctx.catalog.categories(t[1]))
            )
        ]
        return sorted(kept, key=lambda t: (-t[0], t[1]))


class RaisesOnUnknownHistory(Ranked):
    def anchor(self, query):
        return int(query.history[-1][1:]) if query.history else 0


class ColdIsAnyItem(Ranked):
    def recall_cold(self, query, k, cold):
        return self.recall(query, k)


class OverCountsUpserts(Ranked):
    def upsert_items(self, items):
        return 2 * len(items) + 1


def run_check(contract: type[ChannelContract], check: str, channel: Channel) -> None:
    probe = type("OneCheck", (contract,), {})
    args = {"channel": channel, "queries": QUERIES}
    wanted = inspect.signature(getattr(probe, check)).parameters
    try:
        getattr(probe(), check)(**{k: v for k, v in args.items() if k in wanted})
    finally:
        probe.teardown_class()


@pytest.fixture(scope="module")
def channel():
    ch = open_channel(Ranked, channel_context(ITEMS, name="ranked"))
    yield ch
    ch.close()


@pytest.fixture()
def queries():
    return QUERIES


class TestReferenceChannelPassesTheContract(ChannelContract):
    pass


CHECKS = [
    (IgnoresExclude, "test_excluded_ids_never_come_back", AssertionError, "excluded ids came back"),
    (IgnoresExclude, "test_history_items_in_exclude_never_come_back", AssertionError, "history"),
    (
        IgnoresCategories,
        "test_category_filter_keeps_only_items_of_those_categories",
        AssertionError,
        "outside",
    ),
    (
        IgnoresCategories,
        "test_unusual_queries_are_declined_or_answered_never_raise",
        AssertionError,
        "no item has",
    ),
    (
        Duplicates,
        "test_answers_hold_at_most_k_distinct_ids_of_catalogue_items",
        AssertionError,
        "duplicate ids",
    ),
    (
        OneTooMany,
        "test_answers_hold_at_most_k_distinct_ids_of_catalogue_items",
        AssertionError,
        "candidates for k=1",
    ),
    (
        UnknownIds,
        "test_answers_hold_at_most_k_distinct_ids_of_catalogue_items",
        AssertionError,
        "not in the catalogue",
    ),
    (NanScore, "test_scores_are_finite_floats_best_first", AssertionError, "not finite"),
    (RisingScores, "test_scores_are_finite_floats_best_first", AssertionError, "scores rise"),
    (BatchOutOfOrder, "test_recall_batch_agrees_with_recall", AssertionError, "recall_batch"),
    (
        SharedRequestState,
        "test_concurrent_calls_give_the_answers_of_sequential_ones",
        AssertionError,
        "changed under concurrency",
    ),
    (
        NonStringDetails,
        "test_info_reports_a_version_an_item_count_and_string_details",
        AssertionError,
        "not str -> str",
    ),
    (
        CloseBreaksOtherInstances,
        "test_closing_a_second_instance_leaves_the_first_serving",
        AssertionError,
        "changed the first",
    ),
    (CatalogueSnapshot, "test_a_deleted_item_never_comes_back", AssertionError, "is back"),
    (
        RaisesOnUnknownHistory,
        "test_unusual_queries_are_declined_or_answered_never_raise",
        ValueError,
        "invalid literal",
    ),
    (
        OverCountsUpserts,
        "test_searches_during_upserts_and_deletes_stay_well_formed",
        AssertionError,
        "upsert_items ->",
    ),
    (
        ColdIsAnyItem,
        "test_recall_cold_gives_the_best_cold_items_recall_ranks",
        AssertionError,
        "not cold",
    ),
]


@pytest.mark.parametrize(
    ("broken", "check", "error", "message"), CHECKS, ids=[f"{c[0].__name__}" for c in CHECKS]
)
def test_each_broken_channel_fails_the_check_for_its_fault(broken, check, error, message):
    ch = open_channel(broken, channel_context(ITEMS, name="broken"))
    try:
        with pytest.raises(error, match=message):
            run_check(ChannelContract, check, ch)
    finally:
        ch.close()


def test_every_check_of_the_suite_has_a_broken_channel_that_fails_it():
    checks = {n for n in dir(ChannelContract) if n.startswith("test_")}
    assert checks == {c[1] for c in CHECKS}


# -- vector channels ---------------------------------------------------------------------


def _toy_vector(item: ItemRecord) -> np.ndarray:
    """From the metadata alone, as a real encoder: a category one-hot plus a slot that
    the title's number sets, so that every item has a direction of its own."""
    n = int(item.title.split()[-1])
    v = np.zeros(len(CATS) + 8, np.float32)
    for c in item.categories:
        if c in CATS:
            v[CATS.index(c)] = 1.0
    v[len(CATS) + n % 8] = 0.2 + 0.01 * n
    return v


class ToyVectors(VectorChannel):
    """A VectorChannel whose "encoder" is :func:`_toy_vector` (no text queries)."""

    supports_text = False

    @classmethod
    def write_bundle(cls, root, items) -> None:
        with ArtifactStore(root).new_version("toy", make_current=True) as bundle:
            vectors = np.stack([_toy_vector(it) for it in items])
            bundle.update(**write_vectors(bundle.path, items, vectors))

    def open_encoders(self, bundle) -> None:
        pass

    def encode_items(self, items):
        return np.stack([_toy_vector(it) for it in items]) if items else np.zeros((0, 12))


class DriftingEncoder(ToyVectors):
    """Serves vectors the build did not compute (a changed featuriser, say)."""

    def encode_items(self, items):
        out = super().encode_items(items)
        out[:, -1] += 0.5
        return out


class ForgetsUpserts(ToyVectors):
    def upsert_items(self, items):
        return len(items)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    ToyVectors.write_bundle(root, ITEMS)
    return root


def toy_channel(cls, root):
    return open_channel(cls, channel_context(ITEMS, name="toy", artifacts=root / "toy"))


class TestToyVectorChannelPassesTheVectorContract(VectorChannelContract):
    @pytest.fixture(scope="class")
    def channel(self, toy_root):
        ch = toy_channel(ToyVectors, toy_root)
        yield ch
        ch.close()

    @pytest.fixture()
    def queries(self):
        return [
            Query(history=("i010", "i014"), exclude=frozenset({"i010", "i014"})),
            Query(history=("i003",)),
        ]


@pytest.mark.parametrize(
    ("broken", "check", "message"),
    [
        (
            DriftingEncoder,
            "test_served_item_vectors_equal_the_built_ones",
            "differs from the built",
        ),
        (ForgetsUpserts, "test_upserts_and_deletes_show_at_once_and_after_a_restart", "nearest"),
    ],
)
def test_each_broken_vector_channel_fails_the_check_for_its_fault(toy_root, broken, check, message):
    ch = toy_channel(broken, toy_root)
    try:
        with pytest.raises(AssertionError, match=message):
            run_check(VectorChannelContract, check, ch)
    finally:
        ch.close()

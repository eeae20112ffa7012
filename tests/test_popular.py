"""The built-in `popular` channel: the shipped contract, and known answers (ranking by
weighted count, per-category lists and their union)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from recall_engine.sdk.channel import Query
from recall_engine.sdk.testing import ChannelContract
from tests.helpers import build_and_load


@pytest.fixture(scope="module")
def channel(tmp_path_factory, demo_small):
    ch = build_and_load(tmp_path_factory.mktemp("popular"), demo_small, "popular")
    yield ch
    ch.close()


@pytest.fixture()
def queries(demo_small):
    return [
        Query(user_id="u1"),
        Query(history=("item-0001",), exclude=frozenset({"item-0001"})),
        Query(text="anything"),
    ]


class TestPopularContract(ChannelContract):
    pass


def test_popular_ranks_by_weighted_interaction_count(channel, demo_small):
    counts: Counter[str] = Counter()
    data = demo_small.interactions
    for item, w in zip(data.item_ids.tolist(), data.weights.tolist(), strict=True):
        counts[item] += w
    got = channel.recall(Query(user_id="anon"), 10)
    assert [counts[i] for i in got.item_ids] == sorted(counts.values(), reverse=True)[:10]
    assert list(got.scores) == [float(counts[i]) for i in got.item_ids]


def test_popular_per_category_lists_only_that_category(channel, demo_small):
    got = channel.recall(Query(categories=frozenset({"jazz"})), 15)
    assert len(got.item_ids) == 15
    assert all(demo_small.topics[i] == "jazz" for i in got.item_ids)


def test_union_head_is_the_head_of_the_full_union():
    import numpy as np

    from recall_engine.plugins.popular import union_head

    rng = np.random.default_rng(7)
    for _ in range(300):
        parts = [
            np.unique(rng.integers(0, 500, rng.integers(0, 200))).astype(np.int32)
            for _ in range(rng.integers(0, 4))
        ]
        full = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        for n in (0, 1, 7, 50, 400, 1000):
            assert union_head(parts, n).tolist() == full[:n].tolist()


def test_popular_with_several_categories_matches_the_full_union(channel, demo_small):
    cats = frozenset({"jazz", "space", "cooking"})
    exclude = frozenset(channel.recall(Query(categories=cats), 5).item_ids)
    got = channel.recall(Query(categories=cats, exclude=exclude), 120)
    ranked = channel.recall(Query(), 10_000).item_ids  # every item, most popular first
    want = [i for i in ranked if demo_small.topics[i] in cats and i not in exclude][:120]
    assert list(got.item_ids) == want


def test_popular_follows_catalogue_deletes_and_upserts_over_mapped_columns(tmp_path, demo_small):
    """popular finds its list's rows in the catalogue's columns once at load and filters
    each request by them: an item deleted after load must still leave its answers, with
    or without a category filter, excluded ids stay out, and an upsert brings an item
    back, with the categories it has now."""
    ch = build_and_load(tmp_path, demo_small, "popular")
    try:
        catalog = ch.ctx.catalog
        assert ch._catalog_rows is not None  # noqa: SLF001 - the path under test is taken
        before = ch.recall(Query(user_id="anon"), 20).item_ids
        gone, excluded = list(before[:3]), before[3]
        records = [catalog.get(i) for i in gone]
        catalog.delete(gone)
        after = ch.recall(Query(user_id="anon", exclude=frozenset({excluded})), 20).item_ids
        assert after == [i for i in before if i not in gone and i != excluded] + after[16:]
        assert len(after) == 20 and not (set(gone) | {excluded}) & set(after)
        topic = records[0].categories[0]
        filtered = ch.recall(Query(categories=frozenset({topic})), 20).item_ids
        assert len(filtered) == 20 and not set(gone) & set(filtered)
        assert all(topic in catalog.categories(i) for i in filtered)
        # back, in another category: the filter reads the categories it has now
        moved = replace(records[0], categories=("elsewhere",))
        catalog.upsert([moved, *records[1:]])
        assert gone[0] not in ch.recall(Query(categories=frozenset({topic})), 20).item_ids
        assert ch.recall(Query(user_id="anon"), 20).item_ids == before
    finally:
        ch.close()

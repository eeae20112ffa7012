"""The contract every channel must pass (benfred/implicit's RecommenderBase tests, for
recall channels). A channel's test module subclasses :class:`ChannelContract` and
provides two fixtures:

- ``channel``: a loaded, warmed-up channel over a synthetic catalogue;
- ``queries``: a list of representative ``Query`` objects (with histories, texts, ...)
  for which the channel ``accepts`` and returns candidates.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from recall_engine.sdk.channel import Candidates, Channel, Query

K = 20


class ChannelContract:
    def test_returns_at_most_k_unique_known_ids(self, channel: Channel, queries: list[Query]):
        catalog = channel.ctx.catalog
        for q in queries:
            assert channel.accepts(q)
            got = channel.recall(q, K)
            assert isinstance(got, Candidates)
            ids = list(got.item_ids)
            assert 0 < len(ids) <= K
            assert len(set(ids)) == len(ids)
            assert all(i in catalog for i in ids)

    def test_scores_are_parallel_float_and_non_increasing(self, channel, queries):
        for q in queries:
            got = channel.recall(q, K)
            scores = np.asarray(got.scores)
            assert scores.shape == (len(got.item_ids),)
            assert np.issubdtype(scores.dtype, np.floating)
            assert np.all(np.isfinite(scores))
            assert np.all(np.diff(scores) <= 1e-6)

    def test_excludes_are_honoured(self, channel, queries):
        for q in queries:
            first = list(channel.recall(q, K).item_ids)
            excluded = frozenset(first[: K // 2]) | q.exclude
            again = list(channel.recall(replace(q, exclude=excluded), K).item_ids)
            assert excluded.isdisjoint(again)
            assert again, "excluding the top half must still leave candidates"

    def test_category_filter_is_honoured(self, channel, queries):
        catalog = channel.ctx.catalog
        for q in queries:
            first = list(channel.recall(q, K).item_ids)
            cat = catalog.categories(first[0])[0]
            got = channel.recall(replace(q, categories=frozenset({cat})), K)
            assert all(cat in catalog.categories(i) for i in got.item_ids)

    def test_history_items_in_exclude_never_come_back(self, channel, queries):
        for q in queries:
            q2 = replace(q, exclude=q.exclude | frozenset(q.history))
            assert frozenset(q.history).isdisjoint(channel.recall(q2, K).item_ids)

    def test_recall_batch_matches_single_recall(self, channel, queries):
        batch = channel.recall_batch(queries, K)
        assert len(batch) == len(queries)
        for q, b in zip(queries, batch, strict=True):
            single = channel.recall(q, K)
            assert list(b.item_ids) == list(single.item_ids)
            np.testing.assert_allclose(b.scores, single.scores, rtol=1e-4, atol=1e-5)

    def test_thread_safe_under_concurrent_calls(self, channel, queries):
        expected = [list(channel.recall(q, K).item_ids) for q in queries]
        errors: list[BaseException] = []
        mismatches: list[int] = []

        def worker() -> None:
            try:
                for _ in range(10):
                    for i, q in enumerate(queries):
                        if list(channel.recall(q, K).item_ids) != expected[i]:
                            mismatches.append(i)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[0]
        assert not mismatches

    def test_info_reports_version_and_items(self, channel):
        info = channel.info()
        assert info.version
        assert info.item_count > 0

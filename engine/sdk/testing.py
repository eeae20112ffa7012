"""The channel contract as tests: run them against your plugin before you ship it.

A channel that passes :class:`ChannelContract` keeps every promise
:class:`~recall_engine.sdk.channel.Channel` makes to the engine (and may set
``trusted_output = True``); a channel built on
:class:`~recall_engine.sdk.vector_channel.VectorChannel` also runs
:class:`VectorChannelContract`. The built-in channels run the same suite (the model is
benfred/implicit's ``RecommenderBase`` test mixin).

Use it from pytest (the ``[test]`` extra); importing this module does not need pytest.
Subclass a contract in a test module named ``test_*.py`` and provide two fixtures::

    import pytest
    from recall_engine.sdk import ItemRecord, Query
    from recall_engine.sdk.testing import ChannelContract, channel_context, open_channel

    from my_package.channel import MyChannel

    ITEMS = [ItemRecord(f"i{n}", f"Item {n}", categories=("a" if n % 2 else "b",))
             for n in range(100)]

    @pytest.fixture(scope="module")
    def channel():
        ch = open_channel(MyChannel, channel_context(ITEMS, params={"recent": 3}))
        yield ch
        ch.close()

    @pytest.fixture()
    def queries():
        return [Query(history=("i1", "i3"), exclude=frozenset({"i1", "i3"}))]

    class TestMyChannelContract(ChannelContract):
        k = 20  # optional: the k the checks ask for

``channel``
    a loaded and warmed-up channel (``load()`` and ``warmup()`` done, as the engine
    does) over a non-empty catalogue, ``channel.ctx.catalog``. The checks never change
    it: those that add or delete items do so on a second instance over a copy of the
    catalogue (:meth:`ChannelContract.scratch`). A channel that reads artifacts gets
    their folder through ``channel_context(..., artifacts=ROOT / name)``.
``queries``
    a few representative queries that the channel ``accepts`` and that each have more
    than ``k`` candidates (the exclude check removes the top half and still expects an
    answer), e.g. a history from one category, free text, history plus text, a history
    with an unknown item.

What :class:`ChannelContract` checks (each test's docstring says more):

* every answer: at most ``k`` distinct ids, all catalogue items, as many finite float
  scores, best first; also for ``k = 1`` and ``k`` beyond the catalogue;
* odd queries (empty, unknown history, unknown words, a category no item has) are
  declined by ``accepts`` or answered, never raised on;
* ``exclude`` (and the history the engine puts there) and ``categories`` are honoured;
* ``recall_batch`` agrees with ``recall``; concurrent calls agree with sequential ones;
* ``info()`` has a version, an item count and string details;
* a second instance (a reload) answers alike, and closing it leaves the first serving;
* a deleted item never comes back; searches during upserts and deletes stay
  well-formed and the update calls count what they did;
* a channel that ``RecallsColdItems`` returns the cold items ``recall`` ranks first.

:class:`VectorChannelContract` adds: served item vectors equal the built ones; an
upserted copy of an item is its nearest neighbour, a deleted item is gone, both at once
and after a restart that reconciles the index with the catalogue; the free texts of a
batch are encoded in one call.

The checks name what they prove; a failure says which query and what went wrong.
Assertions carry their own messages, so pytest's assertion rewriting is not needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.capabilities import RecallsColdItems, SupportsOnlineUpdates
from recall_engine.sdk.channel import Candidates, Channel, ChannelContext, ItemRecord, Query
from recall_engine.sdk.types import ColdItems

if TYPE_CHECKING:
    from recall_engine.sdk.vector_channel import VectorChannel

__all__ = [
    "ChannelContract",
    "VectorChannelContract",
    "channel_context",
    "check_candidates",
    "open_channel",
]

#: Id prefix of the items the checks add (upsert) to a channel's scratch instance.
NEW_ID_PREFIX = "contract-new-"


def channel_context(
    items: Iterable[ItemRecord],
    *,
    name: str = "test",
    plugin: str | None = None,
    params: Mapping[str, Any] | None = None,
    artifacts: Path | None = None,
    version: str | None = None,
) -> ChannelContext:
    """A :class:`ChannelContext` over an in-memory catalogue of ``items``, as the engine
    would hand it to a channel named ``name`` (``plugin`` defaults to the name)."""
    return ChannelContext(
        name=name,
        plugin=plugin or name,
        params=dict(params or {}),
        artifacts=artifacts,
        catalog=Catalog(items),
        version=version,
    )


def open_channel(factory: Callable[[ChannelContext], Channel], ctx: ChannelContext) -> Channel:
    """Construct, load and warm up a channel the way the engine does (and close it
    again if ``load`` or ``warmup`` raises)."""
    channel = factory(ctx)
    try:
        channel.load()
        channel.warmup()
    except BaseException:
        channel.close()
        raise
    return channel


def check_candidates(got: object, k: int, *, where: str = "") -> Candidates:
    """Assert the shape every answer must have, whatever the query: a
    :class:`Candidates` of at most ``k`` distinct string ids and as many finite float
    scores, best first (non-increasing). Returns ``got``."""
    assert isinstance(got, Candidates), f"{where}: recall returned {type(got).__name__}"
    ids = list(got.item_ids)
    assert len(ids) <= k, f"{where}: {len(ids)} candidates for k={k}"
    assert all(isinstance(i, str) for i in ids), f"{where}: non-string ids {ids[:5]}"
    dups = sorted({i for i in ids if ids.count(i) > 1})
    assert not dups, f"{where}: duplicate ids {dups[:5]}"
    scores = np.asarray(got.scores)
    assert scores.shape == (len(ids),), (
        f"{where}: scores of shape {scores.shape} for {len(ids)} ids"
    )
    assert np.issubdtype(scores.dtype, np.floating), f"{where}: scores of dtype {scores.dtype}"
    assert bool(np.all(np.isfinite(scores))), f"{where}: scores not finite: {scores[:10]}"
    return got


def _pytest() -> Any:
    try:
        import pytest
    except ImportError as e:  # pragma: no cover - the suite runs under pytest
        raise ImportError(
            "recall_engine.sdk.testing runs under pytest: pip install 'recall-engine[test]'"
        ) from e
    return pytest


def _ids(got: Candidates) -> list[str]:
    return list(got.item_ids)


class ChannelContract:
    """The checks every channel must pass. Needs the fixtures ``channel`` and
    ``queries`` (see the module docstring); the class attributes tune the checks."""

    #: The k the checks ask for.
    k: ClassVar[int] = 20
    #: How far a score may rise from one candidate to the next (float noise).
    score_tolerance: ClassVar[float] = 1e-6
    #: How far ``recall_batch`` scores may differ from ``recall`` scores.
    batch_rtol: ClassVar[float] = 1e-4
    batch_atol: ClassVar[float] = 1e-5
    #: How far ``recall_cold`` scores may differ from ``recall`` scores.
    cold_score_atol: ClassVar[float] = 1e-4
    #: Threads and rounds of the concurrency checks.
    threads: ClassVar[int] = 8
    rounds: ClassVar[int] = 10
    #: Items the update-during-search check adds (and partly deletes again).
    updates: ClassVar[int] = 8
    _scratch_channels: ClassVar[dict[int, Channel]]

    # -- hooks -------------------------------------------------------------------------
    def new_channel(self, channel: Channel, ctx: ChannelContext) -> Channel:
        """A second, loaded and warmed-up instance of ``channel``'s plugin on ``ctx``:
        what a reload or a restart builds. Override when your entry point is a factory
        function rather than the channel class."""
        return open_channel(type(channel), ctx)

    def scratch_context(self, channel: Channel) -> ChannelContext:
        """The context of :meth:`scratch`'s instance: ``channel``'s, over a copy of the
        catalogue. Override when instances of your channel share state that online
        updates change besides the catalogue (vectors in a shared store such as Milvus:
        point the scratch instance at a second build)."""
        return replace(channel.ctx, catalog=Catalog(channel.ctx.catalog))

    def scratch(self, channel: Channel) -> Channel:
        """The second instance over a *copy* of the catalogue that the checks which add
        and delete items share (each with ids of its own), so that ``channel`` stays as
        it was. Made on first use, closed by :meth:`teardown_class` (call it from yours
        if you define one)."""
        cls = type(self)
        made: dict[int, Channel] = cls.__dict__.get("_scratch_channels") or {}
        if id(channel) not in made:
            made[id(channel)] = self.new_channel(channel, self.scratch_context(channel))
            cls._scratch_channels = made
        return made[id(channel)]

    @classmethod
    def teardown_class(cls) -> None:
        """Close the scratch instances (pytest calls this after the class's tests)."""
        made: dict[int, Channel] = cls.__dict__.get("_scratch_channels") or {}
        while made:
            made.popitem()[1].close()

    # -- what every answer is ----------------------------------------------------------
    def test_answers_hold_at_most_k_distinct_ids_of_catalogue_items(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """Each query is accepted and answered with 1..k distinct ids, every one an item
        of the catalogue: the engine may pass the answer on without re-checking it.
        Also for ``k = 1``, and for a ``k`` beyond the catalogue's size (each item at
        most once)."""
        catalog = _catalog(channel)
        for n, q in enumerate(queries):
            assert channel.accepts(q), f"queries[{n}] is not accepted: {q}"
            for k in (1, self.k, len(catalog) + 10):
                got = check_candidates(channel.recall(q, k), k, where=f"queries[{n}], k={k}")
                assert len(got) > 0, f"queries[{n}], k={k}: no candidates"
                unknown = [i for i in got.item_ids if i not in catalog]
                assert not unknown, f"queries[{n}], k={k}: ids not in the catalogue {unknown[:5]}"

    def test_scores_are_finite_floats_best_first(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """Scores are as many as the ids, floating point, finite and non-increasing
        (fusion reads ranks from the order and normalises the scores)."""
        for n, q in enumerate(queries):
            got = check_candidates(channel.recall(q, self.k), self.k, where=f"queries[{n}]")
            rises = np.diff(np.asarray(got.scores, dtype=np.float64))
            assert bool(np.all(rises <= self.score_tolerance)), (
                f"queries[{n}]: scores rise: {np.asarray(got.scores)[:10]}"
            )

    def test_unusual_queries_are_declined_or_answered_never_raise(self, channel: Channel) -> None:
        """An empty query, a history of unknown ids, text of no known word, and a
        category no item has: ``accepts`` says no, or ``recall`` gives a well-formed
        (possibly empty) answer. The engine calls ``recall`` only when ``accepts``."""
        unusual = [
            Query(),
            Query(user_id="never-seen", history=("__no_such_item__", "__nor_this__")),
            Query(text="zzyzx qwertyuiop"),
            Query(
                history=tuple(_catalog(channel).ids()[:1]),
                categories=frozenset({"__no_such_cat__"}),
            ),
        ]
        for q in unusual:
            if channel.accepts(q):
                got = check_candidates(channel.recall(q, self.k), self.k, where=str(q))
                if q.categories:
                    assert len(got) == 0, f"{q}: items of a category no item has {_ids(got)[:5]}"

    # -- filters -------------------------------------------------------------------------
    def test_excluded_ids_never_come_back(self, channel: Channel, queries: Sequence[Query]) -> None:
        """Excluding the channel's own top half removes exactly those ids, and the
        channel still answers (it over-fetches rather than returning a short list)."""
        half = self.k // 2
        for n, q in enumerate(queries):
            first = _ids(channel.recall(q, self.k))
            excluded = frozenset(first[:half]) | q.exclude
            again = _ids(channel.recall(replace(q, exclude=excluded), self.k))
            back = sorted(excluded.intersection(again))
            assert not back, f"queries[{n}]: excluded ids came back {back[:5]}"
            assert again, f"queries[{n}]: excluding the top {half} left no candidates"

    def test_history_items_in_exclude_never_come_back(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """The history items the engine puts into ``exclude`` (the default) are not
        recommended back."""
        for n, q in enumerate(queries):
            q2 = replace(q, exclude=q.exclude | frozenset(q.history))
            back = sorted(set(q.history).intersection(_ids(channel.recall(q2, self.k))))
            assert not back, f"queries[{n}]: history items came back {back[:5]}"

    def test_category_filter_keeps_only_items_of_those_categories(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """With ``categories`` set, every candidate has at least one of them (one
        category, then two: a union), and a filter on the category of the channel's own
        top answer still finds something."""
        catalog = _catalog(channel)
        checked = 0
        for n, q in enumerate(queries):
            first = _ids(channel.recall(q, self.k))
            cats = [c for i in first for c in catalog.categories(i)]
            if not cats:
                continue
            wanted = [frozenset(cats[:1]), frozenset(dict.fromkeys(cats))]
            for want in wanted[: 2 if len(set(cats)) > 1 else 1]:
                got = _ids(channel.recall(replace(q, categories=want), self.k))
                assert got, f"queries[{n}]: nothing in categories {sorted(want)}"
                outside = [i for i in got if want.isdisjoint(catalog.categories(i))]
                assert not outside, f"queries[{n}]: items outside {sorted(want)}: {outside[:5]}"
            checked += 1
        if not checked:
            _pytest().skip("no answer to `queries` has an item with categories")

    def test_recall_cold_gives_the_best_cold_items_recall_ranks(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """A channel that ``RecallsColdItems``, given a set of "cold" items (every third
        catalogue item here), returns the cold items a full ``recall`` ranks first, with
        its scores (within ``cold_score_atol``: quantised indexes score the stored
        vectors), honouring ``exclude`` and ``categories``; ``ranks``, when it gives
        them, increase strictly, each at least its position."""
        if not isinstance(channel, RecallsColdItems):
            _pytest().skip("the channel does not recall cold items alone")
            return
        catalog = _catalog(channel)
        everything = len(catalog)
        cold = ColdItems(tuple(sorted(catalog.ids()))[::3], token=-1)
        checked = 0
        for n, q in enumerate(queries):
            for query in (q, replace(q, categories=frozenset(catalog.categories(cold.ids[0])))):
                got = channel.recall_cold(query, self.k, cold)
                if got is None:
                    _pytest().skip("recall_cold declined a small cold set")
                    return
                full = channel.recall(query, everything)
                keep = [i for i, item in enumerate(_ids(full)) if item in cold][: self.k]
                want = [float(s) for s in np.asarray(full.scores)[keep]]
                assert len(got) == len(keep), (
                    f"queries[{n}]: recall_cold gave {len(got)} items, recall ranks {len(keep)}"
                )
                outside = [i for i in _ids(got) if i not in cold or i in query.exclude]
                assert not outside, f"queries[{n}]: not cold, or excluded: {outside[:5]}"
                if query.categories:
                    wrong = [
                        i for i in _ids(got) if query.categories.isdisjoint(catalog.categories(i))
                    ]
                    assert not wrong, f"queries[{n}]: outside the categories: {wrong[:5]}"
                np.testing.assert_allclose(
                    np.asarray(got.scores, dtype=np.float64),
                    want,
                    atol=self.cold_score_atol,
                    err_msg=f"queries[{n}]: recall_cold scores differ from recall's",
                )
                if got.ranks is not None:  # where they would stand in recall's ranking
                    ranks = np.asarray(got.ranks)
                    assert ranks.shape == (len(got),) and ranks.dtype.kind in "iu", ranks
                    assert bool((ranks >= np.arange(1, len(got) + 1)).all()), (
                        f"queries[{n}]: a rank above its position: {ranks.tolist()}"
                    )
                    assert bool((np.diff(ranks) > 0).all()), (
                        f"queries[{n}]: ranks must increase strictly: {ranks.tolist()}"
                    )
                checked += 1
        assert checked, "no query was checked"

    # -- batches and threads -----------------------------------------------------------
    def test_recall_batch_agrees_with_recall(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """``recall_batch`` returns one answer per query, in order, with the ids
        ``recall`` gives and the same scores (within ``batch_rtol``/``batch_atol``);
        an empty batch gets an empty list."""
        assert channel.recall_batch([], self.k) == [], "an empty batch must give []"
        batch = channel.recall_batch(list(queries), self.k)
        assert len(batch) == len(queries), f"{len(batch)} answers for {len(queries)} queries"
        for n, (q, b) in enumerate(zip(queries, batch, strict=True)):
            check_candidates(b, self.k, where=f"recall_batch, queries[{n}]")
            single = channel.recall(q, self.k)
            assert _ids(b) == _ids(single), (
                f"queries[{n}]: recall_batch {_ids(b)[:5]}... != recall {_ids(single)[:5]}..."
            )
            np.testing.assert_allclose(
                np.asarray(b.scores, dtype=np.float64),
                np.asarray(single.scores, dtype=np.float64),
                rtol=self.batch_rtol,
                atol=self.batch_atol,
                err_msg=f"queries[{n}]: recall_batch scores differ from recall's",
            )

    def test_concurrent_calls_give_the_answers_of_sequential_ones(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """``threads`` threads calling ``recall`` and ``recall_batch`` at once get
        exactly the ids one thread gets: no shared per-request state."""
        expected = [_ids(channel.recall(q, self.k)) for q in queries]
        errors: list[BaseException] = []
        mismatches: list[str] = []

        def worker() -> None:
            try:
                for _ in range(self.rounds):
                    for n, q in enumerate(queries):
                        if _ids(channel.recall(q, self.k)) != expected[n]:
                            mismatches.append(f"recall, queries[{n}]")
                    got = channel.recall_batch(list(queries), self.k)
                    mismatches.extend(
                        f"recall_batch, queries[{n}]"
                        for n, b in enumerate(got)
                        if _ids(b) != expected[n]
                    )
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        _run_threads(worker, self.threads)
        assert not errors, f"a concurrent call raised {errors[0]!r}"
        assert not mismatches, (
            f"{len(mismatches)} answers changed under concurrency: {mismatches[:5]}"
        )

    # -- reporting and lifecycle -------------------------------------------------------
    def test_info_reports_a_version_an_item_count_and_string_details(
        self, channel: Channel
    ) -> None:
        """``info()`` (ListChannels) names a version, counts more than zero items, and
        its details map strings to strings (a protobuf ``map<string, string>``)."""
        info = channel.info()
        assert isinstance(info.version, str) and info.version, f"version {info.version!r}"
        assert isinstance(info.item_count, int) and info.item_count > 0, (
            f"item_count {info.item_count!r}"
        )
        bad = {
            k: v for k, v in info.details.items() if not (isinstance(k, str) and isinstance(v, str))
        }
        assert not bad, f"details that are not str -> str: {bad}"

    def test_closing_a_second_instance_leaves_the_first_serving(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """A second instance on the same context (what a reload loads beside the serving
        one) answers as the first does, and closing it does not disturb the first: the
        engine closes the old instance while the new one serves."""
        before = [_ids(channel.recall(q, self.k)) for q in queries]
        other = self.new_channel(channel, channel.ctx)
        try:
            again = [_ids(other.recall(q, self.k)) for q in queries]
        finally:
            other.close()
        assert again == before, "a second instance on the same artifacts answers differently"
        after = [_ids(channel.recall(q, self.k)) for q in queries]
        assert after == before, "closing a second instance changed the first one's answers"

    # -- online changes ----------------------------------------------------------------
    def test_a_deleted_item_never_comes_back(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """Deleted as the engine deletes (``delete_items`` on the channel if it takes
        online updates, then from the catalogue), an item the channel ranked first is
        gone from every answer, to ``recall`` and ``recall_batch``. ``delete_items``
        counts at most what it got."""
        live = self.scratch(channel)
        target = _ids(live.recall(queries[0], self.k))[0]
        delete = _online(live, "delete_items")
        if delete is not None:
            removed = delete([target])
            assert isinstance(removed, int) and 0 <= removed <= 1, f"delete_items -> {removed!r}"
        live.ctx.catalog.delete([target])
        big = len(_catalog(live)) + 10
        for n, q in enumerate(queries):
            if live.accepts(q):
                assert target not in _ids(live.recall(q, big)), f"queries[{n}]: {target} is back"
        batch = live.recall_batch([q for q in queries if live.accepts(q)], big)
        assert all(target not in _ids(b) for b in batch), f"{target} is back in recall_batch"

    def test_searches_during_upserts_and_deletes_stay_well_formed(
        self, channel: Channel, queries: Sequence[Query]
    ) -> None:
        """While items are upserted and deleted (in the engine's order: catalogue then
        channel for upserts, channel then catalogue for deletes; a channel that takes no
        online updates sees the catalogue change only), concurrent ``recall`` and
        ``recall_batch`` calls raise nothing and every answer stays well-formed.
        ``upsert_items`` counts at most what it got."""
        live = self.scratch(channel)
        upsert, delete = _online(live, "upsert_items"), _online(live, "delete_items")
        catalog = live.ctx.catalog
        templates = list(catalog)[: self.updates]
        stop = threading.Event()
        errors: list[BaseException] = []
        searching = threading.Semaphore(0)

        def search() -> None:
            try:
                while True:
                    for q in queries:
                        check_candidates(live.recall(q, self.k), self.k, where=str(q))
                    for b in live.recall_batch(list(queries), self.k):
                        check_candidates(b, self.k, where="recall_batch")
                    searching.release()
                    if stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                searching.release()

        threads = [threading.Thread(target=search) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for _ in threads:  # every searcher is under way before the first update
                assert searching.acquire(timeout=120), "a search thread never finished a pass"
            for n, template in enumerate(templates):
                item = replace(template, item_id=f"{NEW_ID_PREFIX}{n}")
                catalog.upsert([item])
                if upsert is not None:
                    added = upsert([item, item])
                    assert isinstance(added, int) and 0 <= added <= 2, f"upsert_items -> {added!r}"
                if n % 2:
                    gone = f"{NEW_ID_PREFIX}{n - 1}"
                    if delete is not None:
                        delete([gone])
                    catalog.delete([gone])
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        assert not any(t.is_alive() for t in threads), "a search thread hangs"
        assert not errors, f"a search during updates raised {errors[0]!r}"


class VectorChannelContract(ChannelContract):
    """:class:`ChannelContract` plus what a
    :class:`~recall_engine.sdk.vector_channel.VectorChannel` promises: served vectors
    equal built ones, online upserts and deletes visible at once and reconciled on a
    restart, free texts of a batch encoded in one call."""

    #: How far ``encode_items`` may be from the vectors the build indexed.
    vector_atol: ClassVar[float] = 1e-5

    def test_served_item_vectors_equal_the_built_ones(
        self, channel: VectorChannel, queries: Sequence[Query]
    ) -> None:
        """``encode_items`` at serve time computes exactly the vectors the build
        indexed (within ``vector_atol``), so online upserts land where a rebuild would
        put them."""
        catalog = _catalog(channel)
        items = [_item(catalog, i) for i in _ids(channel.recall(queries[0], 4))]
        served = np.asarray(channel.encode_items(items), dtype=np.float64)
        for item, vector in zip(items, served, strict=True):
            built = np.asarray(channel.index.vector(item.item_id), dtype=np.float64)
            np.testing.assert_allclose(
                _unit(vector),
                _unit(built),
                atol=self.vector_atol,
                err_msg=f"{item.item_id}: the served vector differs from the built one",
            )

    def test_upserts_and_deletes_show_at_once_and_after_a_restart(
        self, channel: VectorChannel, queries: Sequence[Query]
    ) -> None:
        """An upserted copy of an item (same metadata, new id) is that item's nearest
        neighbour at once; a deleted item is gone from answers and no longer accepted
        as history. A restart (a new instance on the bundle as built, over the changed
        catalogue, the durable record) reconciles its index: the same holds, and
        ``info().details`` counts what was encoded and removed."""
        live = self.scratch(channel)
        assert isinstance(live, SupportsOnlineUpdates), "a vector channel takes online updates"
        target, twin = _ids(live.recall(queries[0], 2))
        copy = replace(_item(_catalog(live), twin), item_id=f"{NEW_ID_PREFIX}copy")
        catalog = live.ctx.catalog
        catalog.upsert([copy])
        assert live.upsert_items([copy]) == 1, "upsert_items did not index the copy"
        live.delete_items([target])
        catalog.delete([target])
        _expect_updates_applied(live, queries, twin, copy.item_id, target, self.k)
        restarted = self.new_channel(channel, replace(live.ctx, catalog=catalog))
        try:
            _expect_updates_applied(restarted, queries, twin, copy.item_id, target, self.k)
            details = restarted.info().details
            assert int(details["reconciled_added"]) >= 1, details
            assert int(details["reconciled_removed"]) >= 1, details
        finally:
            restarted.close()

    def test_free_texts_of_a_batch_are_encoded_in_one_call(
        self, channel: VectorChannel, queries: Sequence[Query]
    ) -> None:
        """``recall_batch`` encodes all its free texts in one ``encode_texts`` call."""
        texts = [q for q in queries if q.text.strip()]
        if not channel.supports_text or len(texts) < 2:
            _pytest().skip("needs a text channel and two `queries` with text")
        calls: list[int] = []
        real = channel.encode_texts

        def counting(batch: Sequence[str]) -> np.ndarray:
            calls.append(len(batch))
            return real(batch)

        setattr(channel, "encode_texts", counting)  # noqa: B010 - an instance attribute
        try:
            channel.recall_batch(texts, self.k)
        finally:
            delattr(channel, "encode_texts")
        assert calls == [len(texts)], f"encode_texts calls of sizes {calls}"


def _expect_updates_applied(
    ch: Channel, queries: Sequence[Query], twin: str, copy: str, target: str, k: int
) -> None:
    near = ch.recall(Query(history=(twin,), exclude=frozenset({twin})), k)
    top = [i for i, s in zip(near.item_ids, near.scores, strict=True) if s >= near.scores[0] - 1e-4]
    assert copy in top, f"the copy of {twin} is not its nearest neighbour: {_ids(near)[:5]}"
    assert not ch.accepts(Query(history=(target,))), f"deleted {target} still accepted as history"
    for n, q in enumerate(queries):
        if ch.accepts(q):
            assert target not in _ids(ch.recall(q, k)), f"queries[{n}]: deleted {target} is back"


def _online(channel: Channel, method: str) -> Callable[[Sequence[Any]], int] | None:
    """The channel's ``upsert_items`` / ``delete_items`` when it takes online updates
    (the optional capability), else None: the engine then tells it nothing."""
    found = getattr(channel, method, None)
    return found if callable(found) else None


def _item(catalog: Catalog, item_id: str) -> ItemRecord:
    item = catalog.get(item_id)
    assert item is not None, f"{item_id} is not in the catalogue"
    return item


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _catalog(channel: Channel) -> Catalog:
    catalog = channel.ctx.catalog
    assert len(catalog) > 0, "the contract checks need a channel over a non-empty catalogue"
    return catalog


def _run_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish within 120 s"

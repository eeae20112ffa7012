"""The built-in `content` channel: the shipped vector-channel contract (build/serve
parity, online upserts and deletes, restarts, threads), known answers on the demo topics
(cold and newly upserted items included), torch-free serving, and the pure-Python
metadata featuriser."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from recall_engine.offline.data.interactions import Interactions
from recall_engine.plugins.content.terms import Vocabulary, item_terms, query_terms
from recall_engine.runtime.encoders import MicroBatcher
from recall_engine.sdk.channel import ItemRecord, Query
from recall_engine.sdk.testing import VectorChannelContract
from recall_engine.sdk.types import ColdItems
from recall_engine.sdk.vector_channel import RANK_SAMPLE
from tests.helpers import build_and_load, reopen, serve_without_torch, topic_share, warm_items
from tests.log_events import parse_events

NEW_JAZZ = ItemRecord(
    "new-jazz",
    "Bebop Saxophone Solos and Late-Night Jam Sessions",
    "A swinging listening guide to Charlie Parker records.",
    ("jazz", "bebop"),
)


def share(demo, ids, topic: str) -> float:
    return topic_share(demo, ids, topic, {NEW_JAZZ.item_id: "jazz"})


@pytest.fixture(scope="module")
def channel(tmp_path_factory, demo_small):
    pytest.importorskip("torch")
    ch = build_and_load(
        tmp_path_factory.mktemp("content"), demo_small, "content", params={"epochs": 3}
    )
    yield ch
    ch.close()


@pytest.fixture()
def queries(demo_small):
    jazz, space = warm_items(demo_small, "jazz"), warm_items(demo_small, "space")
    return [
        Query(user_id="u1", history=jazz, exclude=frozenset(jazz)),
        Query(text="rockets and astronauts"),
        Query(history=space[:3], text="distant galaxies", exclude=frozenset(space[:3])),
        Query(history=("no-such-item", *jazz[:2])),
    ]


class TestContentContract(VectorChannelContract):
    pass


def test_history_in_one_topic_recalls_mostly_that_topic(channel, demo_small):
    for topic in sorted(set(demo_small.topics.values())):
        history = warm_items(demo_small, topic)
        got = channel.recall(Query(history=history, exclude=frozenset(history)), 20)
        assert share(demo_small, got.item_ids, topic) >= 0.7, (topic, got.item_ids)


def test_cold_items_are_recalled_by_their_topic_and_their_words(channel, demo_small):
    catalog = channel.ctx.catalog
    for item_id in demo_small.cold_items[:4]:
        topic = demo_small.topics[item_id]
        history = warm_items(demo_small, topic)
        # 50 results for 42 unseen items of the topic: the cold one ranks with them
        got = channel.recall(Query(history=history, exclude=frozenset(history)), 50)
        assert item_id in got.item_ids, (item_id, topic)
        assert item_id in channel.recall(Query(text=catalog.get(item_id).title), 3).item_ids


def test_text_with_no_known_word_is_not_accepted(channel):
    assert not channel.accepts(Query(text="zzyzx qwertyuiop"))
    assert channel.recall(Query(text="zzyzx qwertyuiop"), 5).item_ids == ()


def test_an_upserted_new_item_ranks_among_its_topic(channel, demo_small):
    """A new item is encoded from its metadata alone (no interactions): its neighbours
    are its topic's items, and a history of that topic finds it."""
    jazz = warm_items(demo_small, "jazz")
    live = reopen(channel)
    try:
        live.ctx.catalog.upsert([NEW_JAZZ])
        assert live.upsert_items([NEW_JAZZ]) == 1
        got = live.recall(Query(history=(NEW_JAZZ.item_id,)), 20)
        assert got.item_ids[0] == NEW_JAZZ.item_id
        assert share(demo_small, got.item_ids, "jazz") >= 0.7
        assert NEW_JAZZ.item_id in live.recall(Query(history=jazz), 60).item_ids
    finally:
        live.close()


def test_the_cold_scan_follows_the_cold_set_and_online_changes(channel, demo_small):
    """``recall_cold`` keeps a matrix of the cold items' vectors: an item upserted
    online is scanned once the cold set holds it, and when an upsert changes a cold
    item's vector (same cold set) the scan scores the new one, as ``recall`` does."""
    jazz = warm_items(demo_small, "jazz")
    query = Query(history=jazz, exclude=frozenset(jazz))
    live = reopen(channel, in_memory=True)  # changes stay out of the shared catalogue
    try:
        catalog = live.ctx.catalog

        def score_of(item_id: str, cold: ColdItems) -> tuple[float, float]:
            scan = live.recall_cold(query, len(cold), cold)
            full = live.recall(query, len(catalog))
            assert scan is not None
            got = dict(zip(scan.item_ids, scan.scores.tolist(), strict=True))
            want = dict(zip(full.item_ids, full.scores.tolist(), strict=True))
            return got[item_id], want[item_id]

        cold = ColdItems(tuple(sorted(demo_small.cold_items)), token=-101)
        assert NEW_JAZZ.item_id not in live.recall_cold(query, len(cold), cold).item_ids
        # below RANK_SAMPLE items every item is scored: the ranks are recall's positions
        assert len(live.index) <= RANK_SAMPLE
        scan = live.recall_cold(query, 10, cold)
        assert scan is not None and scan.ranks is not None
        full = list(live.recall(query, len(catalog)).item_ids)
        assert scan.ranks.tolist() == [full.index(i) + 1 for i in scan.item_ids]
        catalog.upsert([NEW_JAZZ])
        assert live.upsert_items([NEW_JAZZ]) == 1
        grown = ColdItems(tuple(sorted({*cold.ids, NEW_JAZZ.item_id})), token=-102)
        scanned, searched = score_of(NEW_JAZZ.item_id, grown)
        assert scanned == pytest.approx(searched, abs=1e-4)
        moved = replace(NEW_JAZZ, title="Rockets, orbits and astronauts", categories=("space",))
        catalog.upsert([moved])
        assert live.upsert_items([moved]) == 1
        rescanned, searched_again = score_of(NEW_JAZZ.item_id, grown)
        assert rescanned == pytest.approx(searched_again, abs=1e-4)
        assert rescanned < scanned - 0.05, "the scan kept the old vector"
    finally:
        live.close()


def test_serving_does_not_import_torch(channel, demo_small):
    space = warm_items(demo_small, "space", 3)
    got = serve_without_torch(channel, history=space, text="jazz saxophone")
    assert got["blocked_loaded"] == [] and got["added"] == 1
    assert got["ids"] == list(
        channel.recall(
            Query(history=space, text="jazz saxophone", exclude=frozenset(space)), 10
        ).item_ids
    )


# -- featuriser and training pairs (no channel needed) ---------------------------------


def test_item_terms_read_categories_words_fields_and_years():
    item = ItemRecord(
        "1",
        "Toy Story (1995)",
        "A cowboy doll is threatened by a new toy.\nGenres: Animation, Comedy\n"
        "Director: John Lasseter\nPlot: Toys come to life.",
        ("Animation", "year:1995"),
    )
    terms = item_terms(item)
    assert {
        "cat:animation",
        "year:1995",
        "decade:1990s",
        "w:toy",
        "w:story",
        "w:cowboy",
        "f:genres:comedy",
        "f:director:john lasseter",
        "w:toys",
        "w:life",
    } <= set(terms)
    assert "w:the" not in terms and "w:a" not in terms
    assert terms["w:toy"] > terms["w:cowboy"]  # title words weigh more


def test_featurize_drops_unknown_terms_and_keeps_the_heaviest():
    vocab = Vocabulary.fit([{"w:a": 1.0, "w:b": 1.0}, {"w:b": 1.0, "w:c": 1.0}], max_terms=2)
    ids, weights = vocab.featurize(
        [{"w:a": 5.0, "w:b": 1.0, "w:c": 1.0, "w:zzz": 9.0}, query_terms("")]
    )
    assert ids.shape == weights.shape == (2, 2)
    assert ids[0, 0] == vocab.ids["w:a"] and weights[0, 0] > weights[0, 1] > 0
    assert not ids[1].any() and not weights[1].any()


def test_pairs_are_distinct_items_close_in_one_users_history():
    pytest.importorskip("torch")
    from recall_engine.plugins.content.model import co_consumed_pairs

    log = Interactions(
        ["u", "u", "u", "u", "v"], ["a", "b", "b", "c", "a"], timestamps=[1, 2, 3, 4, 1]
    )
    pairs = co_consumed_pairs(log, {"a": 0, "b": 1, "c": 2}, window=2, max_pairs=100, seed=0)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 1), (1, 2), (1, 2)]


def test_fused_training_path_computes_the_exported_function():
    torch = pytest.importorskip("torch")
    from recall_engine.plugins.content.model import ContentEncoder

    torch.manual_seed(0)
    model = ContentEncoder(50, 16)
    ids = torch.randint(0, 50, (6, 9))
    weights = torch.rand(6, 9) * (ids > 0)
    torch.testing.assert_close(model.forward_fused(ids, weights), model(ids, weights))


# -- training budget: steps, not seconds -----------------------------------------------


def _training_inputs(demo):
    from recall_engine.plugins.content.model import co_consumed_pairs

    items = list(demo.items)
    docs = [item_terms(it) for it in items]
    vocab = Vocabulary.fit(docs)
    ids, weights = vocab.featurize(docs)
    pairs = co_consumed_pairs(
        demo.interactions,
        {it.item_id: i for i, it in enumerate(items)},
        window=3,
        max_pairs=5_000,
        seed=0,
    )
    return ids, weights, pairs, len(vocab)


def test_training_runs_its_step_budget_however_slow_the_clock_says_it_is(demo_small, monkeypatch):
    """A clock that jumps an hour per reading would have cut the old 60-s-capped
    training after one step; the step budget does not read the clock to stop."""
    pytest.importorskip("torch")
    from recall_engine.plugins.content import model as content_model

    ids, weights, pairs, vocab_size = _training_inputs(demo_small)
    ticks = iter(range(0, 10**9, 3600))
    monkeypatch.setattr(content_model.time, "perf_counter", lambda: float(next(ticks)))
    settings = content_model.TrainSettings(dim=8, epochs=2, batch_size=256, max_steps=7)
    _, stats = content_model.train_encoder(ids, weights, pairs, vocab_size, settings, seed=1)
    assert stats["steps"] == 7
    per_epoch = len(pairs) // 256 + (len(pairs) % 256 >= 2)  # a one-pair tail is skipped
    uncapped = content_model.TrainSettings(dim=8, epochs=1, batch_size=256)
    _, stats = content_model.train_encoder(ids, weights, pairs, vocab_size, uncapped, seed=1)
    assert stats["steps"] == per_epoch


def test_two_builds_with_one_seed_give_identical_item_vectors(tmp_path, demo_small):
    pytest.importorskip("torch")
    import numpy as np

    params = {"epochs": 1, "max_steps": 15, "dim": 16}
    items = list(demo_small.items)[:50]
    vectors, hashes = [], []
    for run in ("a", "b"):
        ch = build_and_load(tmp_path / run, demo_small, "content", params=params)
        try:
            vectors.append(ch.encode_items(items))
            manifest = ch.ctx.open_bundle().manifest
            hashes.append(manifest["model_hashes"]["state_dict"])
            assert manifest["training"]["steps"] == 15
        finally:
            ch.close()
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert hashes[0] == hashes[1]
    # and the comparison can fail: another step budget trains other weights
    ch = build_and_load(tmp_path / "c", demo_small, "content", params={**params, "max_steps": 14})
    try:
        assert not np.array_equal(ch.encode_items(items), vectors[0])
    finally:
        ch.close()


def test_a_text_encoder_quicker_than_the_batchers_wait_encodes_on_the_calling_thread(
    channel, demo_small, capsys
):
    """content's bag-of-terms encoder runs a text in a few hundredths of a millisecond,
    far under the micro-batcher's wait for company (2 ms): warm-up measures it, closes
    the batcher and logs why; texts are then encoded on the channel call's thread. The
    same channel with an encoder made slower than the bound keeps its batcher."""
    import threading

    from recall_engine.sdk.vector_channel import GATHER_TEXTS_ABOVE_S

    quick = reopen(channel)
    try:
        assert quick._batcher is None  # instantiate() loaded and warmed it up
        threads: list[str] = []
        encode = quick.encode_texts

        def spy(texts):
            threads.append(threading.current_thread().name)
            return encode(texts)

        quick.encode_texts = spy  # type: ignore[method-assign]
        got = quick.recall(Query(text="rockets and astronauts"), 20)
        assert share(demo_small, got.item_ids, "space") >= 0.5
        assert threads == [threading.current_thread().name]
    finally:
        quick.close()
    events = parse_events(capsys.readouterr().err, "text_encoder_inline")
    assert events and events[-1]["ms_per_text"] < GATHER_TEXTS_ABOVE_S * 1000

    slow = reopen(channel)  # warmed up quick: give it a slow encoder and warm it again
    try:
        slow._batcher = MicroBatcher(slow.encode_texts, max_batch=8, name="slow")
        encode_slowly = slow.encode_texts

        def slower(texts):
            time.sleep(2 * GATHER_TEXTS_ABOVE_S)
            return encode_slowly(texts)

        slow.encode_texts = slower  # type: ignore[method-assign]
        slow.warmup()
        assert slow._batcher is not None
    finally:
        slow.close()

"""The built-in `content` channel: contract, known answers on the demo topics (cold
items included), build/serve parity, online upserts and deletes (also across a
restart), torch-free serving, and the pure-Python metadata featuriser."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from recall_engine.offline.data.interactions import Interactions
from recall_engine.plugins.content.terms import Vocabulary, item_terms, query_terms
from recall_engine.sdk.channel import ItemRecord, Query
from tests.channel_contract import ChannelContract
from tests.conftest import ROOT, build_and_load, reopen

NEW_JAZZ = ItemRecord(
    "new-jazz",
    "Bebop Saxophone Solos and Late-Night Jam Sessions",
    "A swinging listening guide to Charlie Parker records.",
    ("jazz", "bebop"),
)


def warm_items(demo, topic: str, n: int = 8) -> tuple[str, ...]:
    cold = set(demo.cold_items)
    return tuple(sorted(i for i, t in demo.topics.items() if t == topic and i not in cold)[:n])


def share(demo, ids, topic: str) -> float:
    return sum(
        demo.topics.get(i, "jazz" if i == NEW_JAZZ.item_id else None) == topic for i in ids
    ) / max(1, len(ids))


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


class TestContentContract(ChannelContract):
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


def test_served_vectors_equal_built_vectors(channel, demo_small):
    items = [channel.ctx.catalog.get(i) for i in ("item-0001", demo_small.cold_items[0])]
    served = channel.encode_items(items)
    for item, vector in zip(items, served, strict=True):
        np.testing.assert_allclose(vector, channel.index.vector(item.item_id), atol=1e-5)


def test_text_with_no_known_word_is_not_accepted(channel):
    assert not channel.accepts(Query(text="zzyzx qwertyuiop"))
    assert channel.recall(Query(text="zzyzx qwertyuiop"), 5).item_ids == ()


def test_upserted_new_item_is_recallable_at_once_and_after_restart(channel, demo_small):
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
    restarted = reopen(channel)
    try:
        assert (
            restarted.recall(Query(history=(NEW_JAZZ.item_id,)), 1).item_ids[0] == NEW_JAZZ.item_id
        )
        assert int(restarted.info().details["reconciled_added"]) >= 1
    finally:
        restarted.close()


def test_deleted_item_never_comes_back_even_after_restart(channel, demo_small):
    history = warm_items(demo_small, "space")
    query = Query(history=history, exclude=frozenset(history))
    live = reopen(channel)
    try:
        target = live.recall(query, 1).item_ids[0]
        assert live.delete_items([target]) == 1
        live.ctx.catalog.delete([target])
        assert target not in live.recall(query, 100).item_ids
        assert not live.accepts(Query(history=(target,)))
    finally:
        live.close()
    restarted = reopen(channel)
    try:
        assert target not in restarted.recall(query, 100).item_ids
        assert not restarted.accepts(Query(history=(target,)))
    finally:
        restarted.close()


def test_concurrent_searches_during_upserts_raise_nothing(channel, demo_small):
    live = reopen(channel)
    history = warm_items(demo_small, "cooking", 4)
    stop = threading.Event()
    errors: list[BaseException] = []

    def search() -> None:
        try:
            while not stop.is_set():
                live.recall(Query(history=history), 10)
                live.recall(Query(text="pasta recipe"), 10)
                live.recall_batch([Query(text="bread"), Query(history=history[:1])], 10)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            item = ItemRecord(
                f"stream-{i}",
                f"Homemade pasta night {i}",
                "Fresh tagliatelle with a slow-simmered tomato sauce.",
                ("cooking", "pasta"),
            )
            live.ctx.catalog.upsert([item])
            live.upsert_items([item])
            if i % 2:
                live.delete_items([f"stream-{i - 1}"])
                live.ctx.catalog.delete([f"stream-{i - 1}"])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        live.close()
    assert not errors, errors[0]


NO_TORCH = """
import importlib.abc, sys
from pathlib import Path

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "transformers"):
            raise ImportError(f"serving imported {name}")
        return None

sys.meta_path.insert(0, BlockTorch())
from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.channel import ChannelContext, ItemRecord, Query
from recall_engine.serving.registry import discover, instantiate, load_factory, resolve

root, name = Path(sys.argv[1]), sys.argv[2]
ctx = ChannelContext(name=name, plugin=name, params={}, artifacts=root / name,
                     catalog=Catalog.load(root / "catalog"))
channel = instantiate(name, load_factory(resolve(discover(), name)), ctx)
assert channel.recall(Query(text="jazz saxophone"), 5).item_ids
assert channel.upsert_items([ItemRecord("no-torch", "Bebop nights", "Jazz records", ("jazz",))])
channel.close()
print("served without torch")
"""


def test_serving_does_not_import_torch(channel):
    root = channel.ctx.artifacts.parent
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(root), channel.ctx.name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served without torch" in done.stdout


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

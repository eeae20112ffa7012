"""The built-in `llm` channel: contract, known answers on the demo topics, online
upserts and deletes (also across a restart), and torch-free serving."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace

import pytest

from recall_engine.sdk.channel import ItemRecord, Query
from recall_engine.serving.registry import discover, instantiate, load_factory, resolve
from tests.channel_contract import ChannelContract
from tests.conftest import ROOT, build_and_load, reopen

TOPIC_TEXTS = {
    "space": "rockets, astronauts and telescopes exploring the planets",
    "jazz": "saxophone solos and swing records from a smoky club",
    "cooking": "an easy recipe for dinner with fresh ingredients",
    "finance": "saving money, interest rates and investing for retirement",
}
BEES = ItemRecord(
    "new-beekeeping",
    "Keeping Bees: Hives, Honeycomb and the Queen",
    "A beekeeper's guide to wooden hives, honeycomb frames, swarming colonies "
    "and harvesting raw honey.",
    ("hobbies",),
)
BEES_QUERY = Query(text="how do I harvest honey from my beehive")


def warm_items(demo, topic: str, n: int = 8) -> tuple[str, ...]:
    cold = set(demo.cold_items)
    return tuple(sorted(i for i, t in demo.topics.items() if t == topic and i not in cold)[:n])


def share(demo, ids, topic: str) -> float:
    return sum(demo.topics.get(i) == topic for i in ids) / max(1, len(ids))


@pytest.fixture(scope="module")
def channel(tmp_path_factory, demo_small, minilm_onnx):
    ch = build_and_load(
        tmp_path_factory.mktemp("llm"),
        demo_small,
        "llm",
        params={"model_dir": str(minilm_onnx), "variants": ["int8"]},
    )
    yield ch
    ch.close()


@pytest.fixture()
def queries(demo_small):
    jazz, space = warm_items(demo_small, "jazz"), warm_items(demo_small, "space")
    return [
        Query(user_id="u1", history=jazz, exclude=frozenset(jazz)),
        Query(text=TOPIC_TEXTS["space"]),
        Query(
            history=space[:3], text="photographs of distant galaxies", exclude=frozenset(space[:3])
        ),
        Query(history=("no-such-item", *jazz[:2])),
    ]


class TestLLMContract(ChannelContract):
    pass


def test_history_in_one_topic_recalls_mostly_that_topic(channel, demo_small):
    for topic in sorted(set(demo_small.topics.values())):
        history = warm_items(demo_small, topic)
        got = channel.recall(Query(history=history, exclude=frozenset(history)), 20)
        assert share(demo_small, got.item_ids, topic) >= 0.7, (topic, got.item_ids)


def test_free_text_about_a_topic_recalls_that_topic(channel, demo_small):
    for topic, text in TOPIC_TEXTS.items():
        got = channel.recall(Query(text=text), 20)
        assert share(demo_small, got.item_ids, topic) >= 0.7, (topic, got.item_ids)


def test_cold_items_are_recallable(channel, demo_small):
    catalog = channel.ctx.catalog
    for item_id in demo_small.cold_items[:3]:
        item = catalog.get(item_id)
        assert channel.accepts(Query(history=(item_id,)))  # it has a vector
        got = channel.recall(Query(text=f"{item.title}. {item.text}"), 10)
        assert item_id in got.item_ids


def test_batch_encodes_texts_once(channel, monkeypatch):
    calls = []
    real = channel.encode_texts
    monkeypatch.setattr(
        channel, "encode_texts", lambda texts: calls.append(len(texts)) or real(texts)
    )
    channel.recall_batch([Query(text=t) for t in TOPIC_TEXTS.values()], 5)
    assert calls == [len(TOPIC_TEXTS)]


def test_info_names_encoder_device_and_precision(channel):
    details = channel.info().details
    assert details["dims"] == "384" and details["metric"] == "cos"
    assert details["device"] in ("cpu", "cuda") and details["precision"] == "fp32"
    assert "ExecutionProvider" in details["providers"]


def test_int8_precision_serves_the_int8_graph(channel, demo_small):
    ctx = replace(channel.ctx, params={"precision": "int8"})
    int8 = instantiate(ctx.plugin, load_factory(resolve(discover(), ctx.plugin)), ctx)
    try:
        assert int8.info().details["precision"] == "int8"
        got = int8.recall(Query(text=TOPIC_TEXTS["jazz"]), 20)
        assert share(demo_small, got.item_ids, "jazz") >= 0.7
    finally:
        int8.close()


def test_unknown_params_are_rejected(channel):
    with pytest.raises(ValueError, match="text_wieght"):
        type(channel)(replace(channel.ctx, params={"text_wieght": 0.3}))
    with pytest.raises(ValueError, match="precision"):
        type(channel)(replace(channel.ctx, params={"precision": "fp8"}))


def test_upserted_item_is_recalled_by_text_at_once_and_after_restart(channel):
    live = reopen(channel)
    try:
        assert BEES.item_id not in live.recall(BEES_QUERY, 5).item_ids
        live.ctx.catalog.upsert([BEES])  # what Engine.upsert_items does
        assert live.upsert_items([BEES]) == 1
        assert live.recall(BEES_QUERY, 3).item_ids[0] == BEES.item_id
    finally:
        live.close()
    restarted = reopen(channel)
    try:
        assert restarted.recall(BEES_QUERY, 3).item_ids[0] == BEES.item_id
        assert int(restarted.info().details["reconciled_added"]) >= 1
    finally:
        restarted.close()


def test_deleted_item_never_comes_back_even_after_restart(channel):
    query = Query(text=TOPIC_TEXTS["jazz"])
    live = reopen(channel)
    try:
        target = live.recall(query, 1).item_ids[0]
        assert live.delete_items([target]) == 1  # Engine.delete_items: channels first,
        live.ctx.catalog.delete([target])  # then the catalogue
        assert target not in live.recall(query, 50).item_ids
        assert not live.accepts(Query(history=(target,)))
    finally:
        live.close()
    restarted = reopen(channel)
    try:
        assert target not in restarted.recall(query, 50).item_ids
        assert not restarted.accepts(Query(history=(target,)))
    finally:
        restarted.close()


def test_concurrent_searches_during_upserts_raise_nothing(channel, demo_small):
    live = reopen(channel)
    history = warm_items(demo_small, "space", 4)
    stop = threading.Event()
    errors: list[BaseException] = []

    def search() -> None:
        try:
            while not stop.is_set():
                live.recall(Query(text=TOPIC_TEXTS["space"]), 10)
                live.recall(Query(history=history), 10)
                live.recall_batch([Query(text="jazz"), Query(history=history[:1])], 10)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            item = ItemRecord(
                f"stream-{i}",
                f"Orbital launch diary {i}",
                "Notes from the launch pad on reusable rockets.",
                ("space",),
            )
            live.ctx.catalog.upsert([item])
            live.upsert_items([item, item])
            if i % 2:
                live.delete_items([f"stream-{i - 1}"])
                live.ctx.catalog.delete([f"stream-{i - 1}"])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        live.close()
    assert not errors, errors[0]
    assert not any(t.is_alive() for t in threads)


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

root, name, text = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ChannelContext(name=name, plugin=name, params={}, artifacts=root / name,
                     catalog=Catalog.load(root / "catalog"))
channel = instantiate(name, load_factory(resolve(discover(), name)), ctx)
assert channel.recall(Query(text=text), 5).item_ids
assert channel.upsert_items([ItemRecord("no-torch", "Bebop nights", "Jazz records", ("jazz",))])
channel.close()
print("served without torch")
"""


def test_serving_does_not_import_torch(channel):
    root = channel.ctx.artifacts.parent
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(root), channel.ctx.name, TOPIC_TEXTS["jazz"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served without torch" in done.stdout

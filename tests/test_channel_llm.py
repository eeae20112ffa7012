"""The built-in `llm` channel: the shipped vector-channel contract (build/serve parity,
online upserts and deletes, restarts, threads, one encoder call per batch), known
answers on the demo topics (cold and newly upserted items included), precisions, params,
and torch-free serving."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recall_engine.sdk.channel import ItemRecord, Query
from recall_engine.sdk.testing import VectorChannelContract
from recall_engine.serving.registry import discover, instantiate, load_factory, resolve
from tests.helpers import build_and_load, reopen, serve_without_torch, topic_share, warm_items

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


def share(demo, ids, topic: str) -> float:
    return topic_share(demo, ids, topic)


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


class TestLLMContract(VectorChannelContract):
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


def test_info_names_encoder_device_and_precision(channel):
    details = channel.info().details
    assert details["dims"] == "384" and details["metric"] == "cos"
    assert details["device"] in ("cpu", "cuda") and details["precision"] in ("int8", "fp16", "fp32")
    assert "ExecutionProvider" in details["providers"]


def test_auto_precision_on_cpu_serves_int8_because_it_agrees_with_fp32(channel, minilm_onnx):
    """Issue 14: the CPU default is the fastest variant whose quality loss is measured
    and stated: int8, whose mean cosine to fp32 on real sentences is >= 0.99."""
    from recall_engine.runtime.model_manifest import ModelManifest

    if channel.info().details["device"] != "cpu":
        pytest.skip("a GPU serves fp16 under precision=auto")
    int8 = ModelManifest.read(minilm_onnx).variants["int8"]
    assert int8.cosine_vs_fp32_mean is not None and int8.cosine_vs_fp32_mean >= 0.99
    assert channel.info().details["precision"] == "int8"


def test_int8_precision_serves_the_int8_graph(channel, demo_small):
    ctx = replace(channel.ctx, params={"precision": "int8"})
    int8 = instantiate(ctx.plugin, load_factory(resolve(discover(), ctx.plugin)), ctx)
    try:
        assert int8.info().details["precision"] == "int8"
        got = int8.recall(Query(text=TOPIC_TEXTS["jazz"]), 20)
        assert share(demo_small, got.item_ids, "jazz") >= 0.7
    finally:
        int8.close()


def test_an_int8_encoder_runs_on_the_calling_thread_and_fp32_texts_are_gathered(
    channel, demo_small
):
    """int8 runs one text per encoder run, so there is nothing to gather: the text is
    encoded on the channel call's own thread (no micro-batcher, no hand-off); fp32
    batches, so concurrent texts are gathered by the micro-batcher."""
    import threading

    runs: dict[str, list[str]] = {}
    for precision in ("int8", "fp32"):
        ctx = replace(channel.ctx, params={"precision": precision})
        ch = instantiate(ctx.plugin, load_factory(resolve(discover(), ctx.plugin)), ctx)
        try:
            encode = ch.encoder.encode
            seen = runs.setdefault(precision, [])

            def spy(texts, encode=encode, seen=seen):
                seen.append(threading.current_thread().name)
                return encode(texts)

            ch.encoder.encode = spy  # type: ignore[method-assign]
            got = ch.recall(Query(text=TOPIC_TEXTS["jazz"]), 20)
            assert share(demo_small, got.item_ids, "jazz") >= 0.7
        finally:
            ch.close()
    assert runs["int8"] == [threading.current_thread().name]
    assert len(runs["fp32"]) == 1 and runs["fp32"][0] != threading.current_thread().name


def test_unknown_params_are_rejected(channel):
    with pytest.raises(ValueError, match="text_wieght"):
        type(channel)(replace(channel.ctx, params={"text_wieght": 0.3}))
    with pytest.raises(ValueError, match="precision"):
        type(channel)(replace(channel.ctx, params={"precision": "fp8"}))


def test_an_upserted_new_item_is_recalled_by_what_its_text_says(channel):
    live = reopen(channel)
    try:
        assert BEES.item_id not in live.recall(BEES_QUERY, 5).item_ids
        live.ctx.catalog.upsert([BEES])  # what Engine.upsert_items does
        assert live.upsert_items([BEES]) == 1
        assert live.recall(BEES_QUERY, 3).item_ids[0] == BEES.item_id
    finally:
        live.close()


def test_serving_does_not_import_torch(channel, demo_small):
    jazz = warm_items(demo_small, "jazz", 3)
    got = serve_without_torch(channel, history=jazz, text=TOPIC_TEXTS["jazz"])
    assert got["blocked_loaded"] == [] and got["added"] == 1
    query = Query(history=jazz, text=TOPIC_TEXTS["jazz"], exclude=frozenset(jazz))
    assert got["ids"] == list(channel.recall(query, 10).item_ids)


ENCODER_SERIES = (
    "recall_encoder_batch_size_count",
    "recall_encoder_batch_size_sum",
    "recall_encoder_queue_seconds_count",
    "recall_encoder_queue_seconds_sum",
    "recall_encoder_seconds_count",
    "recall_encoder_seconds_sum",
)


def test_texts_encoded_on_the_calling_thread_are_recorded_as_encoder_batches(channel, demo_small):
    """The int8 encoder runs on the channel call's own thread (no micro-batcher), and
    its runs are recorded in the ``recall_encoder_*`` series under the channel's name as
    the micro-batcher records a batch, so the dashboard's Encoders row shows ``llm``: a
    recall's text is a batch of one that waited 0 s, ``recall_batch``'s texts are one
    batch, and a query without text runs no encoder."""
    from prometheus_client import REGISTRY

    ctx = replace(channel.ctx, params={"precision": "int8"})
    ch = instantiate(ctx.plugin, load_factory(resolve(discover(), ctx.plugin)), ctx)

    def sample(series: str) -> float:
        return REGISTRY.get_sample_value(series, {"encoder": ctx.name}) or 0.0

    jazz = warm_items(demo_small, "jazz", 3)
    try:
        assert ch.text_batch_limit() == 1  # int8: encoded on the calling thread
        before = {series: sample(series) for series in ENCODER_SERIES}
        ch.recall(Query(text=TOPIC_TEXTS["jazz"]), 20)
        ch.recall(Query(history=jazz), 20)
        ch.recall_batch(
            [
                Query(text=TOPIC_TEXTS["space"]),
                Query(history=jazz),
                Query(history=jazz, text=TOPIC_TEXTS["cooking"]),
            ],
            20,
        )
        got = {series: sample(series) - before[series] for series in ENCODER_SERIES}
    finally:
        ch.close()
    assert got["recall_encoder_batch_size_count"] == 2  # the recall's text, recall_batch's
    assert got["recall_encoder_batch_size_sum"] == 3  # texts
    assert got["recall_encoder_queue_seconds_count"] == 3
    assert got["recall_encoder_queue_seconds_sum"] == 0
    assert got["recall_encoder_seconds_count"] == 2
    assert got["recall_encoder_seconds_sum"] > 0


def test_the_int8_query_encoder_runs_on_one_thread_unless_told_otherwise(channel):
    """int8 runs one short text at a time, where ONNX Runtime's pool of one thread per
    core costs more in hand-offs than it saves (docs/reports/2026-12-05-issue-14-speed-per-core.md,
    "One ONNX Runtime thread for int8 MiniLM"): the default (0) means one thread there;
    fp32, which batches, keeps ONNX Runtime's default; a thread count set in the params
    is used as it is."""
    if channel.info().details["device"] != "cpu":
        pytest.skip("a GPU serves fp16 under precision=auto")

    def threads(params: dict) -> tuple[str, int]:
        ctx = replace(channel.ctx, params=params)
        ch = instantiate(ctx.plugin, load_factory(resolve(discover(), ctx.plugin)), ctx)
        try:
            options = ch.encoder.model.session.get_session_options()
            return ch.info().details["precision"], options.intra_op_num_threads
        finally:
            ch.close()

    assert threads({"precision": "int8"}) == ("int8", 1)
    assert threads({"precision": "fp32"}) == ("fp32", 0)
    assert threads({"precision": "int8", "intra_op_threads": 2}) == ("int8", 2)

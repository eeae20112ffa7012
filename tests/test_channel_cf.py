"""The built-in `cf` channel: the shipped contract, known answers on the demo data, each
mode alone, params, and serving without PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from recall_engine.plugins.cf import CFChannel
from recall_engine.plugins.cf.histories import recency_weights
from recall_engine.plugins.cf.item2item import DENSE_MAX_ITEMS, NeighbourTable
from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.channel import ChannelContext, Query
from recall_engine.sdk.testing import ChannelContract
from tests.helpers import ROOT, build_and_load, require

# Small and quick: the demo has 400 items and ~14k interactions.
FAST = {"epochs": 3, "dim": 32, "sequence_length": 20, "batch_size": 256}


def require_build(**params) -> None:
    """Building cf needs scipy (item-to-item) and, for the two-tower mode, PyTorch: the
    [train] extra. Serving needs neither (test_serving_never_imports_torch)."""
    require("scipy", *(["torch"] if params.get("two_tower", True) else []), extra="train")


@pytest.fixture(scope="module")
def channel(tmp_path_factory, demo_small):
    require_build(**FAST)
    ch = build_and_load(tmp_path_factory.mktemp("cf"), demo_small, "cf", params=FAST)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_small):
    """``built(**params)``: a channel built and loaded once per params for the module."""
    cache = {}

    def get(**params):
        require_build(**params)
        key = json.dumps(params, sort_keys=True)
        if key not in cache:
            cache[key] = build_and_load(
                tmp_path_factory.mktemp("cf_variant"), demo_small, "cf", params=params
            )
        return cache[key]

    yield get
    for ch in cache.values():
        ch.close()


@pytest.fixture(scope="module")
def item2item_only(built):
    return built(two_tower=False)


@pytest.fixture(scope="module")
def two_tower_only(built):
    return built(**FAST, item2item=False)


def user_queries(demo, n: int = 6, length: int = 30) -> list[Query]:
    data = demo.interactions
    out = []
    for user, rows in sorted(data.by_user().items())[:n]:
        rows = rows[-length:]
        history = tuple(data.item_ids[rows].tolist())
        out.append(
            Query(
                user_id=user,
                history=history,
                timestamps=tuple(data.timestamps[rows].tolist()),
                exclude=frozenset(history),
            )
        )
    return out


@pytest.fixture()
def queries(demo_small):
    return user_queries(demo_small)


class TestCFContract(ChannelContract):
    pass


# -- known answers ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ease", "cosine", "swing"])
def test_item2item_finds_the_partner_of_a_co_consumed_pair(built, demo_small, method):
    ch = built(two_tower=False, method=method)
    assert ch.info().details["method"] == method
    pairs = demo_small.co_pairs
    found = [
        b in ch.recall(Query(history=(a,), exclude=frozenset({a})), 10).item_ids for a, b in pairs
    ]
    assert all(found), [p for p, ok in zip(pairs, found, strict=True) if not ok]


def test_combined_channel_keeps_the_pair_partner_in_its_top_10(channel, demo_small):
    found = [
        b in channel.recall(Query(history=(a,), exclude=frozenset({a})), 10).item_ids
        for a, b in demo_small.co_pairs
    ]
    assert sum(found) >= 0.9 * len(found)


def test_item2item_follows_catalogue_deletes_and_upserts_over_mapped_columns(tmp_path, demo_small):
    """cf finds its vocabulary's rows in the catalogue's columns once at load and
    filters its item-to-item candidates by them: an item deleted after load must still
    leave its lists, with or without a category filter, and come back when upserted."""
    require_build(two_tower=False)
    ch = build_and_load(tmp_path, demo_small, "cf", params={"two_tower": False})
    try:
        catalog = ch.ctx.catalog
        assert catalog.base_rows(["x"]) is not None  # mapped columns
        q = user_queries(demo_small, n=1)[0]
        before = ch.recall(q, 20).item_ids
        gone = list(before[:3])
        records = [catalog.get(i) for i in gone]
        catalog.delete(gone)
        after = ch.recall(q, 20).item_ids
        assert not set(gone) & set(after) and len(after) == 20
        # the rest keep their order (the mix's lists are cut at k before they are
        # merged, so items past the old cut may now enter between them)
        kept = [i for i in after if i in before]
        assert kept == [i for i in before if i in kept] and len(kept) >= 15
        topic = records[0].categories[0]
        filtered = ch.recall(replace(q, categories=frozenset({topic})), 20).item_ids
        assert filtered and not set(gone) & set(filtered)
        assert all(topic in catalog.categories(i) for i in filtered)
        catalog.upsert(records)
        assert ch.recall(q, 20).item_ids == before
    finally:
        ch.close()


def popular_items_of(demo, topic: str, n: int) -> tuple[str, ...]:
    counts = Counter(i for i in demo.interactions.item_ids.tolist() if demo.topics[i] == topic)
    return tuple(item for item, _ in counts.most_common(n))


@pytest.mark.parametrize("encoder", ["attention", "mean"])
@pytest.mark.parametrize("topic", ["space", "jazz"])
def test_two_tower_serves_an_unseen_user_from_the_request_history(
    built, demo_small, topic, encoder
):
    ch = built(**FAST, item2item=False, encoder=encoder)
    history = popular_items_of(demo_small, topic, 8)[::-1]
    query = Query(user_id="never-seen-user", history=history, exclude=frozenset(history))
    assert "never-seen-user" not in set(demo_small.interactions.user_ids.tolist())
    assert ch.accepts(query)
    got = ch.recall(query, 20)
    assert len(got) == 20
    share = np.mean([demo_small.topics[i] == topic for i in got.item_ids])
    assert share >= 0.7, (topic, [demo_small.topics[i] for i in got.item_ids])


def test_each_mode_alone_answers_and_reports_its_mode(item2item_only, two_tower_only, demo_small):
    for ch, mode in ((item2item_only, "item2item"), (two_tower_only, "two_tower")):
        info = ch.info()
        assert info.details["modes"] == mode
        assert info.item_count > 0
        for q in user_queries(demo_small, 3):
            assert len(ch.recall(q, 15)) == 15
    assert item2item_only.info().details["method"] == "ease"
    assert two_tower_only.info().details["dims"] == str(FAST["dim"])


def test_combined_info_names_both_modes_and_the_merge(built):
    details = built(**FAST, auto_mix=False).info().details
    assert details["modes"] == "item2item,two_tower"
    assert details["merge"] == "rrf"
    assert details["metric"] == "ip"
    assert details["mix_source"] == "config" and details["scorer"] == "neighbours"


def test_unknown_history_is_not_accepted_and_gets_nothing(channel):
    assert not channel.accepts(Query())
    assert not channel.accepts(Query(history=("no-such-item",)))
    assert len(channel.recall(Query(history=("no-such-item",)), 10)) == 0


def test_recency_weights_newest_item_weighs_most():
    w = recency_weights(np.arange(3), 3, half_life=1.0)
    np.testing.assert_allclose(w, [0.25, 0.5, 1.0])
    day = 86_400
    w = recency_weights(np.arange(2), 2, half_life=1.0, timestamps=(0, 2 * day), half_life_days=2.0)
    np.testing.assert_allclose(w, [0.5, 1.0])


@pytest.mark.parametrize("n", [2_000, DENSE_MAX_ITEMS + 1])
def test_item2item_aggregation_sums_weighted_similarities_per_candidate(n):
    """Both paths (a dense bincount up to DENSE_MAX_ITEMS items, np.unique beyond) give
    every neighbour of the history once, scored sum(weight * sim). Its speed is
    bench/channel_cost.py's business."""
    rng = np.random.default_rng(0)
    per = 20
    table = NeighbourTable(
        np.arange(0, (n + 1) * per, per, dtype=np.int64),
        rng.integers(0, n, n * per).astype(np.int32),
        rng.random(n * per).astype(np.float32) + 0.01,
    )
    history = rng.choice(n, 50, replace=False)
    weights = np.power(0.5, np.arange(50)[::-1] / 10).astype(np.float32)
    want: dict[int, float] = {}
    for h, w in zip(history.tolist(), weights.tolist(), strict=True):
        row = slice(int(table.indptr[h]), int(table.indptr[h + 1]))
        for item, sim in zip(table.indices[row].tolist(), table.sims[row].tolist(), strict=True):
            want[item] = want.get(item, 0.0) + w * sim
    cand, scores = table.aggregate(history, weights)
    assert sorted(cand.tolist()) == sorted(want)
    np.testing.assert_allclose(scores, [want[c] for c in cand.tolist()], rtol=1e-5)


def test_recall_batch_of_mixed_queries_keeps_their_order(channel, demo_small):
    qs = user_queries(demo_small, 4)
    mixed = [
        qs[0],
        Query(history=("no-such-item",)),
        qs[1],
        replace(qs[2], categories=frozenset({"jazz"})),
    ]
    got = channel.recall_batch(mixed, 10)
    assert [list(g.item_ids) for g in got] == [list(channel.recall(q, 10).item_ids) for q in mixed]
    assert len(got[1]) == 0


# -- params and bundles ----------------------------------------------------------------


def make(params: dict, artifacts=None) -> CFChannel:
    return CFChannel(
        ChannelContext(
            name="cf", plugin="cf", params=params, artifacts=artifacts, catalog=Catalog()
        )
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("neighbours", 0),
        ("neighbours", "many"),
        ("method", "svd"),
        ("item2item", "yes"),
        ("ease_lambda", 0),
        ("half_life", -1),
        ("dim", 1.5),
        ("epochs", True),
        ("temperature", float("nan")),
        ("encoder", "lstm"),
        ("event_weights", {"like": -1}),
        ("two_tower_weight", -0.5),
        ("device", "tpu"),
        ("sparse_updates", "yes"),
    ],
)
def test_bad_params_are_rejected_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"channels\.cf\.params\.{key}\b"):
        make({key: value})


def test_unknown_params_and_no_mode_are_rejected():
    unknown = r"^channels\.cf\.params\.factors: unknown key \(known: item2item, two_tower, "
    with pytest.raises(ValueError, match=unknown):
        make({"factors": 64})
    with pytest.raises(ValueError, match=r"channels\.cf\.params\.item2item"):
        make({"item2item": False, "two_tower": False})


def test_enabling_a_mode_the_bundle_lacks_fails_load_naming_the_file(item2item_only):
    ch = make({"auto_mix": False}, artifacts=item2item_only.ctx.artifacts)
    with pytest.raises(ValueError, match=r"encoder/manifest\.json: missing.*two_tower"):
        ch.load()
    # with auto_mix (the default) the bundle's own mix says which parts serve
    ch = make({}, artifacts=item2item_only.ctx.artifacts)
    ch.load()
    assert ch.info().details["modes"] == "item2item"


def test_two_tower_training_is_deterministic_for_a_seed(demo_small):
    pytest.importorskip("torch")
    from recall_engine.exporters.torch_export import state_dict_sha256
    from recall_engine.plugins.cf import two_tower
    from recall_engine.plugins.cf.histories import training_log
    from recall_engine.plugins.cf.params import parse_params

    data = demo_small.interactions
    vocab, log = training_log(data.subset(np.arange(3000)))
    params = parse_params(
        "cf",
        {"epochs": 1, "dim": 8, "sequence_length": 5, "batch_size": 64, "encoder": "attention"},
    )
    first = state_dict_sha256(two_tower.train(vocab, log, params, seed=3)[0])
    again = state_dict_sha256(two_tower.train(vocab, log, params, seed=3)[0])
    other = state_dict_sha256(two_tower.train(vocab, log, params, seed=4)[0])
    assert first == again != other
    # sparse_updates (the default) gives the item table SparseAdam: other weights
    dense = replace(params, sparse_updates=False)
    assert params.sparse_updates
    assert state_dict_sha256(two_tower.train(vocab, log, dense, seed=3)[0]) != first
    optimisers = two_tower._optimisers(two_tower.HistoryEncoder(10, 8, 5, sparse=True), params)
    assert [type(o).__name__ for o in optimisers] == ["SparseAdam", "Adam"]


SERVE_WITHOUT_TORCH = """
import importlib.abc, json, sys
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "scipy"):
            raise ImportError(f"{name} is blocked: serving must not import it")
        return None

sys.meta_path.insert(0, Block())
from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.channel import ChannelContext, Query
from recall_engine.plugins.cf import CFChannel

artifacts, catalog, history = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
ctx = ChannelContext("cf", "cf", json.loads(sys.argv[4]), artifacts, Catalog.load(catalog))
ch = CFChannel(ctx)
ch.load()
ch.warmup()
got = ch.recall(Query(history=tuple(history), exclude=frozenset(history)), 10)
print(json.dumps({"ids": list(got.item_ids), "torch": "torch" in sys.modules}))
"""


def test_serving_never_imports_torch(channel, demo_small):
    query = user_queries(demo_small, 1)[0]
    artifacts = channel.ctx.artifacts
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_WITHOUT_TORCH,
            str(artifacts),
            str(artifacts.parent / "catalog"),
            json.dumps(list(query.history)),
            json.dumps(FAST),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    assert result["ids"] == list(channel.recall(query, 10).item_ids)


@pytest.mark.parametrize("encoder", ["attention", "mean"])
def test_exported_encoder_matches_torch_on_padded_histories(tmp_path, demo_small, encoder):
    """The exporter's own parity check feeds all-true masks; serving pads on the left."""
    torch = pytest.importorskip("torch")
    from recall_engine.plugins.cf import two_tower
    from recall_engine.plugins.cf.histories import pad_left, training_log
    from recall_engine.plugins.cf.params import parse_params
    from recall_engine.runtime.encoders import OnnxModel

    vocab, log = training_log(demo_small.interactions.subset(np.arange(2000)))
    params = parse_params(
        "cf", {"epochs": 1, "dim": 8, "sequence_length": 6, "batch_size": 64, "encoder": encoder}
    )
    model, _ = two_tower.train(vocab, log, params)
    two_tower.export(model, vocab, params, tmp_path)
    histories = [np.arange(1), np.arange(3, 7), np.arange(10), np.zeros(0, np.int64)]
    ids, mask = pad_left(histories, 6)
    onnx_out = OnnxModel(tmp_path / "encoder", device="cpu").run({"item_ids": ids, "mask": mask})
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(onnx_out, want, atol=1e-5)
    assert np.isfinite(onnx_out).all()


@pytest.mark.parametrize("dtype", ["bf16", "i8"])
def test_two_tower_index_in_a_smaller_dtype_serves_the_same_topic(built, demo_small, dtype):
    ch = built(**FAST, item2item=False, index_dtype=dtype, expansion_search=128)
    details = ch.info().details
    assert details["index_dtype"] == dtype and details["index_simd"]
    assert details["metric"] == ("cos" if dtype == "i8" else "ip")
    history = popular_items_of(demo_small, "space", 8)[::-1]
    got = ch.recall(Query(user_id="u", history=history, exclude=frozenset(history)), 20)
    assert len(got) == 20 and not set(got.item_ids) & set(history)
    assert np.mean([demo_small.topics[i] == "space" for i in got.item_ids]) >= 0.7


def _rrf_reference(lists, k, rrf_k=60.0):
    """The definition, item by item (the merge's first, loop-based version)."""
    score, best = {}, {}
    for mode, (ids, weight) in enumerate(lists):
        if weight <= 0:
            continue
        for rank, item in enumerate(ids, 1):
            score[item] = score.get(item, 0.0) + weight / (rrf_k + rank)
            if item not in best or (rank, mode) < best[item]:
                best[item] = (rank, mode)
    fused = {item: np.float32(s) for item, s in score.items()}
    order = sorted(score, key=lambda i: (-fused[i], best[i], i))[:k]
    return order, np.asarray([fused[i] for i in order], dtype=np.float32)


def test_vectorised_rrf_merge_matches_the_definition_on_random_lists():
    from recall_engine.plugins.cf.merge import rrf

    rng = np.random.default_rng(5)
    for _ in range(2000):
        universe = [f"i{n}" for n in range(int(rng.integers(1, 60)))]
        lists = [
            (
                list(
                    rng.choice(
                        universe, size=int(rng.integers(0, len(universe) + 1)), replace=False
                    )
                ),
                float(rng.choice([0.0, 0.5, 1.0, 2.0])),
            )
            for _ in range(int(rng.integers(1, 4)))
        ]
        k = int(rng.integers(1, 80))
        got_ids, got_scores = rrf(lists, k)
        want_ids, want_scores = _rrf_reference(lists, k)
        assert got_ids == want_ids
        np.testing.assert_array_equal(got_scores, want_scores)


def test_a_sealed_bundle_whose_two_tower_index_holds_nan_is_refused_at_load(two_tower_only):
    """The digests prove the files are the ones the build sealed; the self-check proves
    they work: a bundle sealed around an index with NaN rows (a broken build) is refused
    by ``load``, naming the index, before it can serve."""
    import shutil

    from recall_engine.runtime.artifacts import ArtifactStore
    from recall_engine.runtime.index import VectorIndex
    from recall_engine.runtime.index_check import IndexCheckError

    folder = two_tower_only.ctx.artifacts
    store = ArtifactStore(folder.parent)
    good = store.open(folder.name, two_tower_only.info().version)
    reserved = {"schema_version", "channel", "version", "created_at", "files"}
    with store.new_version(folder.name, make_current=False) as writer:
        for name in good.manifest["files"]:
            (writer.path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(good.path / name, writer.path / name)
        index_dir = writer.path / "index"
        index = VectorIndex.load(index_dir)
        keys = np.arange(0, 8, dtype=np.uint64)
        index._index.remove(keys)  # what a broken build could store (add() refuses NaN)
        index._index.add(keys, np.full((len(keys), index.dim), np.nan, dtype=np.float32))
        index.save(index_dir)
        writer.update(**{k: v for k, v in good.manifest.items() if k not in reserved})
        bad = writer.commit()
    ctx = replace(two_tower_only.ctx, version=bad.version)
    channel = CFChannel(ctx)
    with pytest.raises(IndexCheckError, match=rf"^cf/{bad.version}/index/index.json: "):
        channel.load()


# -- the build's choice of mix (plugins/cf/mix.py) ---------------------------------------


def series_world(ordered: bool, *, n_series: int = 40, length: int = 25, n_users: int = 300):
    """Items are episodes of series; each user watches three series from episode 1 on.
    ``ordered``: one series after the other, episode after episode, so the next items
    follow the last ones; otherwise the same rows in a shuffled time order, so order
    carries no signal. Same catalogue and co-occurrences either way."""
    from types import SimpleNamespace

    from recall_engine.offline.data.interactions import Interactions
    from recall_engine.sdk.channel import ItemRecord

    rng = np.random.default_rng(7)
    users, items = [], []
    for u in range(n_users):
        seq = [
            f"s{s:02d}e{e:02d}"
            for s in rng.choice(n_series, 3, replace=False).tolist()
            for e in range(int(rng.integers(8, length + 1)))
        ]
        if not ordered:
            rng.shuffle(seq)
        users += [f"u{u:03d}"] * len(seq)
        items += seq
    stamps = np.concatenate([np.arange(users.count(u)) for u in dict.fromkeys(users)])
    log = Interactions(users, items, 1_000_000 + 3600 * stamps)
    catalog = [ItemRecord(i, i) for i in sorted(set(items))]
    return SimpleNamespace(interactions=log, items=catalog)


# item-to-item only (fast), scored at 10: every candidate list would hold a user's whole
# neighbourhood at 100 on this small catalogue
SERIES_PARAMS = {"two_tower": False, "validation_k": 10}


@pytest.fixture(scope="module")
def series_choices():
    require("scipy", extra="train")
    from recall_engine.plugins.cf import mix
    from recall_engine.plugins.cf.histories import training_log
    from recall_engine.plugins.cf.params import parse_params

    params = parse_params("cf", SERIES_PARAMS)
    out = {}
    for ordered in (False, True):
        vocab, data = training_log(series_world(ordered).interactions)
        out[ordered] = mix.select(params, data, len(vocab), seed=0, two_tower_lists=None)
    return out


def test_mix_picks_no_recency_when_order_carries_no_signal(series_choices):
    choice = series_choices[False]
    assert choice.mix.full_weight == 1.0
    assert choice.mix.recent_weight <= 0.25, choice.report["top"]
    # and it is no worse than EASE (the full list alone) on either target
    for target in ("temporal", "random"):
        assert choice.report["chosen_recall"][target] >= choice.report["full_only_recall"][target]


def test_mix_picks_recency_when_the_next_items_follow_the_last_ones(series_choices):
    choice = series_choices[True]
    assert choice.mix.recent_weight > 0, choice.report["top"]
    chosen, full = choice.report["chosen_recall"], choice.report["full_only_recall"]
    assert chosen["temporal"] > full["temporal"] + 0.2, choice.report["top"]
    # the random target pays a little for it, not half
    assert chosen["random"] > 0.8 * full["random"]


def test_the_choice_prefers_a_mix_at_least_as_good_as_ease_when_it_costs_little():
    from recall_engine.plugins.cf.mix import FLOOR_TOLERANCE, Mix, choose

    ease = (Mix(1, 0, 0, 0), {"temporal": 0.50, "random": 0.70})
    compromise = (Mix(1, 1, 10, 0), {"temporal": 0.60, "random": 0.69})  # maximin best
    safe = (Mix(1, 0.25, 10, 0), {"temporal": 0.56, "random": 0.701})
    index, scores = choose([ease, compromise, safe], reference=0)
    assert index == 2 and scores[1] - scores[2] <= FLOOR_TOLERANCE
    timid = (Mix(1, 0.25, 10, 0), {"temporal": 0.51, "random": 0.701})  # 0.15 below
    index, _ = choose([ease, compromise, timid], reference=0)
    assert index == 1
    assert choose([ease, compromise, timid])[0] == 1  # no reference: maximin alone


def test_the_chosen_mix_is_in_the_manifest_and_serves(tmp_path):
    require_build(two_tower=False)
    world = series_world(True)
    ch = build_and_load(tmp_path, world, "cf", params=SERIES_PARAMS)
    try:
        manifest = ch.ctx.open_bundle().manifest
        chosen = manifest["build_params"]["mix"]
        assert chosen == manifest["cf"]["mix"]
        report = manifest["build_params"]["mix_validation"]
        assert report["carve"]["users"] > 0 and report["candidates"] > 10
        assert set(report["chosen_recall"]) == {"temporal", "random"}
        assert float(manifest["build_params"]["ease_lambda"]) in (50, 100, 250, 500, 1000, 2000)
        assert "ease.npy" in manifest["files"]  # the dense EASE scorer
        details = ch.info().details
        assert details["mix_source"] == "build" and details["scorer"] == "ease_dense"
        assert details["mix"] == report["chosen"]
        assert chosen["recent_weight"] > 0
        # served: a user midway through a series gets its next episodes first
        history = tuple(f"s07e{e:02d}" for e in range(6))
        got = ch.recall(Query(history=history, exclude=frozenset(history)), 3)
        assert list(got.item_ids) == ["s07e06", "s07e07", "s07e08"], got.item_ids
    finally:
        ch.close()


def test_dense_ease_scores_are_the_closed_form():
    require("scipy", extra="train")
    import scipy.sparse as sp

    from recall_engine.plugins.cf.item2item import DenseEase, ease_matrix

    rng = np.random.default_rng(3)
    x = (rng.random((60, 25)) < 0.3).astype(np.float32)
    lam = 5.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(25))
    want = np.eye(25) - p / np.diag(p)[None, :]
    b = ease_matrix(sp.csr_matrix(x), lam)
    np.testing.assert_allclose(b, want, atol=1e-5)
    history = np.flatnonzero(x[0])
    cand, scores = DenseEase(b).aggregate(history, np.ones(len(history), np.float32))
    np.testing.assert_allclose(scores[cand], x[0] @ want, atol=1e-4)

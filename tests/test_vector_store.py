"""The vector stores: Milvus (on Milvus Lite, in-process) answers as usearch does, the
content channel on Milvus passes the shipped vector-channel contract, builds write one
collection per build and name it in the manifest, and the store params are checked.

Milvus Lite runs the same client API as a Milvus server, so these prove API
compatibility and results, not speed."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.index import VectorIndex
from recall_engine.runtime.vector_store import MilvusSettings, VectorStore, vectors_digest
from recall_engine.sdk.channel import ChannelContext, Query
from recall_engine.sdk.params import ParamsError, parse
from recall_engine.sdk.testing import VectorChannelContract
from recall_engine.sdk.vector_channel import VectorParams
from tests.helpers import build_and_load, warm_items

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from recall_engine.runtime.vector_store_milvus import MilvusStore, write_collection  # noqa: E402

DIM = 32


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM), dtype=np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _same_hits(got, want, where: str) -> None:
    """Equal ids in order, except where equal scores (ties) may come in either order or
    one of them falls past k."""
    (got_ids, got_scores), (want_ids, want_scores) = got, want
    assert len(got_ids) == len(want_ids), f"{where}: {len(got_ids)} != {len(want_ids)} hits"
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5, err_msg=where)
    for n, (a, b) in enumerate(zip(got_ids, want_ids, strict=True)):
        if a != b:
            tied = np.abs(want_scores - want_scores[n]) <= 1e-5
            assert a in set(np.asarray(want_ids)[tied]) or tied[-1], (where, n, a, b)


# -- Milvus against usearch, same vectors ----------------------------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same 3,000 vectors in an exact usearch index and a FLAT Milvus collection."""
    vectors = _clustered(3000, seed=3)
    ids = [f"item-{i}" for i in range(len(vectors))]
    ids[7] = 'quote"and\\backslash é'  # ids go into filter expressions: escaped
    settings = MilvusSettings(uri=str(tmp_path_factory.mktemp("milvus") / "m.db"), index="FLAT")
    entry = write_collection(settings, "test_vs", ids, vectors, metric="cos")
    milvus = MilvusStore.open(settings, entry["collection"], dim=DIM, metric="cos", ids=ids)
    usearch = VectorIndex(DIM, metric="cos")  # 3,000 < exact_below: exact search
    usearch.add(ids, vectors)
    yield usearch, milvus, vectors, ids, entry
    milvus.close()


def test_both_stores_implement_the_store_interface(stores):
    usearch, milvus, *_ = stores
    assert isinstance(usearch, VectorStore) and isinstance(milvus, VectorStore)
    assert (usearch.kind, milvus.kind) == ("usearch", "milvus")


def test_the_manifest_entry_names_the_collection_and_digests_the_vectors(stores):
    _, milvus, vectors, ids, entry = stores
    assert entry["collection"] == milvus.collection and entry["collection"].startswith("test_vs_")
    assert entry["count"] == len(ids) and entry["index"] == "FLAT"
    assert entry["vectors_sha256"] == vectors_digest(ids, vectors)
    assert entry["vectors_sha256"] != vectors_digest(ids, vectors[::-1])


def test_milvus_flat_top_k_equals_usearch_exact_top_k(stores):
    usearch, milvus, vectors, ids, _ = stores
    queries = np.concatenate([vectors[:40], _clustered(40, seed=9)])
    for k in (1, 10, 100):
        for n, (got, want) in enumerate(
            zip(milvus.search(queries, k), usearch.search(queries, k), strict=True)
        ):
            _same_hits(got, want, f"k={k}, query {n}")


def test_excludes_and_category_filters_mean_the_same_on_both(stores):
    usearch, milvus, vectors, ids, _ = stores
    queries = vectors[[7, 100, 2000]]
    top = usearch.search(queries[0], 30)[0][0]
    exclude = set(top[:15]) | {"no-such-item"}
    odd = lambda found: [int(i.rsplit("-", 1)[-1]) % 2 == 1 if "-" in i else False for i in found]  # noqa: E731
    for kwargs in (
        {"exclude": exclude},
        {"keep": odd},
        {"keep": odd, "exclude": exclude, "max_fetch": 64},
    ):
        got, want = milvus.search(queries, 20, **kwargs), usearch.search(queries, 20, **kwargs)
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            _same_hits(g, w, f"{sorted(kwargs)} query {n}")
            assert not exclude.intersection(g[0]) or "exclude" not in kwargs


def test_upserts_and_deletes_reach_the_collection_and_the_next_search(tmp_path):
    vectors = _clustered(500, seed=4)
    ids = [f"i{i}" for i in range(500)]
    settings = MilvusSettings(uri=str(tmp_path / "m.db"), index="FLAT")
    entry = write_collection(settings, "test_updates", ids, vectors, metric="cos")
    milvus = MilvusStore.open(settings, entry["collection"], dim=DIM, metric="cos", ids=ids)
    usearch = VectorIndex(DIM)
    usearch.add(ids, vectors)
    try:
        for store in (milvus, usearch):
            assert (
                store.add(["i3", "new", "new"], np.stack([-vectors[3], vectors[9], vectors[8]]))
                == 1
            )
            assert store.delete(["i4", "i5", "nope"]) == 2
        assert len(milvus) == len(usearch) == 499
        assert "i4" not in milvus and "new" in milvus
        np.testing.assert_allclose(milvus.vector("new"), vectors[8], atol=1e-6)
        assert milvus.search(-vectors[3], 1)[0][0] == ["i3"]
        queries = vectors[[3, 4, 8, 50]]
        for g, w in zip(milvus.search(queries, 15), usearch.search(queries, 15), strict=True):
            _same_hits(g, w, "after updates")
        got, where = milvus.vectors(["i4", "new", "i3", "unknown"])
        assert where == [1, 2] and got.shape == (2, DIM)
        # a second client (another instance, another process) sees the same rows
        again = MilvusStore.open(
            settings, entry["collection"], dim=DIM, metric="cos", ids=milvus.ids()
        )
        assert again.search(-vectors[3], 1)[0][0] == ["i3"]
        assert "i4" not in again.search(vectors[4], 50)[0][0]
        again.close()
        assert milvus.search(vectors[4], 3)[0][0]  # closing one client leaves the other
    finally:
        milvus.close()


def test_opening_a_missing_or_mismatched_collection_names_it(stores, tmp_path):
    _, milvus, *_ = stores
    with pytest.raises(FileNotFoundError, match="'no_such_collection'.*missing"):
        MilvusStore.open(milvus.settings, "no_such_collection", dim=DIM, metric="cos", ids=[])
    with pytest.raises(ValueError, match="dim 32, the bundle says 16"):
        MilvusStore.open(milvus.settings, milvus.collection, dim=16, metric="cos", ids=[])
    with pytest.raises(ValueError, match="metric COSINE, the bundle says ip"):
        MilvusStore.open(milvus.settings, milvus.collection, dim=DIM, metric="ip", ids=[])


# -- params ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"store": "milvus"}, r"params\.milvus_uri: required with store = 'milvus'"),
        (
            {"store": "milvus", "milvus_uri": "x.db", "index_dtype": "bf16"},
            r"params\.index_dtype: the milvus store keeps float32",
        ),
        ({"milvus_uri": "http://milvus:19530"}, r"params\.milvus_uri: is for store = 'milvus'"),
        (
            {"store": "milvus", "milvus_uri": "x.db", "collection": "9-bad"},
            r"params\.collection: must start with a letter",
        ),
        ({"store": "faiss"}, r"params\.store"),
    ],
)
def test_store_params_are_checked_and_errors_name_the_key(params, message):
    with pytest.raises(ParamsError, match=message):
        parse(VectorParams, params, "channels.content.params")


# -- the content channel on Milvus -------------------------------------------------------
def _milvus_params(root) -> dict:
    return {
        "epochs": 1,
        "store": "milvus",
        "milvus_uri": str(root / "milvus.db"),
        "milvus_index": "FLAT",
        "collection": "contract",
    }


@pytest.fixture(scope="module")
def milvus_root(tmp_path_factory):
    pytest.importorskip("torch")
    return tmp_path_factory.mktemp("content-milvus")


@pytest.fixture(scope="module")
def channel(milvus_root, demo_small):
    ch = build_and_load(
        milvus_root / "a", demo_small, "content", params=_milvus_params(milvus_root)
    )
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def scratch_bundle(milvus_root, demo_small):
    """A second build (its own collection) for the contract's scratch instance: two
    instances of one bundle share its collection, online changes included."""
    ch = build_and_load(
        milvus_root / "b", demo_small, "content", params=_milvus_params(milvus_root)
    )
    ctx = ch.ctx
    ch.close()
    return ctx


@pytest.fixture()
def queries(demo_small):
    jazz, space = warm_items(demo_small, "jazz"), warm_items(demo_small, "space")
    return [
        Query(user_id="u1", history=jazz, exclude=frozenset(jazz)),
        Query(text="rockets and astronauts"),
        Query(history=space[:3], text="distant galaxies", exclude=frozenset(space[:3])),
        Query(history=("no-such-item", *jazz[:2])),
    ]


class TestContentOnMilvusContract(VectorChannelContract):
    @pytest.fixture(autouse=True)
    def _scratch_bundle(self, scratch_bundle: ChannelContext) -> None:
        type(self)._scratch_ctx = scratch_bundle

    def scratch_context(self, channel):
        ctx = type(self)._scratch_ctx
        return replace(ctx, catalog=Catalog(channel.ctx.catalog))


def test_the_bundle_names_its_collection_and_serving_reads_it(channel):
    bundle = channel.ctx.open_bundle()
    entry = bundle.manifest["vector_store"]
    on_disk = json.loads((bundle.path / "manifest.json").read_text())["vector_store"]
    assert entry == on_disk and entry["kind"] == "milvus"
    assert entry["collection"].startswith("contract_") and entry["count"] == len(channel.index)
    assert not (bundle.path / "index").exists()
    details = channel.info().details
    assert details["vector_store"] == "milvus" and details["collection"] == entry["collection"]


def test_milvus_answers_as_the_same_vectors_in_usearch_do(channel, queries):
    """The content channel's answers on Milvus equal those of a usearch index over the
    vectors Milvus holds (same queries, same filters)."""
    store = channel.index
    ids = store.ids()
    vectors, found = store.vectors(ids)
    index = VectorIndex(store.dim)
    index.add([ids[i] for i in found], vectors)
    for q in queries:
        vector = channel._query_vectors([q], batched=True)[0]  # noqa: SLF001
        want = index.search(vector, 20, exclude=q.exclude)[0]
        got = store.search(vector, 20, exclude=q.exclude)[0]
        _same_hits(got, want, str(q))


def test_a_new_build_writes_a_new_collection_and_the_old_one_keeps_serving(channel, scratch_bundle):
    first = channel.ctx.open_bundle().manifest["vector_store"]["collection"]
    second = scratch_bundle.open_bundle().manifest["vector_store"]["collection"]
    assert first != second
    assert channel.recall(Query(history=tuple(channel.index.ids()[:2])), 5).item_ids


def test_a_bundle_built_for_milvus_refuses_the_usearch_store(channel):
    from recall_engine.plugins.content import ContentChannel

    ctx = replace(channel.ctx, params={"epochs": 1})
    with pytest.raises(ValueError, match=r"params\.store is 'usearch'.*built for 'milvus'"):
        ContentChannel(ctx).load()

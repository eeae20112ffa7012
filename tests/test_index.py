"""VectorIndex: recall against exact search, id mapping, upserts/deletes, filters with
over-fetch, persistence and concurrency."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from recall_engine.runtime.id_map import IdMap
from recall_engine.runtime.index import VectorIndex

DIM = 64


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around random centres (~0.7 cosine to their centre): embeddings
    cluster by topic, and isotropic noise is the one case no graph index handles well."""
    x = rng.standard_normal((n, centres.shape[1]), dtype=np.float32) / np.sqrt(centres.shape[1])
    x += centres[rng.integers(0, len(centres), n)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def recall(hits: list[tuple[list[str], np.ndarray]], truth: np.ndarray) -> float:
    return float(
        np.mean(
            [
                len(set(map(int, ids)) & set(t.tolist())) / truth.shape[1]
                for (ids, _), t in zip(hits, truth, strict=True)
            ]
        )
    )


def ids_of(n: int) -> list[str]:
    return [str(i) for i in range(n)]


@pytest.fixture(scope="module")
def centres() -> np.ndarray:
    c = np.random.default_rng(7).standard_normal((100, DIM), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small(centres: np.ndarray) -> np.ndarray:
    return clustered(np.random.default_rng(1), 5000, centres)


@pytest.fixture
def hnsw(small: np.ndarray) -> VectorIndex:
    """A fresh graph-searched index of 5,000 items (exact_below=0 forces HNSW)."""
    index = VectorIndex(DIM, exact_below=0)
    index.add(ids_of(len(small)), small)
    return index


# -- recall --------------------------------------------------------------------------
def test_hnsw_recall_at_10_is_at_least_095_of_exact_search_on_50k_vectors(centres):
    rng = np.random.default_rng(0)
    vectors, queries = clustered(rng, 50_000, centres), clustered(rng, 200, centres)
    index = VectorIndex(DIM, dtype="f32", exact_below=0)
    index.add(ids_of(len(vectors)), vectors)

    assert recall(index.search(queries, 10), exact_top(vectors, queries, 10)) >= 0.95


@pytest.mark.parametrize(("dtype", "floor"), [("f16", 0.95), ("bf16", 0.95), ("i8", 0.90)])
def test_quantised_indexes_keep_recall(centres, dtype, floor):
    # i8 loses a few ties between near-equal neighbours: its floor is lower, and a
    # larger ef does not raise it (the loss is in the quantised distances).
    rng = np.random.default_rng(2)
    vectors, queries = clustered(rng, 20_000, centres), clustered(rng, 200, centres)
    index = VectorIndex(DIM, dtype=dtype, exact_below=0)
    index.add(ids_of(len(vectors)), vectors)

    assert recall(index.search(queries, 10), exact_top(vectors, queries, 10)) >= floor


def test_small_catalogue_is_searched_exactly(small):
    index = VectorIndex(DIM)  # 5,000 items < exact_below
    index.add(ids_of(len(small)), small)
    queries = small[:20] + 0.05

    hits = index.search(queries, 25)

    assert [list(map(int, ids)) for ids, _ in hits] == exact_top(small, queries, 25).tolist()


@pytest.mark.parametrize("metric", ["cos", "ip", "l2sq"])
def test_scores_are_larger_is_better_for_every_metric(metric):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 8), dtype=np.float32)
    query = rng.standard_normal(8, dtype=np.float32)
    index = VectorIndex(8, metric=metric)
    index.add(ids_of(300), vectors)

    ids, scores = index.search(query, 10)[0]

    expected = {
        "cos": vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query),
        "ip": vectors @ query,
        "l2sq": -((vectors - query) ** 2).sum(axis=1),
    }[metric]
    assert scores.dtype == np.float32
    assert np.all(np.diff(scores) <= 1e-6)
    np.testing.assert_allclose(scores, expected[list(map(int, ids))], rtol=1e-4, atol=1e-4)
    assert list(map(int, ids)) == np.argsort(-expected, kind="stable")[:10].tolist()


def test_i8_with_a_metric_other_than_cos_is_refused():
    with pytest.raises(ValueError, match="i8.*cos"):
        VectorIndex(8, metric="ip", dtype="i8")


# -- ids, upserts, deletes -----------------------------------------------------------
def test_string_ids_round_trip(small):
    index = VectorIndex(DIM)
    item_ids = [f"item-{i:05d}" for i in range(100)]
    assert index.add(item_ids, small[:100]) == 100

    assert len(index) == 100
    assert index.ids() == item_ids
    assert "item-00042" in index and "item-99999" not in index
    np.testing.assert_allclose(index.vector("item-00042"), small[42], rtol=1e-6)
    assert index.search(small[42], 1)[0][0] == ["item-00042"]
    with pytest.raises(KeyError):
        index.vector("item-99999")


def test_upserted_vector_is_found_as_its_own_nearest_neighbour(hnsw, small):
    moved = -small[0]  # far from where item "3" was
    assert hnsw.add(["3"], moved) == 0

    assert len(hnsw) == len(small)
    assert hnsw.search(moved, 1)[0][0] == ["3"]
    ids, _ = hnsw.search(small[3], 10)[0]
    assert "3" not in ids


def test_an_id_given_twice_in_one_batch_keeps_its_last_vector(small):
    index = VectorIndex(DIM)
    index.add(["a", "b", "a"], small[:3])

    assert len(index) == 2
    assert index.search(small[2], 1)[0][0] == ["a"]


def test_deleted_items_are_never_returned(hnsw, small):
    gone = ids_of(100)
    assert hnsw.delete(gone + ["no-such-item"]) == 100
    assert len(hnsw) == len(small) - 100
    assert "5" not in hnsw

    for ids, _ in hnsw.search(small[:100], 50):
        assert len(ids) == 50
        assert not set(ids) & set(gone)


def test_a_deleted_id_can_be_added_again(hnsw, small):
    hnsw.delete(["7"])
    hnsw.add(["7"], small[7])

    assert hnsw.search(small[7], 1)[0][0] == ["7"]


def test_vectors_returns_the_known_rows_and_where_they_were_asked(small):
    index = VectorIndex(DIM, dtype="f16")
    index.add(ids_of(100), small[:100])
    index.delete(["5"])

    rows, positions = index.vectors(["7", "nope", "5", "42", "7"])

    assert positions == [0, 3, 4]
    assert rows.dtype == np.float32 and rows.shape == (3, DIM)
    for row, item in zip(rows, ["7", "42", "7"], strict=True):
        np.testing.assert_array_equal(row, index.vector(item))
    np.testing.assert_allclose(rows[1], small[42], atol=1e-3)  # f16 round trip
    empty, none = index.vectors(["nope"])
    assert empty.shape == (0, DIM) and none == []


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_vectors_of_a_small_index_follow_upserts_deletes_and_new_ids(tmp_path, small, dtype, view):
    """A small index answers vectors() from one float32 matrix (DENSE_MAX_BYTES): it
    must give what usearch stores (vector(), read key by key) through every change made
    after that matrix was built, memory-mapped or not."""
    built = VectorIndex(DIM, dtype=dtype)
    built.add(ids_of(100), small[:100])
    if view:
        built.save(tmp_path)
        index = VectorIndex.load(tmp_path, view=True)
    else:
        index = built
    ids = ["3", "7", "42", "99"]

    def check(asked: list[str]) -> None:
        rows, positions = index.vectors(asked)
        known = [asked[p] for p in positions]
        assert known == [i for i in asked if i in index]
        for row, item in zip(rows, known, strict=True):
            np.testing.assert_array_equal(row, index.vector(item))

    check(ids)  # builds the matrix
    assert index._dense is not None  # noqa: SLF001
    index.add(["7", "42"], small[[150, 151]])  # replaced after the matrix was made
    index.add(["new-1", "new-2"], small[[152, 153]])  # keys past its end
    index.delete(["3"])
    check(ids + ["new-1", "new-2", "3"])
    np.testing.assert_allclose(index.vectors(["7"])[0][0], small[150], atol=0.05)
    index.add(["3"], small[154])  # deleted, then back
    check(["3", "7", "new-2"])
    np.testing.assert_allclose(index.vectors(["3"])[0][0], small[154], atol=0.05)


def test_an_index_over_the_dense_bound_reads_its_vectors_from_usearch(small, monkeypatch):
    monkeypatch.setattr("recall_engine.runtime.index.DENSE_MAX_BYTES", DIM * 4 * 99)
    index = VectorIndex(DIM)
    index.add(ids_of(100), small[:100])
    rows, positions = index.vectors(["7", "8"])
    assert index._dense is None and positions == [0, 1]  # noqa: SLF001
    np.testing.assert_array_equal(rows, np.stack([index.vector("7"), index.vector("8")]))
    small_one = VectorIndex(DIM)
    small_one.add(ids_of(99), small[:99])
    small_one.vectors(["7"])
    assert small_one._dense is not None  # noqa: SLF001


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_a_tight_fetch_still_fills_k_when_the_filter_drops_more_than_its_headroom(
    hnsw, small, dtype
):
    # headroom 0.1 fetches 11 for k = 10; a filter dropping half of every fetch must
    # make the index fetch again rather than answer short
    index = hnsw if dtype == "f32" else VectorIndex(DIM, dtype=dtype, exact_below=0)
    if dtype != "f32":
        index.add(ids_of(len(small)), small)

    def odd(ids: list[str]) -> list[bool]:
        return [int(i) % 2 == 1 for i in ids]

    for ids, scores in index.search(small[:20], 10, keep=odd, headroom=0.1, exclude={"1", "3"}):
        assert len(ids) == 10 and all(int(i) % 2 == 1 for i in ids)
        assert not {"1", "3"} & set(ids)
        assert np.all(np.diff(scores) <= 1e-6)


def test_negative_headroom_is_refused(hnsw, small):
    with pytest.raises(ValueError, match="headroom"):
        hnsw.search(small[0], 5, headroom=-1)


# -- filters -------------------------------------------------------------------------
def test_excluding_the_top_50_still_returns_k_results(hnsw, small):
    query = small[11]
    top50, _ = hnsw.search(query, 50)[0]

    ids, scores = hnsw.search(query, 10, exclude=top50)[0]

    assert len(ids) == 10 and len(scores) == 10
    assert not set(ids) & set(top50)
    next10 = exact_top(small, query[None, :], 60)[0, 50:].tolist()
    assert len(set(map(int, ids)) & set(next10)) >= 8


def test_keep_mask_is_honoured_after_over_fetching(hnsw, small):
    def every_tenth(ids: list[str]) -> list[bool]:
        return [int(i) % 10 == 0 for i in ids]

    for ids, _ in hnsw.search(small[:5], 20, keep=every_tenth, exclude={"0", "10"}):
        assert len(ids) == 20
        assert all(int(i) % 10 == 0 for i in ids)
        assert not {"0", "10"} & set(ids)


def test_a_filter_keeping_three_items_returns_exactly_those(hnsw, small):
    wanted = {"17", "2500", "4999"}

    ids, _ = hnsw.search(small[0], 10, keep=lambda ids: np.isin(ids, list(wanted)))[0]

    assert set(ids) == wanted


def test_max_fetch_bounds_a_narrow_filter_instead_of_scanning_the_index(hnsw, small):
    """A filter whose three items lie anywhere: without max_fetch the search widens
    until it has seen the whole index; with it, it stops after ranking max_fetch items
    and returns the kept ones among them."""
    wanted = {"17", "2500", "4999"}
    seen: list[int] = []

    def keep(ids: list[str]) -> np.ndarray:
        seen.append(len(ids))
        return np.isin(ids, list(wanted))

    ids, _ = hnsw.search(small[0], 10, keep=keep, max_fetch=200)[0]
    nearest_200 = set(hnsw.search(small[0], 200)[0][0])
    assert set(ids) == wanted & nearest_200
    assert max(seen) <= 200
    seen.clear()
    assert set(hnsw.search(small[0], 10, keep=keep)[0][0]) == wanted
    assert max(seen) == len(small)  # unbounded: it got to the whole index


def test_a_short_first_fetch_grows_by_the_share_that_survived(hnsw, small):
    """A filter keeping 1 in 20 items needs about 20 x k candidates: the second round
    asks for that many instead of doubling five times."""
    rounds: list[int] = []

    def every_20th(ids: list[str]) -> list[bool]:
        rounds.append(len(ids))
        return [int(i) % 20 == 0 for i in ids]

    ids, _ = hnsw.search(small[3], 10, keep=every_20th)[0]
    assert len(ids) == 10 and all(int(i) % 20 == 0 for i in ids)
    assert len(rounds) <= 3, rounds


def test_max_fetch_must_be_positive(hnsw, small):
    with pytest.raises(ValueError, match="max_fetch"):
        hnsw.search(small[0], 5, max_fetch=0)


def test_empty_index_answers_every_query_with_nothing():
    hits = VectorIndex(4).search(np.ones((3, 4), dtype=np.float32), 5)

    assert [len(ids) for ids, _ in hits] == [0, 0, 0]


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((2, 3)), np.full(4, np.nan)])
def test_bad_vectors_are_refused(bad):
    index = VectorIndex(4)
    with pytest.raises(ValueError):
        index.add(["x"] * (1 if bad.ndim == 1 else len(bad)), bad)


# -- persistence ---------------------------------------------------------------------
@pytest.mark.parametrize("view", [False, True])
def test_save_then_load_gives_identical_results(hnsw, small, tmp_path, view):
    hnsw.delete(["1", "2"])
    hnsw.add(["new"], small[1] * -1)
    before = hnsw.search(small[:30], 15, exclude={"3"})
    hnsw.save(tmp_path)

    loaded = VectorIndex.load(tmp_path, view=view)
    after = loaded.search(small[:30], 15, exclude={"3"})

    assert loaded.ids() == hnsw.ids()
    assert loaded.viewed is view
    assert [ids for ids, _ in after] == [ids for ids, _ in before]
    for (_, a), (_, b) in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ids.cols",
        "ids.json",
        "index.json",
        "index.usearch",
    ]


def test_keys_stay_stable_across_save_and_load(small, tmp_path):
    index = VectorIndex(DIM)
    index.add(["a", "b", "c"], small[:3])
    index.delete(["b"])
    index.save(tmp_path)

    loaded = VectorIndex.load(tmp_path)
    loaded.add(["d"], small[3])

    assert json.loads((tmp_path / "ids.json").read_text())["ids"] == ["a", None, "c"]
    assert loaded.ids() == ["a", "c", "d"]
    assert loaded.search(small[3], 1)[0][0] == ["d"]


def _apply_changes(index: VectorIndex, small: np.ndarray) -> None:
    """Deletes, replacements of file entries, new items and a replaced new item."""
    index.delete(["1", "2", "no-such-id"])
    index.add(["3", "4"], small[[10, 11]] * -1)  # replace two items stored in the file
    index.add(["new-a", "new-b"], small[[20, 21]] * -1)
    index.add(["new-a"], small[22] * -1)  # replace an overlay item
    index.delete(["new-b"])


def test_a_viewed_index_takes_changes_in_an_overlay_and_answers_like_a_loaded_one(small, tmp_path):
    """Exact search (a catalogue under exact_below) over the memory-mapped file plus the
    overlay gives exactly what the same changes give on an index read into memory."""
    built = VectorIndex(DIM)
    built.add(ids_of(len(small)), small)
    built.save(tmp_path)
    viewed = VectorIndex.load(tmp_path, view=True)
    loaded = VectorIndex.load(tmp_path)
    for index in (viewed, loaded):
        _apply_changes(index, small)

    assert viewed.viewed and viewed.overlay_size == 3
    assert len(viewed) == len(loaded) and viewed.ids() == loaded.ids()
    assert "1" not in viewed and "new-b" not in viewed and "new-a" in viewed
    np.testing.assert_allclose(viewed.vector("3"), small[10] * -1, atol=1e-6)
    np.testing.assert_allclose(viewed.vector("new-a"), small[22] * -1, atol=1e-6)
    queries = np.concatenate([small[[10, 11, 1, 5]] * -1, small[[20, 22, 1, 5]], small[100:130]])
    for kwargs in ({}, {"exclude": {"3", "7"}}, {"keep": lambda ids: [i != "new-a" for i in ids]}):
        got = viewed.search(queries, 25, **kwargs)
        want = loaded.search(queries, 25, **kwargs)
        assert [ids for ids, _ in got] == [ids for ids, _ in want], kwargs
        for (_, a), (_, b) in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert viewed.search(small[10] * -1, 1)[0][0] == ["3"]
    assert "1" not in viewed.search(small[1], 50)[0][0]


def test_a_viewed_graph_index_keeps_its_recall_with_an_overlay(hnsw, small, tmp_path):
    """HNSW over the file and the overlay: replaced items are found at their new place,
    deleted ones never, and recall against exact search stays where it was."""
    hnsw.save(tmp_path)
    viewed = VectorIndex.load(tmp_path, view=True)
    moved = ids_of(200)
    viewed.add(moved, small[200:400])  # items 0..199 now hold the vectors of 200..399
    viewed.delete(ids_of(400)[300:400])
    truth_vectors = small.copy()
    truth_vectors[:200] = small[200:400]
    queries = small[1000:1100]
    hits = viewed.search(queries, 10)
    alive = np.r_[np.arange(300), np.arange(400, len(small))]
    truth = alive[exact_top(truth_vectors[alive], queries, 10)]

    assert recall(hits, truth) >= 0.9
    assert not {str(i) for i in range(300, 400)} & {i for ids, _ in hits for i in ids}
    assert set(viewed.search(small[250], 2)[0][0]) == {"50", "250"}  # same vector now


def test_a_viewed_index_with_an_overlay_saves_its_merged_state(small, tmp_path):
    built = VectorIndex(DIM)
    built.add(ids_of(300), small[:300])
    built.save(tmp_path / "a")
    viewed = VectorIndex.load(tmp_path / "a", view=True)
    _apply_changes(viewed, small)
    viewed.save(tmp_path / "b")

    again = VectorIndex.load(tmp_path / "b")
    assert again.ids() == viewed.ids()
    queries = small[:40]
    for (a_ids, a), (b_ids, b) in zip(
        again.search(queries, 10), viewed.search(queries, 10), strict=True
    ):
        assert set(a_ids) == set(b_ids)
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_load_refuses_ids_that_do_not_match_the_index(small, tmp_path):
    index = VectorIndex(DIM)
    index.add(["a", "b"], small[:2])
    index.save(tmp_path)
    IdMap.write(tmp_path / "ids.cols", ["a"])
    with pytest.raises(ValueError, match=r"ids\.cols: 1 ids for 2 vectors"):
        VectorIndex.load(tmp_path)

    (tmp_path / "ids.cols").unlink()  # a bundle from before ids.cols: ids.json is read
    (tmp_path / "ids.json").write_text('{"ids": ["a"]}')
    with pytest.raises(ValueError, match=r"ids\.json: 1 ids for 2 vectors"):
        VectorIndex.load(tmp_path)


def test_load_refuses_a_missing_or_mismatched_index_file(small, tmp_path):
    index = VectorIndex(DIM)
    index.add(["a"], small[:1])
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**meta, "dim": DIM + 1}))

    with pytest.raises(ValueError, match=r"index\.usearch: 64 dimensions, index\.json says 65"):
        VectorIndex.load(tmp_path)
    (tmp_path / "index.usearch").unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.usearch: missing"):
        VectorIndex.load(tmp_path)


# -- concurrency ---------------------------------------------------------------------
def test_eight_threads_search_while_another_upserts_and_deletes(hnsw, small):
    errors: list[Exception] = []
    stop = threading.Event()

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                rows = rng.integers(0, len(small), 1 + seed % 3)
                for ids, scores in hnsw.search(small[rows], 10, exclude={"9"}):
                    assert len(ids) == 10 == len(set(ids)) == len(scores)
                    assert all(isinstance(i, str) for i in ids) and "9" not in ids
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(99)
    try:
        for round_ in range(40):
            batch = rng.integers(0, len(small), 50)
            hnsw.add([f"u{round_}-{i}" for i in range(50)], small[batch])
            hnsw.add([str(i) for i in batch[:10]], small[batch[:10]])
            hnsw.delete([f"u{round_ - 1}-{i}" for i in range(25)])
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert not errors, errors[0]
    assert len(hnsw) == len(small) + 40 * 50 - 39 * 25


def test_loaded_ids_are_found_in_the_loaded_catalogue(tmp_path):
    """Neither the catalogue nor an index holds a string per item any more (both map
    id columns from files, tests/test_mapped_columns.py): ids an index loaded and
    found are equal to the catalogue's and found in it."""
    from recall_engine.runtime.catalog import Catalog
    from recall_engine.sdk.channel import ItemRecord

    names = [f"item-{n}" for n in range(50)]
    Catalog([ItemRecord(i) for i in names]).save(tmp_path / "catalog")
    index = VectorIndex(4, metric="cos")
    index.add(names, np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    index.save(tmp_path / "index")
    catalog = Catalog.load(tmp_path / "catalog")
    loaded = VectorIndex.load(tmp_path / "index")
    assert sorted(loaded.ids()) == sorted(catalog.ids())
    found, _ = loaded.search(np.ones(4, dtype=np.float32), 5)[0]
    assert len(found) == 5 and catalog.present(found).all()

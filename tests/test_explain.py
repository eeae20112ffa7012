"""RecallRequest.explain against real servers on 127.0.0.1: popular, cf and content built
from the small synthetic demo, plus a fake channel without the ``Explainable``
capability. Every expectation is recomputed from the response's own columns or from the
built artifacts, never written down."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from recall_engine._proto import recall_pb2
from recall_engine.client import RecallClient, RecallQuery, RecallResult
from recall_engine.client._model import result_of
from recall_engine.offline.build import build_all
from recall_engine.runtime.artifacts import ArtifactStore
from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.index import VectorIndex
from tests.harness import make_config, serve
from tests.helpers import warm_items

WEIGHTS = {"popular": 0.3, "cf": 1.0, "content": 0.7, "tower": 0.6, "fixed": 0.5}
RRF_K = 30  # not the default 60: the explanation must read the plan's
TEXT_WEIGHT = 0.4  # not the default 0.5, for the same reason
COLD_QUOTA = 0.3


def _channels(demo) -> dict:
    return {
        "popular": {"required": True},
        "cf": {"params": {"epochs": 2, "dim": 32, "batch_size": 256}},
        "content": {"params": {"epochs": 2, "text_weight": TEXT_WEIGHT}},
        # cf's two-tower part alone
        "tower": {"plugin": "cf", "params": {"item2item": False, "epochs": 2, "dim": 32}},
        # the test plugin (tests/fake_plugins.py): no explain method
        "fixed": {"plugin": "fixed", "params": {"items": sorted(demo.topics)[:40]}},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_small):
    root = tmp_path_factory.mktemp("explain")
    channels = _channels(demo_small)
    config = make_config({"artifacts": {"root": str(root)}, "channels": channels}, root)
    # no learned fusion weights: the tests check the arithmetic of the plans they write
    done = build_all(demo_small.interactions, demo_small.items, root, config, fit_fusion=False)
    assert all(b.version or b.skipped for b in done), done
    return root


def _serve(root, demo, plan: dict, experiments: list | None = None):
    data = {
        "artifacts": {"root": str(root)},
        "channels": _channels(demo),
        "plan": plan,
        "experiments": experiments or [],
    }
    return serve(make_config(data, root), Catalog.load(root / "catalog"))


@pytest.fixture(scope="module")
def rrf(built, demo_small):
    """rrf with rrf_k 30; users with an id fall in a variant with a cold-item quota,
    anonymous requests get the plain plan."""
    plan = {"fusion": "rrf", "weights": WEIGHTS, "fusion_params": {"rrf_k": RRF_K}}
    quota = {
        "name": "cold",
        "variants": [{"name": "quota", "traffic": 1.0, "plan": {"cold_quota": COLD_QUOTA}}],
    }
    with _serve(built, demo_small, plan, [quota]) as s:
        yield s


@pytest.fixture(scope="module")
def weighted(built, demo_small):
    plan = {
        "fusion": "weighted_sum",
        "weights": WEIGHTS,
        "fusion_params": {"normalization": "zscore"},
    }
    with _serve(built, demo_small, plan) as s:
        yield s


def _history(demo) -> list[str]:
    return list(warm_items(demo, "jazz", 5))


def _recall(served, **fields) -> RecallResult:
    resp = served.stub.Recall(recall_pb2.RecallRequest(**fields), timeout=30)
    return result_of(resp)


def _assert_terms_add_up(result: RecallResult) -> None:
    weight = {ch.channel: ch.weight for ch in result.channels}
    assert result.candidates
    for c in result.candidates:
        why = c.explanation
        assert why is not None
        # one term per channel that returned the item, with that channel's rank and score
        assert [t.channel for t in why.terms] == [h.channel for h in c.hits]
        for t in why.terms:
            hit = c.hit(t.channel)
            assert hit is not None
            assert (t.rank, t.raw_score) == (hit.rank, pytest.approx(hit.score, rel=1e-6))
            assert t.weight == pytest.approx(weight[t.channel])
            assert t.value == pytest.approx(t.weight * t.normalized, rel=1e-6, abs=1e-12)
        total = math.fsum(t.value for t in why.terms)
        assert why.terms_sum == pytest.approx(total, rel=1e-6)
        assert c.score == pytest.approx(total, rel=1e-5, abs=1e-7)


def test_rrf_terms_are_weight_over_k_plus_rank_and_sum_to_the_fused_score(rrf, demo_small):
    result = _recall(rrf, history_item_ids=_history(demo_small), k=30, explain=True)
    assert result.explanation is not None
    assert (result.explanation.fusion, result.explanation.rrf_k) == ("rrf", RRF_K)
    _assert_terms_add_up(result)
    for c in result.candidates:
        for t in c.explanation.terms:
            assert t.normalized == pytest.approx(1.0 / (RRF_K + t.rank), rel=1e-6)
    # several channels took part, or the sums prove little
    assert len({t.channel for c in result.candidates for t in c.explanation.terms}) >= 3


def test_weighted_sum_terms_sum_to_the_fused_score(weighted, demo_small):
    result = _recall(weighted, history_item_ids=_history(demo_small), k=30, explain=True)
    assert result.fusion == "weighted_sum"
    assert result.explanation.normalization == "zscore"
    _assert_terms_add_up(result)
    # zscore gives a channel's items values of either sign around its mean
    values = [t.normalized for c in result.candidates for t in c.explanation.terms]
    assert len(set(values)) > 3


def test_vector_channel_names_the_history_items_with_the_highest_cosine(built, rrf, demo_small):
    history = _history(demo_small)
    result = _recall(rrf, history_item_ids=history, k=40, explain=True)
    index = VectorIndex.load(ArtifactStore(built).open("content").path / "index")
    hist = np.stack([index.vector(h) for h in history])
    hist /= np.linalg.norm(hist, axis=1, keepdims=True)
    checked = 0
    for c in result.candidates:
        ev = c.explanation.channel("content")
        if c.hit("content") is None:
            assert ev is None
            continue
        assert ev is not None and ev.similarity == "cosine"
        vec = index.vector(c.item_id)
        cos = hist @ (vec / np.linalg.norm(vec))
        top = np.argsort(-cos, kind="stable")[:3]
        assert [n.item_id for n in ev.nearest] == [history[j] for j in top]
        assert [n.similarity for n in ev.nearest] == pytest.approx(cos[top].tolist(), abs=1e-5)
        assert ev.text_similarity is None  # no text in this request
        checked += 1
    assert checked >= 5


def test_text_contribution_appears_only_when_text_is_given(rrf, demo_small):
    history = _history(demo_small)
    text = "smooth jazz saxophone"
    both = _recall(rrf, history_item_ids=history, text=text, k=30, explain=True)
    only_text = _recall(rrf, text=text, k=30, explain=True)
    without = _recall(rrf, history_item_ids=history, k=30, explain=True)

    def content_evidence(result):
        return [
            c.explanation.channel("content")
            for c in result.candidates
            if c.explanation.channel("content")
        ]

    for result, weight in ((both, TEXT_WEIGHT), (only_text, 1.0)):
        evidence = content_evidence(result)
        assert evidence
        for ev in evidence:
            assert ev.text_similarity is not None and -1.0001 <= ev.text_similarity <= 1.0001
            assert ev.text_weight == pytest.approx(weight)
    assert all(not ev.nearest for ev in content_evidence(only_text))  # no history to be near
    evidence = content_evidence(without)
    assert evidence and all(ev.text_similarity is None for ev in evidence)


def test_popular_rank_is_the_position_in_the_popular_list(built, rrf, demo_small):
    with np.load(ArtifactStore(built).open("popular").path / "popular.npz") as z:
        ids, scores = z["ids"].tolist(), z["scores"]
    result = _recall(rrf, history_item_ids=_history(demo_small), k=60, explain=True)
    seen = 0
    for c in result.candidates:
        hit = c.hit("popular")
        ev = c.explanation.channel("popular")
        if hit is None:
            continue
        assert ev is not None
        assert ev.popularity_rank == ids.index(c.item_id) + 1
        assert ev.popularity_score == pytest.approx(float(scores[ev.popularity_rank - 1]))
        assert ev.popularity_score == pytest.approx(hit.score)
        # the channel's own rank can only be better: it skips the excluded history
        assert hit.rank <= ev.popularity_rank
        seen += 1
    assert seen >= 1


def test_cf_names_history_items_by_their_neighbour_scores(built, rrf, demo_small):
    from recall_engine.plugins.cf.histories import VOCAB_FILE, Vocab
    from recall_engine.plugins.cf.item2item import ARTIFACT, NeighbourTable

    history = _history(demo_small)
    result = _recall(rrf, history_item_ids=history, k=40, explain=True)
    bundle = ArtifactStore(built).open("cf")
    vocab = Vocab.load(bundle.path / VOCAB_FILE)
    checked = 0
    for c in result.candidates:
        ev = c.explanation.channel("cf")
        if c.hit("cf") is None:
            assert ev is None
            continue
        assert ev is not None
        assert ev.nearest or ev.two_tower_score is not None
        sims = [n.similarity for n in ev.nearest]
        assert sims == sorted(sims, reverse=True) and all(s > 0 for s in sims)
        assert {n.item_id for n in ev.nearest} <= set(history)
        if ev.similarity == "ease":
            b = np.load(bundle.path / "ease.npy", mmap_mode="r")
            col = vocab.index[c.item_id]
            want = {h: float(b[vocab.index[h], col]) for h in history}
        elif ev.similarity == "item2item":
            table = NeighbourTable.load(bundle.path / ARTIFACT, len(vocab))
            want = {}
            for h in history:
                row = vocab.index[h]
                lo, hi = table.indptr[row], table.indptr[row + 1]
                hits = np.flatnonzero(table.indices[lo:hi] == vocab.index[c.item_id])
                want[h] = float(table.sims[lo + hits[0]]) if len(hits) else 0.0
        else:
            continue
        best = sorted((s for s in want.values() if s > 0), reverse=True)[:3]
        assert sims == pytest.approx(best, rel=1e-5)
        for n in ev.nearest:
            assert n.similarity == pytest.approx(want[n.item_id], rel=1e-5)
        checked += 1
    assert checked >= 5


def test_two_tower_score_is_the_score_the_tower_ranked_by(rrf, demo_small):
    result = _recall(rrf, history_item_ids=_history(demo_small), k=60, explain=True)
    checked = 0
    for c in result.candidates:
        hit, ev = c.hit("tower"), c.explanation.channel("tower")
        if hit is None:
            continue
        assert ev is not None and not ev.nearest  # no item-to-item part here
        assert ev.two_tower_score == pytest.approx(hit.score, abs=1e-4)
        checked += 1
    assert checked >= 3


def test_explain_off_returns_no_explanation_and_the_same_candidates(rrf, demo_small):
    fields = {"history_item_ids": _history(demo_small), "text": "jazz piano", "k": 30}
    off = rrf.stub.Recall(recall_pb2.RecallRequest(**fields), timeout=30)
    on = rrf.stub.Recall(recall_pb2.RecallRequest(**fields, explain=True), timeout=30)
    assert not off.HasField("explanation")
    assert on.HasField("explanation") and len(on.explanation.candidates) == len(on.item_ids)
    assert list(off.item_ids) == list(on.item_ids)
    assert list(off.scores) == list(on.scores)
    assert all(c.explanation is None for c in result_of(off).candidates)


def test_a_channel_without_the_capability_gets_the_arithmetic_only(rrf, demo_small):
    result = _recall(rrf, history_item_ids=_history(demo_small), k=60, explain=True)
    from_fixed = [c for c in result.candidates if c.hit("fixed") is not None]
    assert from_fixed
    for c in from_fixed:
        assert "fixed" in [t.channel for t in c.explanation.terms]
        assert c.explanation.channel("fixed") is None
    assert "fixed" not in result.explanation.channel_errors


def test_cold_quota_placements_are_reported(rrf, demo_small):
    history = _history(demo_small)
    plain = _recall(rrf, history_item_ids=history, k=10, explain=True)  # anonymous: no quota
    quota = _recall(rrf, user_id="u1", history_item_ids=history, k=10, explain=True)
    assert quota.explanation.cold_quota == pytest.approx(COLD_QUOTA)
    assert quota.explanation.cold_slots == math.floor(COLD_QUOTA * 10)
    assert plain.explanation.cold_slots == 0
    placed = {c.item_id for c in quota.candidates if c.explanation.placed_by_cold_quota}
    assert placed == set(quota.item_ids) - set(plain.item_ids)
    assert placed and placed <= set(demo_small.cold_items)
    assert not any(c.explanation.placed_by_cold_quota for c in plain.candidates)
    _assert_terms_add_up(quota)


def test_batch_recall_explains_only_the_items_that_ask(rrf, demo_small):
    history = _history(demo_small)
    resp = rrf.stub.BatchRecall(
        recall_pb2.BatchRecallRequest(
            requests=[
                recall_pb2.RecallRequest(history_item_ids=history, k=5, explain=True),
                recall_pb2.RecallRequest(history_item_ids=history, k=5),
            ]
        ),
        timeout=30,
    )
    asked, not_asked = (r.response for r in resp.results)
    assert len(asked.explanation.candidates) == len(asked.item_ids) == 5
    assert not not_asked.HasField("explanation")
    assert list(asked.item_ids) == list(not_asked.item_ids)


def test_client_and_cli_show_the_explanation(rrf, demo_small):
    from recall_engine.cli.main import main

    history = _history(demo_small)
    addr = f"127.0.0.1:{rrf.port}"
    with RecallClient(addr) as client:
        result = client.recall(RecallQuery(history=history, k=5, explain=True), timeout=30)
    assert all(c.explanation is not None for c in result.candidates)
    printed = io.StringIO()
    argv = ["query", "--addr", addr, "--history", ",".join(history), "-k", "5", "--explain"]
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    out = printed.getvalue()
    assert out.count("fusion: ") == 5
    for c in result.candidates:
        assert c.explanation.formula in out
    assert "near " in out

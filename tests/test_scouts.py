"""Scouts ask for new items only (serving/segment_weights.py): the catalogue's cold-item
set and how it follows upserts and deletes, and, through a real gRPC server, what a
channel the learned weights turned off is asked for: nothing past the cold slots when
the chosen channels can fill ``k``, its full list when they cannot, and no call at all
when ``k`` leaves no cold slot or nothing is known to be cold.

``recall_cold`` itself (the vector channels' exact scan of the cold items) is checked by
the channel contract (``ChannelContract.test_recall_cold_gives_the_best_cold_items_
recall_ranks``), which the content and llm channels run."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from recall_engine._proto import recall_pb2
from recall_engine.runtime.catalog import Catalog, write_first_seen
from recall_engine.runtime.learned_weights import LearnedWeights, Segment, save_learned_weights
from recall_engine.sdk.types import ItemRecord
from tests.fault_plugins import (
    fault_site,  # noqa: F401 - fixture
    faults,  # noqa: F401 - fixture
)
from tests.harness import make_config, serve

DAY = 86_400


def test_the_cold_set_is_every_item_without_interactions_and_follows_changes(tmp_path):
    folder = tmp_path / "catalog"
    ids = ["a", "b", "c", "new1", "new2"]
    Catalog([ItemRecord(i) for i in ids], folder=folder).save(folder)
    # a: first seen 10 days before the log's end, b: 1 day, c: at its end
    write_first_seen(folder, np.asarray(["a", "b", "c"]), np.asarray([0, 9 * DAY, 10 * DAY]))
    catalog = Catalog.load(folder)
    cold = catalog.cold_items()
    assert cold is not None and cold.ids == ("new1", "new2")
    assert "new1" in cold and "a" not in cold and 7 not in cold
    assert catalog.cold_items(2.0).ids == ("b", "c", "new1", "new2")  # younger than 2 days
    assert catalog.cold_items() is cold  # kept, not read again
    # the set look-up fusion uses agrees with the catalogue's record on its items
    for age in (0.0, 2.0):
        assert catalog.cold_items(age).mask(ids).tolist() == catalog.cold_mask(ids, age).tolist()

    catalog.upsert([ItemRecord("new3"), ItemRecord("a", "a again")])  # a keeps its past
    after = catalog.cold_items()
    assert after.ids == ("new1", "new2", "new3") and after.token != cold.token
    assert catalog.cold_items(2.0).ids == ("b", "c", "new1", "new2", "new3")
    catalog.delete(["new1", "c"])
    assert catalog.cold_items().ids == ("new2", "new3")
    assert catalog.cold_items(2.0).ids == ("b", "new2", "new3")
    # the same as reading every item again
    fresh = Catalog.load(folder)
    assert fresh.cold_items().ids == ("new2", "new3")


def test_without_a_first_seen_record_nothing_is_known_to_be_cold(tmp_path):
    folder = tmp_path / "catalog"
    Catalog([ItemRecord("a")], folder=folder).save(folder)
    assert Catalog.load(folder).cold_items() is None


# --------------------------------------------------------------------------- served

GOOD = ["w1", "w2", "w3", "w4", "w5", "w6"]
ONLY_GOOD = {"popular": 0.0, "good": 1.0, "other": 0.0}


def _serve_once(
    tmp_path: Path, *, k: int, good_k: int, quota: float = 0.2, first_seen: bool = True
) -> tuple[list[str], dict[str, recall_pb2.ChannelStatus]]:
    """``good`` (chosen by the learned weights, depth ``good_k``) returns six warm
    items; ``other`` (a scout) returns a warm item first and a new one second."""
    root = tmp_path / f"k{k}-g{good_k}-q{quota}-{first_seen}"
    folder = root / "catalog"
    ids = [*GOOD, "w7", "warm_only_other", "new"]
    Catalog([ItemRecord(i) for i in ids], folder=folder).save(folder)
    if first_seen:
        write_first_seen(folder, np.asarray(ids[:-1]), None)  # `new`: no interaction
    save_learned_weights(
        root, LearnedWeights("rrf", (Segment("all", 1, None, MappingProxyType(ONLY_GOOD)),))
    )
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["w7"]}},
        "good": {"plugin": "fault", "k": good_k, "params": {"items": GOOD}},
        "other": {"plugin": "fault", "params": {"items": ["warm_only_other", "new"]}},
    }
    plan = {"weights": {"popular": 0.1, "good": 1.0, "other": 0.5}, "cold_quota": quota}
    cfg = make_config({"artifacts": {"root": str(root)}, "channels": channels, "plan": plan}, root)
    with serve(cfg, Catalog.load(folder)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(history_item_ids=["w7"], k=k), timeout=5)
    return list(resp.item_ids), {c.channel: c.status for c in resp.channels}


@pytest.mark.usefixtures("faults")
def test_a_scout_brings_only_new_items_when_the_chosen_channels_can_fill_k(tmp_path):
    """good may return 10 (k = 8): the scout's warm item does not fill the two slots
    good left empty; its new item takes the cold slot (1 of 8 at quota 0.2)."""
    ids, status = _serve_once(tmp_path, k=8, good_k=10)
    assert ids == [*GOOD, "new"], ids
    assert status["other"] == recall_pb2.CHANNEL_STATUS_OK


@pytest.mark.usefixtures("faults")
def test_a_scout_answers_in_full_when_the_chosen_channels_cannot_fill_k(tmp_path):
    """good may return 5 (k = 8): the scout's warm item fills a slot after good's."""
    ids, _ = _serve_once(tmp_path, k=8, good_k=5)
    assert ids == ["w1", "w2", "w3", "w4", "w5", "warm_only_other", "new"], ids


@pytest.mark.usefixtures("faults")
def test_no_scout_is_called_without_a_cold_slot_or_a_cold_item(tmp_path):
    ids, status = _serve_once(tmp_path, k=4, good_k=10)  # floor(0.2 * 4) = 0 slots
    assert ids == GOOD[:4] and status["other"] == recall_pb2.CHANNEL_STATUS_SKIPPED
    ids, status = _serve_once(tmp_path, k=8, good_k=10, first_seen=False)
    assert ids == GOOD and status["other"] == recall_pb2.CHANNEL_STATUS_SKIPPED


@pytest.mark.usefixtures("faults")
def test_a_new_item_ranks_by_where_its_scout_placed_it_not_by_channel_order(tmp_path):
    """Two scouts, one cold slot: ``first`` (earlier in channel order) found ``new1``
    only after six warm items, ``second`` put ``new2`` first. The slot goes to ``new2``:
    a scout's new items keep the ranks they had in its full answer, so they do not tie
    at rank 1 with channel order deciding."""
    root = tmp_path / "two-scouts"
    folder = root / "catalog"
    warm = [*GOOD, "w7", "x1", "x2", "x3", "x4", "x5", "x6"]
    Catalog([ItemRecord(i) for i in [*warm, "new1", "new2"]], folder=folder).save(folder)
    write_first_seen(folder, np.asarray(warm), None)
    only_good = {"popular": 0.0, "good": 1.0, "first": 0.0, "second": 0.0}
    segment = Segment("all", 1, None, MappingProxyType(only_good))
    save_learned_weights(root, LearnedWeights("rrf", (segment,)))
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["w7"]}},
        "good": {"plugin": "fault", "params": {"items": GOOD}},
        "first": {
            "plugin": "fault",
            "params": {"items": ["x1", "x2", "x3", "x4", "x5", "x6", "new1"]},
        },
        "second": {"plugin": "fault", "params": {"items": ["new2", "x1"]}},
    }
    plan = {
        "weights": {"popular": 0.1, "good": 1.0, "first": 0.5, "second": 0.5},
        "cold_quota": 0.2,
    }
    cfg = make_config({"artifacts": {"root": str(root)}, "channels": channels, "plan": plan}, root)
    with serve(cfg, Catalog.load(folder)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(history_item_ids=["w7"], k=5), timeout=5)
    assert list(resp.item_ids) == ["w1", "w2", "w3", "w4", "new2"], list(resp.item_ids)


def _serve_cold_scout(tmp_path: Path, fault: str, other_k: int) -> dict:
    """``other`` scouts through ``recall_cold`` (plugin ``fault_cold``): its new items
    ``new`` at rank 2 and ``late`` at rank 4 of its list, which is ``other_k`` deep."""
    root = tmp_path / f"{fault}-{other_k}"
    folder = root / "catalog"
    warm = [*GOOD, "w7", "x1", "x2"]
    Catalog([ItemRecord(i) for i in [*warm, "new", "late"]], folder=folder).save(folder)
    write_first_seen(folder, np.asarray(warm), None)
    save_learned_weights(
        root, LearnedWeights("rrf", (Segment("all", 1, None, MappingProxyType(ONLY_GOOD)),))
    )
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["w7"]}},
        "good": {"plugin": "fault", "params": {"items": GOOD}},
        "other": {
            "plugin": "fault_cold",
            "k": other_k,
            "params": {"items": ["x1", "new", "x2", "late"], "fault": fault},
        },
    }
    plan = {"weights": {"popular": 0.1, "good": 1.0, "other": 0.5}, "cold_quota": 0.4}
    cfg = make_config({"artifacts": {"root": str(root)}, "channels": channels, "plan": plan}, root)
    with serve(cfg, Catalog.load(folder)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(history_item_ids=["w7"], k=5), timeout=5)
    return {"ids": list(resp.item_ids), "other": {c.channel: c for c in resp.channels}["other"]}


@pytest.mark.usefixtures("faults")
def test_recall_cold_answers_are_kept_within_the_scouts_depth_and_checked(tmp_path):
    """Through ``recall_cold``: both new items take the 2 cold slots of k = 5 when the
    scout's list is 4 deep; at depth 3 ``late`` (rank 4) was never in its list and stays
    out. Ranks that decrease are refused as bad output (the scout reports an error and
    the request is answered from the others), not cut into something plausible."""
    deep = _serve_cold_scout(tmp_path, "none", 4)
    assert deep["ids"] == ["w1", "w2", "w3", "new", "late"], deep["ids"]
    shallow = _serve_cold_scout(tmp_path, "none", 3)
    assert shallow["ids"] == ["w1", "w2", "w3", "w4", "new"], shallow["ids"]
    bad = _serve_cold_scout(tmp_path, "bad_ranks", 4)
    assert bad["ids"] == ["w1", "w2", "w3", "w4", "w5"], bad["ids"]
    assert bad["other"].status == recall_pb2.CHANNEL_STATUS_ERROR
    assert "ranks" in bad["other"].error

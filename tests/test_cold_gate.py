"""Which requests get cold slots (runtime/learned_weights.py ``ColdGate``,
serving/segment_weights.py, offline/fusion_fit.py ``fit_cold_gate``): the build learns
a gate from its own carve — the requests whose newest history items are young get
the slots, the others none — and through a real server a young history gets a new
item where an old one keeps its warm items and calls no scout."""

from __future__ import annotations

import json
from types import MappingProxyType

import numpy as np
import pytest

from recall_engine._proto import recall_pb2
from recall_engine.config import Plan
from recall_engine.offline.fusion_fit import RECENT, WARM_LOSS, fit_cold_gate
from recall_engine.runtime.artifacts import ArtifactError, ArtifactStore
from recall_engine.runtime.catalog import Catalog, write_first_seen
from recall_engine.runtime.learned_weights import (
    BUNDLE,
    FILE,
    ColdGate,
    LearnedWeights,
    Segment,
    history_age_days,
    load_learned_weights,
    save_learned_weights,
)
from recall_engine.sdk.types import ItemRecord, Query
from recall_engine.serving.fusion import RankedList
from tests.fault_plugins import (
    fault_site,  # noqa: F401 - fixture
    faults,  # noqa: F401 - fixture
)
from tests.harness import make_config, serve

DAY = 86_400


def only(weights: dict[str, float], cold: ColdGate | None = None) -> LearnedWeights:
    return LearnedWeights("rrf", (Segment("h1+", 1, None, MappingProxyType(weights)),), cold=cold)


# --------------------------------------------------------------------------- bundle


def test_a_cold_gate_round_trips_and_a_malformed_one_names_its_field(tmp_path):
    gate = ColdGate(0.1, 10, 41.5)
    save_learned_weights(tmp_path, only({"cf": 1.0}, gate))
    assert load_learned_weights(tmp_path).cold == gate
    save_learned_weights(tmp_path / "old", only({"cf": 1.0}))  # a bundle from before
    assert load_learned_weights(tmp_path / "old").cold is None
    for bad, field in (
        ({"quota": 1.5, "recent": 10, "max_age_days": 1}, "cold.quota"),
        ({"quota": 0.1, "recent": 0, "max_age_days": 1}, "cold.recent"),
        ({"quota": 0.1, "recent": 10, "max_age_days": -1}, "cold.max_age_days"),
        ({"quota": "a lot", "recent": 10, "max_age_days": 1}, "cold.quota"),
        ({"quota": 0.1, "recent": 10}, "max_age_days"),
    ):
        root = tmp_path / f"bad-{field}-{len(bad)}-{bad.get('recent')}"
        raw = {**only({"cf": 1.0}).as_json(), "cold": bad}
        store = ArtifactStore(root)
        with store.new_version(BUNDLE, make_current=True) as writer:
            (writer.path / FILE).write_text(json.dumps(raw))
            writer.commit()
        with pytest.raises(ArtifactError, match=field):
            load_learned_weights(root)


def test_a_historys_age_is_the_median_of_its_items_ages_and_a_new_item_is_age_0():
    assert history_age_days([1.0, 5.0, 900.0]) == 5.0
    assert history_age_days([-1.0, -1.0, 300.0]) == 0.0  # two items the log never saw
    assert history_age_days([]) == float("inf")
    # ids the catalogue does not hold say nothing: left out, and alone they are no youth
    assert history_age_days([float("nan"), 900.0, 800.0]) == 850.0
    assert history_age_days([float("nan")] * 3) == float("inf")
    gate = ColdGate(0.2, 10, 30.0)
    assert gate.quota_for(30.0) == 0.2 and gate.quota_for(30.5) == 0.0
    assert gate.quota_for(None) == 0.0  # the catalogue knows no times


# --------------------------------------------------------------------------- serving


@pytest.mark.usefixtures("faults")
def test_a_young_history_gets_the_cold_slot_an_old_one_keeps_its_warm_items_and_no_scout(
    tmp_path,
):
    """The fit chose ``good`` alone and learned a gate: histories at most 30 days old
    get 1 slot of 5. ``other`` (a scout) returns a warm item and a new one. A request
    whose history was first seen 2 days before the log's end gets ``new``; one whose
    history is 1,000 days old keeps ``good``'s five and ``other`` is not called. The
    plan's ``cold_quota`` 0 turns the slots off for everyone, a text request (not
    covered by what was learned) gets the plan's quota whatever its history, and so does
    every request of a plan with ``learned_cold = false``."""
    folder = tmp_path / "catalog"
    warm = ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "warm_only_other"]
    old = [f"o{n}" for n in range(12)]
    young = [f"y{n}" for n in range(12)]
    ids = warm + old + young + ["new"]
    Catalog([ItemRecord(i) for i in ids], folder=folder).save(folder)
    end = 2_000 * DAY
    stamps = [0] * len(warm) + [end - 1_000 * DAY] * len(old) + [end - 2 * DAY] * 11 + [end]
    write_first_seen(folder, np.asarray(ids[:-1]), np.asarray(stamps))  # `new`: no row
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["w7"]}},
        "good": {"plugin": "fault", "params": {"items": ["w1", "w2", "w3", "w4", "w5", "w6"]}},
        "other": {"plugin": "fault", "params": {"items": ["warm_only_other", "new"]}},
    }
    only_good = {"popular": 0.0, "good": 1.0, "other": 0.0}
    save_learned_weights(tmp_path, only(only_good, ColdGate(0.2, RECENT, 30.0)))

    def ask(stub, history, text=""):
        resp = stub.Recall(recall_pb2.RecallRequest(history_item_ids=history, text=text, k=5))
        return list(resp.item_ids), {c.channel: c.status for c in resp.channels}

    results = {}
    for quota, gated in ((0.2, True), (0.0, True), (0.2, False)):
        plan = {
            "weights": {"popular": 0.1, "good": 1.0, "other": 0.5},
            "cold_quota": quota,
            "learned_cold": gated,
        }
        cfg = make_config(
            {"artifacts": {"root": str(tmp_path)}, "channels": channels, "plan": plan}, tmp_path
        )
        with serve(cfg, Catalog.load(folder)) as s:
            assert s.engine.learned_weights.cold == ColdGate(0.2, RECENT, 30.0)
            results[quota, gated] = {
                # the newest 10 decide: 9 young after 3 old is young, the reverse old
                "young": ask(s.stub, old[:3] + young[:9]),
                "old": ask(s.stub, young[:3] + old[:9]),
                "text": ask(s.stub, old[:9], text="anything"),
                # ids the catalogue does not hold are not new items: no evidence of youth
                "unknown": ask(s.stub, [f"gone{n}" for n in range(9)]),
            }
    got = results[0.2, True]
    assert got["young"][0] == ["w1", "w2", "w3", "w4", "new"], got["young"]
    assert got["young"][1]["other"] == recall_pb2.CHANNEL_STATUS_OK
    assert got["old"][0] == ["w1", "w2", "w3", "w4", "w5"], got["old"]
    assert got["old"][1]["other"] == recall_pb2.CHANNEL_STATUS_SKIPPED
    assert "new" in got["text"][0]  # the plan's weights and quota: other weighs 0.5
    assert got["unknown"][0] == ["w1", "w2", "w3", "w4", "w5"], got["unknown"]
    assert got["unknown"][1]["other"] == recall_pb2.CHANNEL_STATUS_SKIPPED
    off = results[0.0, True]
    assert off["young"][0] == ["w1", "w2", "w3", "w4", "w5"]
    assert off["young"][1]["other"] == recall_pb2.CHANNEL_STATUS_SKIPPED
    assert "new" not in off["text"][0]
    flat = results[0.2, False]  # learned_cold = false: the plan's quota for every request
    assert flat["old"][0] == flat["young"][0] == ["w1", "w2", "w3", "w4", "new"]


# --------------------------------------------------------------------------- fit


def _fit(
    young_targets_hold_the_list_end: bool, new_items_held_out: bool = True
) -> tuple[ColdGate | None, dict]:
    """200 validation users, the first 40 with young histories (1 day), the rest old
    (1,000 days). cf returns 100 warm items, the text channel a new one first. The old
    users' held-out items include cf's last item, which a cold slot would push out; the
    young users' include their new item (and, when asked, cf's last one too)."""
    users = range(200)
    plan = Plan(
        fusion="rrf",
        weights=MappingProxyType({"cf": 1.0, "text": 0.5}),
        channel_k=MappingProxyType({"cf": 100, "text": 100}),
        fusion_params=MappingProxyType({}),
        cold_quota=0.02,
    )
    learned = only({"cf": 1.0, "text": 0.0})
    cf, text, queries, ages = [], [], [], {}
    targets: dict[str, list[frozenset[str]]] = {"next": [], "temporal": [], "random": []}
    for u in users:
        warm = [f"w{u}-{n}" for n in range(100)]
        history = tuple(f"h{u}-{n}" for n in range(RECENT))
        age = 1.0 if u < 40 else 1_000.0
        ages.update({i: age for i in (*warm, *history)})
        cf.append(RankedList("cf", warm, np.linspace(1, 0, 100, dtype=np.float32)))
        text.append(RankedList("text", [f"c{u}", warm[0]], np.array([1, 0.5], np.float32)))
        queries.append(Query(user_id=f"u{u}", history=history, exclude=frozenset(history)))
        if u < 40:
            end = {warm[-1]} if young_targets_hold_the_list_end else set()
            new = {f"c{u}"} if new_items_held_out else {warm[1]}
            targets["next"].append(frozenset({*new, *end}))
            targets["temporal"].append(frozenset({*new, warm[0], *end}))
        else:
            targets["next"].append(frozenset({warm[-1]}))
            targets["temporal"].append(frozenset({warm[-1], warm[-2]}))
        targets["random"].append(frozenset({warm[0]}))
    known = frozenset(ages)
    return fit_cold_gate(
        plan,
        learned,
        {"cf": cf, "text": text},
        targets,
        queries,
        ages,
        known,
        ("cf", "text"),
        None,
    )


def test_the_fit_gives_cold_slots_to_the_young_histories_that_find_new_items():
    gate, report = _fit(young_targets_hold_the_list_end=False)
    assert gate is not None and gate.quota > 0
    assert 1.0 <= gate.max_age_days < 1_000.0  # the young users, and only them
    chosen = next(
        t
        for t in report["tried"]
        if t["quota"] == gate.quota and t["max_age_days"] == gate.max_age_days
    )
    assert chosen["within_warm_loss"]
    assert chosen["cold"]["next"] == 1.0  # every young user's new item found
    assert report["no_cold_slots"]["cold"]["next"] == 0.0
    # slots for everyone cost the old users cf's last item: outside the bound
    everyone = [t for t in report["tried"] if t["users"] == 1.0]
    assert everyone and not any(t["within_warm_loss"] for t in everyone)


def test_the_fit_keeps_no_cold_slot_when_every_slot_costs_more_warm_recall_than_allowed():
    gate, report = _fit(young_targets_hold_the_list_end=True)
    assert gate is not None and gate.quota == 0.0
    young_only = [t for t in report["tried"] if t["max_age_days"] < 1_000.0]
    assert young_only and not any(t["within_warm_loss"] for t in young_only)
    assert WARM_LOSS < 0.1  # the young users' loss (1 of 2 or 3 items) is far past it


def test_a_carve_that_holds_out_no_new_item_learns_no_gate_and_the_plan_quota_stays():
    """No evidence either way (a log where every item was seen early, while new ones
    come online later): no gate, so every request keeps the plan's cold quota."""
    gate, report = _fit(young_targets_hold_the_list_end=False, new_items_held_out=False)
    assert gate is None
    assert report["users_with_cold_items"] == 0 and "plan's cold quota" in report["reason"]

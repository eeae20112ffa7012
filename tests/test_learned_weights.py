"""Fusion weights the build learns per history segment (offline/fusion_fit.py), the
bundle they live in (runtime/learned_weights.py) and how a request gets them
(serving/segment_weights.py): the carve reads only the rows it is given, the fit finds
which channel serves which segment, a damaged bundle is refused, and through a real
server a request's history length picks its weights while hand-set variants, text
requests and bundles without learned weights keep the plan's."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from recall_engine._proto import recall_pb2
from recall_engine.config import Plan
from recall_engine.offline.data.interactions import Interactions
from recall_engine.offline.fusion_fit import MIN_SEGMENT_USERS, carve, fit_segments
from recall_engine.runtime.artifacts import ArtifactError, ArtifactStore
from recall_engine.runtime.catalog import Catalog, write_first_seen
from recall_engine.runtime.learned_weights import (
    BUNDLE,
    FILE,
    LearnedWeights,
    Segment,
    load_learned_weights,
    save_learned_weights,
)
from recall_engine.sdk.types import ItemRecord
from recall_engine.serving.fusion import RankedList
from recall_engine.serving.segment_weights import SCOUT_SHARE
from tests.fault_plugins import (
    fault_site,  # noqa: F401 - fixture
    faults,  # noqa: F401 - fixture
)
from tests.harness import catalog_of, make_config, serve

ITEMS = [f"i{n}" for n in range(1, 13)]


def learned(short: dict[str, float], long: dict[str, float]) -> LearnedWeights:
    return LearnedWeights(
        "rrf",
        (
            Segment("h1-10", 1, 10, MappingProxyType(short)),
            Segment("h11+", 11, None, MappingProxyType(long)),
        ),
    )


# --------------------------------------------------------------------------- carve


def test_the_carve_partitions_the_rows_it_is_given_newest_and_random_per_user():
    rng = np.random.default_rng(3)
    users = np.repeat([f"u{n}" for n in range(60)], 10)
    items = np.array([f"i{n}" for n in rng.permutation(600)])
    stamps = np.tile(np.arange(10), 60) * 100 + rng.integers(0, 50, 600)
    log = Interactions(users, items, stamps)
    c = carve(log, seed=1)
    held = set().union(*c.targets["temporal"], *c.targets["random"])
    assert len(c.train) + c.held_out_rows == len(log)
    assert held.isdisjoint(set(c.train.item_ids.tolist()))  # items are unique per row here
    assert held | set(c.train.item_ids.tolist()) == set(items.tolist())
    by_user = {u: sorted(zip(stamps[users == u], items[users == u], strict=True)) for u in users}
    for q, temporal, random in zip(
        c.queries, c.targets["temporal"], c.targets["random"], strict=True
    ):
        rows = by_user[q.user_id]
        assert len(temporal) == 1 and len(random) == 1  # 10 rows: 2 held out
        assert temporal == {rows[-1][1]}  # the newest
        assert random.isdisjoint({rows[-1][1]}) and random <= {i for _, i in rows}
        assert list(q.history) == [i for _, i in rows if i not in temporal | random]
        assert q.exclude == frozenset(q.history)


def test_the_next_target_is_the_row_right_after_the_history():
    """30 rows a user: 6 held out, the 3 newest (temporal) and 3 at random; the next
    target is the oldest of the 3 newest, the one that followed the history."""
    rng = np.random.default_rng(4)
    users = np.repeat([f"u{n}" for n in range(20)], 30)
    items = np.array([f"i{n}" for n in rng.permutation(600)])
    stamps = np.tile(np.arange(30), 20) * 100
    c = carve(Interactions(users, items, stamps), seed=2)
    assert set(c.targets) == {"next", "temporal", "random"}
    for q, nxt, temporal in zip(c.queries, c.targets["next"], c.targets["temporal"], strict=True):
        rows = [i for u, i in zip(users, items, strict=True) if u == q.user_id]  # time order
        assert temporal == set(rows[-3:]) and nxt == {rows[-3]}


# --------------------------------------------------------------------------- fit


def test_the_fit_gives_each_history_segment_the_channel_that_finds_its_items():
    """Channel a finds short-history users' held-out items (50th in its list), channel
    b long-history users'; both lists share 150 other items, which equal weights rank
    above the hit (each is in two lists). The global fit cannot serve both segments;
    each segment's own fit can."""
    n = MIN_SEGMENT_USERS
    lengths = [5] * n + [50] * n
    per: dict[str, list[RankedList]] = {"a": [], "b": []}
    targets: dict[str, list[frozenset[str]]] = {"temporal": [], "random": []}
    for u, length in enumerate(lengths):
        hit = f"hit{u}"
        filler = [f"f{u}-{j}" for j in range(150)]
        good, bad = [*filler[:49], hit, *filler[49:]], filler[::-1]
        a, b = (good, bad) if length == 5 else (bad, good)
        per["a"].append(RankedList("a", a, np.linspace(1, 0, len(a), dtype=np.float32)))
        per["b"].append(RankedList("b", b, np.linspace(1, 0, len(b), dtype=np.float32)))
        targets["temporal"].append(frozenset({hit}))
        targets["random"].append(frozenset({hit}))
    plan = Plan(
        fusion="rrf",
        weights=MappingProxyType({"a": 1.0, "b": 1.0}),
        channel_k=MappingProxyType({"a": 200, "b": 200}),
        fusion_params=MappingProxyType({}),
    )
    fit = fit_segments(plan, per, targets, lengths, ("a", "b"))
    segments = {s.name: dict(s.weights) for s in fit.learned.segments}
    short = next(w for name, w in segments.items() if name.startswith("h1-"))
    long = segments[fit.learned.segments[-1].name]
    assert short["a"] > short["b"] and long["b"] > long["a"], segments
    assert fit.validation["configured"]["temporal"] < 1.0
    for seg in fit.validation["segments"]:
        assert seg["chosen"] == {"temporal": 1.0, "random": 1.0}, fit.validation


def two_channel_case(users: int, lists_of) -> tuple:
    """(plan, per-channel lists, targets) of ``users`` users, with ``lists_of(u)``
    giving user ``u``'s lists of channels a and b and their temporal and random held-out
    item; the plan fuses a and b by RRF, b at 0.25."""
    per: dict[str, list[RankedList]] = {"a": [], "b": []}
    targets: dict[str, list[frozenset[str]]] = {"temporal": [], "random": []}
    for u in range(users):
        a, b, temporal, random = lists_of(u)
        for name, ids in (("a", a), ("b", b)):
            per[name].append(RankedList(name, ids, np.linspace(1, 0, len(ids), dtype=np.float32)))
        targets["temporal"].append(frozenset({temporal}))
        targets["random"].append(frozenset({random}))
    plan = Plan(
        fusion="rrf",
        weights=MappingProxyType({"a": 1.0, "b": 0.25}),
        channel_k=MappingProxyType({"a": 200, "b": 200}),
        fusion_params=MappingProxyType({}),
    )
    return plan, per, targets


def lists_where_b_rescues(misses: int, users: int = 200):
    """Channel a ranks each user's one held-out item first, except for the last
    ``misses`` users; channel b ranks it first for those users only."""

    def lists_of(u: int):
        hit, filler = f"hit{u}", [f"f{u}-{j}" for j in range(150)]
        missed = u >= users - misses
        a = filler if missed else [hit, *filler[:-1]]
        b = [hit, *filler[75:]] if missed else [f"g{u}-{j}" for j in range(75)]
        return a, b, hit, hit

    return two_channel_case(users, lists_of)


@pytest.mark.parametrize(("misses", "fused"), [(2, False), (10, True)])
def test_fused_weights_must_beat_the_best_channel_alone_by_the_margin(misses, fused):
    """b adds 1 % of the hits (2 users of 200: below MARGIN, 2 %), a is served alone;
    b adds 5 % (10 users), both are fused."""
    plan, per, targets = lists_where_b_rescues(misses)
    fit = fit_segments(plan, per, targets, [5] * 200, ("a", "b"))
    weights = dict(fit.learned.segments[0].weights)
    assert fit.validation["global_fit_recall"]["temporal"] == 1.0  # the fit finds b's hits
    if fused:
        assert weights["a"] > 0 and weights["b"] > 0, fit.validation
        assert fit.validation["global"]["temporal"] == 1.0
    else:
        assert weights == {"a": 1.0, "b": 0.0}, fit.validation
        assert fit.validation["global"]["temporal"] == pytest.approx(1 - misses / 200)


def lists_where_b_rescues_per_target(t_misses: int, r_costs: int, users: int = 200):
    """Each user has one held-out item per target. Channel a ranks the temporal one
    first, except for the last ``t_misses`` users, whose temporal item channel b ranks
    first. a ranks the random one second, except for the first ``r_costs`` users, where
    a has it at rank 95: fusing in b with the weight its rescues need (its top items
    then pass a's ranks past 80) pushes those out of the top 100."""

    def lists_of(u: int):
        t_hit, r_hit = f"t{u}", f"r{u}"
        t_missed = u >= users - t_misses
        a = [] if t_missed else [t_hit]
        a += [f"f{u}-{j}" for j in range(149 - len(a))]
        a.insert(94 if u < r_costs else 1, r_hit)
        b = ([t_hit] if t_missed else []) + [f"g{u}-{j}" for j in range(75)]
        return a, b, t_hit, r_hit

    return two_channel_case(users, lists_of)


@pytest.mark.parametrize(
    ("t_misses", "r_costs", "fused"),
    [
        (10, 0, True),  # +5.3 % on the temporal target, +0 % on the random one: fused
        (10, 3, False),  # the same rescues cost 1.5 % of the random target: a alone
        (3, 0, False),  # +1.5 % and 0: the mean is under MARGIN
    ],
)
def test_fused_weights_need_the_mean_gain_and_no_target_below_the_best_channel_alone(
    t_misses, r_costs, fused
):
    """Maximin up to FLOOR (0: no target worse than the best channel alone), then the
    mean gain, which must reach MARGIN. The pure maximin of before (every target by
    2 %) served a alone in the first case too, giving up 5 % of the temporal target."""
    plan, per, targets = lists_where_b_rescues_per_target(t_misses, r_costs)
    fit = fit_segments(plan, per, targets, [5] * 200, ("a", "b"))
    weights = dict(fit.learned.segments[0].weights)
    if fused:
        assert weights["a"] > 0 and weights["b"] > 0, fit.validation
        assert fit.validation["global"] == {"temporal": 1.0, "random": 1.0}
    else:
        assert weights == {"a": 1.0, "b": 0.0}, fit.validation


# --------------------------------------------------------------------------- bundle


def test_learned_weights_round_trip_and_a_flipped_byte_is_refused(tmp_path):
    saved = learned({"a": 1.0, "b": 0.25}, {"a": 0.1, "b": 1.0})
    version = save_learned_weights(tmp_path, saved, validation={"users": 3})
    got = load_learned_weights(tmp_path)
    assert got is not None and got.version == version
    assert got.as_json() == saved.as_json()
    assert dict(got.for_history(10)) == {"a": 1.0, "b": 0.25}
    assert dict(got.for_history(11)) == {"a": 0.1, "b": 1.0} and got.for_history(0) is None
    path = tmp_path / BUNDLE / version / FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{BUNDLE}/{version}/{FILE}"):
        load_learned_weights(tmp_path)


def test_no_bundle_is_none_and_a_sealed_but_malformed_file_names_the_field(tmp_path):
    assert load_learned_weights(tmp_path) is None
    bad = learned({"a": 1.0}, {"a": 1.0}).as_json()
    bad["segments"][1]["weights"]["a"] = -1
    with ArtifactStore(tmp_path).new_version(BUNDLE, make_current=True) as w:
        (w.path / FILE).write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match=r"segments\[1\]\.weights\.a"):
        load_learned_weights(tmp_path)


def test_segments_must_cover_every_history_length_once():
    with pytest.raises(ValueError, match="starts at 3, expected 1"):
        LearnedWeights("rrf", (Segment("x", 3, None, MappingProxyType({"a": 1.0})),))
    with pytest.raises(ValueError, match="open-ended"):
        LearnedWeights("rrf", (Segment("x", 1, 5, MappingProxyType({"a": 1.0})),))


# --------------------------------------------------------------------------- serving


def config_in(root: Path, **plan):
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["i9", "i10"]}},
        "good": {"plugin": "fault", "params": {"items": ["i1", "i2", "i3"]}},
        "other": {"plugin": "fault", "params": {"items": ["i4", "i5"]}},
    }
    return make_config(
        {
            "artifacts": {"root": str(root)},
            "channels": channels,
            "plan": {"weights": {"popular": 0.1, "good": 1.0, "other": 0.5}, **plan},
            "experiments": [
                {
                    "name": "exp",
                    "variants": [
                        {  # hand-set weights: served as written
                            "name": "hand",
                            "traffic": 0.5,
                            "plan": {"weights": {"popular": 0.1, "good": 0.2, "other": 0.3}},
                        },
                        {"name": "inherits", "traffic": 0.5},  # learned, like the default
                    ],
                }
            ],
        },
        root,
    )


def weights_of(stub, user: str, history: int, text: str = "") -> tuple[str, dict[str, float]]:
    resp = stub.Recall(
        recall_pb2.RecallRequest(
            user_id=user, history_item_ids=[f"h{n}" for n in range(history)], text=text, k=10
        ),
        timeout=5,
    )
    return resp.variant, {c.channel: round(c.weight, 4) for c in resp.channels}


@pytest.mark.usefixtures("faults")
def test_a_requests_history_length_picks_its_learned_weights_through_the_server(tmp_path):
    save_learned_weights(
        tmp_path,
        learned(
            {"popular": 0.0, "good": 1.0, "other": 0.25},
            {"popular": 0.05, "good": 0.5, "other": 1.0},
        ),
    )
    catalog = catalog_of(ITEMS + [f"h{n}" for n in range(40)])
    # no cold slots: a channel the fit set to 0 stays off (with them it scouts, below)
    with serve(config_in(tmp_path, cold_quota=0), catalog) as s:
        assert s.engine.learned_weights is not None
        seen: dict[str, dict[tuple[int, str], dict[str, float]]] = {}
        for n in range(40):  # both variants get traffic
            for history, text in ((3, ""), (30, ""), (3, "some text"), (0, "")):
                variant, w = weights_of(s.stub, f"u{n}", history, text)
                seen.setdefault(variant, {})[(history, text)] = w
    plan = {"popular": 0.1, "good": 1.0, "other": 0.5}
    for variant in ("inherits",):
        got = seen[variant]
        assert got[(3, "")] == {"popular": 0.0, "good": 1.0, "other": 0.25}
        assert got[(30, "")] == {"popular": 0.05, "good": 0.5, "other": 1.0}
        assert got[(3, "some text")] == plan  # text: nothing learned for it
        assert got[(0, "")] == plan  # no history
    for key, w in seen["hand"].items():  # set by hand for an A/B test: as written
        assert w == {"popular": 0.1, "good": 0.2, "other": 0.3}, key


@pytest.mark.usefixtures("faults")
def test_with_cold_slots_a_channel_the_fit_turned_off_still_scouts_for_new_items(tmp_path):
    """The fit chose ``good`` alone; ``other`` (weight 0.5 in the plan) returns a warm
    item and, second, a new one. With the plan's cold quota (1 slot of k = 5) ``other``
    is still called, at a weight under every chosen item's: ``new`` gets the cold slot,
    the warm item only ``other`` returned (ranked above it there) gets none. Without the
    quota ``other`` is not called at all. The fallback (``popular``) never scouts."""
    folder = tmp_path / "catalog"
    ids = ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "warm_only_other", "new"]
    Catalog([ItemRecord(i) for i in ids], folder=folder).save(folder)
    write_first_seen(folder, np.asarray(ids[:-1]), None)  # `new`: no interaction
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["w7"]}},
        "good": {"plugin": "fault", "params": {"items": ["w1", "w2", "w3", "w4", "w5", "w6"]}},
        "other": {"plugin": "fault", "params": {"items": ["warm_only_other", "new"]}},
    }
    only_good = {"popular": 0.0, "good": 1.0, "other": 0.0}
    save_learned_weights(tmp_path, learned(only_good, only_good))
    request = recall_pb2.RecallRequest(history_item_ids=["w7"], k=5)
    results = {}
    for quota in (0.2, 0.0):
        plan = {"weights": {"popular": 0.1, "good": 1.0, "other": 0.5}, "cold_quota": quota}
        cfg = make_config(
            {"artifacts": {"root": str(tmp_path)}, "channels": channels, "plan": plan}, tmp_path
        )
        with serve(cfg, Catalog.load(folder)) as s:
            resp = s.stub.Recall(request, timeout=5)
        results[quota] = (list(resp.item_ids), {c.channel: c for c in resp.channels})
    ids_q, st_q = results[0.2]
    assert ids_q == ["w1", "w2", "w3", "w4", "new"], ids_q
    assert st_q["other"].status == recall_pb2.CHANNEL_STATUS_OK
    assert 0 < st_q["other"].weight == pytest.approx(SCOUT_SHARE * 1.0)
    # the fallback returns no new item: it does not scout, it stays held in reserve
    assert st_q["popular"].weight == 0
    assert st_q["popular"].status == recall_pb2.CHANNEL_STATUS_SKIPPED
    ids_0, st_0 = results[0.0]
    assert ids_0 == ["w1", "w2", "w3", "w4", "w5"], ids_0
    assert st_0["other"].status == recall_pb2.CHANNEL_STATUS_SKIPPED


@pytest.mark.usefixtures("faults")
def test_without_learned_weights_or_with_a_damaged_bundle_the_plan_weights_serve(tmp_path, capsys):
    catalog = catalog_of(ITEMS + [f"h{n}" for n in range(40)])
    plan = {"popular": 0.1, "good": 1.0, "other": 0.5}
    off = tmp_path / "off"
    save_learned_weights(off, learned({"good": 1.0}, {"good": 1.0}))
    with serve(config_in(off, learned_weights=False), catalog) as s:
        assert weights_of(s.stub, "u-default", 30)[1] in (
            plan,
            {"popular": 0.1, "good": 0.2, "other": 0.3},
        )
    none = tmp_path / "none"
    none.mkdir()
    with serve(config_in(none), catalog) as s:  # a bundle from before: the reason logged
        assert s.engine.learned_weights is None
        for n in range(20):
            variant, w = weights_of(s.stub, f"u{n}", 30)
            if variant != "hand":
                assert w == plan
    out = capsys.readouterr()
    assert "learned_weights_absent" in out.out + out.err
    damaged = tmp_path / "damaged"
    version = save_learned_weights(damaged, learned({"good": 1.0}, {"good": 1.0}))
    (damaged / BUNDLE / version / FILE).write_text("{}")
    with serve(config_in(damaged), catalog) as s:  # starts, and serves the plan's weights
        assert s.engine.learned_weights is None
        for n in range(20):
            variant, w = weights_of(s.stub, f"u{n}", 30)
            if variant != "hand":
                assert w == plan
    out = capsys.readouterr()
    assert "learned_weights_refused" in out.out + out.err and FILE in out.out + out.err


# --------------------------------------------------------------------------- build


def test_the_build_fits_on_the_rows_it_is_given_and_writes_the_bundle(tmp_path):
    """``build_all`` after the channels: carves the log it was given (no other rows:
    carve + held out = that log), builds the channels once more on the carve, and
    writes a ``fusion.learned`` bundle the engine can read; a build of one channel
    alone (``channels=[...]``) or with ``fit_fusion=False`` leaves it out."""
    from recall_engine.offline.build import build_all
    from recall_engine.offline.data.demo import make_demo

    demo = make_demo(n_items=300, n_users=200)
    train = demo.interactions.take(np.arange(len(demo.interactions) - 500))
    config = make_config(
        {
            "artifacts": {"root": str(tmp_path)},
            "channels": {
                "popular": {"required": True},
                "recent": {"plugin": "popular", "params": {"half_life_days": 7.0}},
            },
            "plan": {"weights": {"popular": 1.0, "recent": 1.0}},
        },
        tmp_path,
    )
    built = {b.channel: b for b in build_all(train, demo.items, tmp_path, config)}
    assert built[BUNDLE].version, built
    got = load_learned_weights(tmp_path)
    assert got is not None and got.version == built[BUNDLE].version
    validation = ArtifactStore(tmp_path).open(BUNDLE).manifest["validation"]
    carve = validation["carve"]
    assert carve["train_rows"] + carve["held_out_rows"] == len(train)
    assert carve["held_out_rows"] > 0
    for target in ("temporal", "random"):  # maximin: never below a channel alone
        best = max(r[target] for r in validation["alone"].values())
        assert validation["global"][target] >= best, validation

    off = tmp_path / "off"
    names = [b.channel for b in build_all(train, demo.items, off, config, fit_fusion=False)]
    assert BUNDLE not in names and load_learned_weights(off) is None
    one = tmp_path / "one"
    config = make_config(
        {
            "artifacts": {"root": str(one)},
            "channels": {"popular": {"required": True}},
        },
        one,
    )
    skipped = {b.channel: b for b in build_all(train, demo.items, one, config)}
    assert not skipped[BUNDLE].version and load_learned_weights(one) is None  # nothing to fuse

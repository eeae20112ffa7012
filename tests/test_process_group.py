"""Admin reloads across serve --processes N: the control log (ProcessGroup) and what a
process does with the others' announcements (follow), on a real engine with two built
versions of the popular channel."""

from __future__ import annotations

import time

import pytest

from recall_engine.runtime.artifacts import ArtifactStore
from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.learned_weights import BUNDLE as LEARNED
from recall_engine.runtime.learned_weights import LearnedWeights, Segment, save_learned_weights
from recall_engine.runtime.shared_log import HEADER, encode_rows
from recall_engine.serving.engine import Engine
from recall_engine.serving.process_group import CONTROL_FILE, GroupFollowError, ProcessGroup, follow
from tests.harness import two_popular_versions


def group_pair(folder):
    one, two = ProcessGroup(folder), ProcessGroup(folder)
    two.pid = one.pid + 1  # two processes in one test
    return one, two


def test_a_process_reads_the_others_announcements_not_its_own(tmp_path):
    one, two = group_pair(tmp_path)
    one.announce_reload({"popular": "v2"})
    two.announce_config_reload()
    assert [r["op"] for r in one.read_others()] == ["reload_config"]
    assert two.read_others() == [{"op": "reload", "pid": one.pid, "versions": {"popular": "v2"}}]
    assert one.read_others() == [] and two.read_others() == []
    assert ProcessGroup.from_env() is None  # not started by serve --processes N


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"op": "restart", "pid": 1}, "unknown op 'restart'"),
        ({"op": "reload", "pid": 1, "versions": ["v2"]}, "'versions' must map"),
        ({"op": "reload", "pid": 1, "versions": {"popular": 2}}, "'versions' must map"),
        (1, "expected a JSON object"),
    ],
)
def test_malformed_records_are_named_by_file_and_byte(tmp_path, row, message):
    first = encode_rows([{"op": "reload_config", "pid": 1}])
    (tmp_path / CONTROL_FILE).write_bytes(HEADER + first + encode_rows([row]))
    at = len(HEADER) + len(first)
    with pytest.raises(ValueError, match=rf"{CONTROL_FILE} at byte {at}: {message}"):
        ProcessGroup(tmp_path).read_others()


def test_a_control_log_torn_by_a_dying_process_is_cut_before_the_next_announcement(tmp_path):
    one, two = group_pair(tmp_path)
    one.announce_config_reload()
    with open(tmp_path / CONTROL_FILE, "ab") as fh:  # a third process died mid-append
        fh.write(encode_rows([{"op": "reload_config", "pid": 7}])[:9])
    assert [r["pid"] for r in two.read_others()] == [one.pid]
    one.announce_reload({"popular": "v2"})
    assert two.read_others() == [{"op": "reload", "pid": one.pid, "versions": {"popular": "v2"}}]


@pytest.fixture()
def two_versions(tmp_path, demo_small):
    config, first, second = two_popular_versions(tmp_path, demo_small)
    engine = Engine(config, catalog=Catalog.load(tmp_path / "catalog"))
    engine.load()
    yield engine, config, first, second
    engine.close()


def serving(engine):
    return {cc.name: info.version for cc, info in engine.channel_infos()}


def test_follow_loads_the_announced_version_and_skips_what_is_already_served(two_versions):
    engine, config, first, second = two_versions
    assert serving(engine) == {"popular": first}
    assert follow(
        engine, [{"op": "reload", "pid": 1, "versions": {"popular": second}}], lambda: config
    ) == [f"popular {second}"]
    assert serving(engine) == {"popular": second}
    slot = engine._state.slots["popular"]
    assert (
        follow(
            engine,
            [
                {
                    "op": "reload",
                    "pid": 1,
                    "versions": {"popular": second},
                }
            ],
            lambda: config,
        )
        == []
    )
    assert engine._state.slots["popular"] is slot  # not loaded a second time
    gen = engine.generation
    assert follow(engine, [{"op": "reload_config", "pid": 1}], lambda: config) == [
        f"config generation {gen + 1}"
    ]


def test_a_failed_announcement_does_not_drop_the_ones_after_it(two_versions):
    engine, config, first, second = two_versions
    rows = [
        {"op": "reload", "pid": 1, "versions": {"popular": "no-such-version"}},
        {"op": "reload", "pid": 1, "versions": {"popular": second}},
    ]
    with pytest.raises(GroupFollowError, match="reload from process 1: .*no-such-version") as e:
        follow(engine, rows, lambda: config)
    assert e.value.done == [f"popular {second}"]
    assert serving(engine) == {"popular": second}


def test_follow_serves_the_announced_learned_weights_not_the_current_pointer(two_versions):
    """Another process announced ``fusion.learned``: this one serves that version (the
    announced one, even when the local pointer names a later one), once."""
    engine, config, _, _ = two_versions
    assert engine.learned_weights is None
    root = config.artifacts_root
    first = save_learned_weights(root, learned(1.0))
    time.sleep(1.1)  # version names have one-second resolution
    later = save_learned_weights(root, learned(2.0))
    assert ArtifactStore(root).current(LEARNED) == later
    row = {"op": "reload", "pid": 1, "versions": {LEARNED: first}}
    assert follow(engine, [row], lambda: config) == [f"{LEARNED} {first}"]
    assert engine.learned_weights.version == first
    assert engine.learned_weights.for_history(5) == {"popular": 1.0}
    assert follow(engine, [row], lambda: config) == []  # already served
    missing = {"op": "reload", "pid": 1, "versions": {LEARNED: "20990101T000000Z"}}
    with pytest.raises(GroupFollowError, match=f"{LEARNED}/20990101T000000Z: not served"):
        follow(engine, [missing], lambda: config)
    assert engine.learned_weights.version == first  # a refused one changes nothing


def learned(popular: float) -> LearnedWeights:
    return LearnedWeights("rrf", (Segment("h1+", 1, None, {"popular": popular}),))

"""The catalogue's update log: several processes each see the others' upserts and
deletes in log order; a torn tail is cut back and reported, never fatal; damage in the
middle is skipped and reported; compaction keeps start-up bounded and followers in step;
logs from earlier versions are migrated; a build never deletes a live log."""

from __future__ import annotations

import asyncio
import json

import pytest

from recall_engine.runtime.catalog import (
    COMPACT_RECORDS,
    ITEMS_FILE,
    LEGACY_UPDATES_FILE,
    Catalog,
    CatalogInUse,
    log_file,
    snapshot_file,
)
from recall_engine.runtime.shared_log import HEADER, encode_rows, scan
from recall_engine.sdk.channel import ItemRecord, Query
from recall_engine.serving.requests import RecallInput
from tests.harness import catalog_of
from tests.log_events import parse_events


@pytest.fixture()
def folder(tmp_path):
    catalog_of(["a", "b", "c"]).save(tmp_path / "catalog")
    return tmp_path / "catalog"


@pytest.fixture()
def events(capsys):
    """The structured log events called ``name`` emitted so far in the test."""
    seen: list[str] = []

    def get(name: str) -> list[dict]:
        out = capsys.readouterr()
        seen.append(out.out + out.err)
        return parse_events("".join(seen), name)

    return get


def log_bytes(folder, gen=0) -> bytes:
    return log_file(folder, gen).read_bytes()


def test_a_catalogue_reads_what_another_appended_and_not_its_own_writes(folder):
    one, two = Catalog.load(folder), Catalog.load(folder)
    one.upsert([ItemRecord("d", "Dee", "", ("x",))])
    one.delete(["a"])
    assert one.read_new_updates() == []
    ops = two.read_new_updates()
    assert ops == [("upsert", ItemRecord("d", "Dee", "", ("x",))), ("delete", "a")]
    assert two.read_new_updates() == []  # read once
    # a third process started now replays the whole log at load
    three = Catalog.load(folder)
    assert "d" in three and "a" not in three and three.read_new_updates() == []


def test_interleaved_writers_end_in_log_order(folder):
    one, two = Catalog.load(folder), Catalog.load(folder)
    one.upsert([ItemRecord("z", "first")])
    two.upsert([ItemRecord("z", "second")])  # lands after one's record
    # two had not read one's record, so it reads both, its own last: log order
    assert [what.title for _, what in two.read_new_updates()] == ["first", "second"]
    assert [what.title for _, what in one.read_new_updates()] == ["second"]


def test_every_record_is_framed_with_length_and_checksum(folder):
    Catalog.load(folder).upsert([ItemRecord("d", "Dee")])
    data = log_bytes(folder)
    assert data.startswith(HEADER)
    found = scan(data[len(HEADER) :], len(HEADER))
    assert len(found.records) == 1 and found.torn == 0 and not found.corrupt
    assert json.loads(found.records[0][1])[0]["item_id"] == "d"


def test_a_torn_tail_is_not_read_and_the_next_append_cuts_it_back(folder, events):
    reader, writer = Catalog.load(folder), Catalog.load(folder)
    writer.delete(["b"])
    whole = log_file(folder, 0).stat().st_size
    torn = encode_rows([{"op": "delete", "item_id": "c"}])[:-3]  # a writer died mid-frame
    with open(log_file(folder, 0), "ab") as fh:
        fh.write(torn)
    assert reader.read_new_updates() == [("delete", "b")]
    assert reader.read_new_updates() == []  # the torn frame is never applied

    writer.upsert([ItemRecord("e", "Eee")])
    assert [e["offset"] for e in events("update_log_tail_cut")] == [whole]
    assert events("update_log_tail_cut")[0]["dropped"] == len(torn)
    found = scan(log_bytes(folder)[len(HEADER) :], len(HEADER))
    assert found.torn == 0 and len(found.records) == 2
    assert reader.read_new_updates() == [("upsert", ItemRecord("e", "Eee"))]


def test_startup_cuts_a_torn_tail_with_a_warning_and_keeps_everything_before(folder, events):
    Catalog.load(folder).upsert([ItemRecord("d", "Dee")])
    path = log_file(folder, 0)
    whole = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(encode_rows([{"op": "delete", "item_id": "a"}])[:7])
    restarted = Catalog.load(folder)
    assert "d" in restarted and "a" in restarted
    assert path.stat().st_size == whole
    cut = events("update_log_tail_cut")
    assert (
        cut
        and cut[0]["file"] == str(path)
        and (cut[0]["offset"], cut[0]["dropped"])
        == (
            whole,
            7,
        )
    )
    restarted.delete(["a"])  # the next append is a valid record
    assert "a" not in Catalog.load(folder)


def test_damage_in_the_middle_is_skipped_and_reported_and_the_rest_applied(folder, events):
    writer = Catalog.load(folder)
    writer.upsert([ItemRecord("d", "Dee")])
    damaged_at = log_file(folder, 0).stat().st_size
    writer.upsert([ItemRecord("e", "Eee")])
    writer.upsert([ItemRecord("f", "Eff")])
    data = bytearray(log_bytes(folder))
    data[damaged_at + 20] ^= 0xFF  # a flipped byte inside the second record
    log_file(folder, 0).write_bytes(bytes(data))

    restarted = Catalog.load(folder)
    assert "d" in restarted and "f" in restarted and "e" not in restarted
    bad = events("update_log_corrupt")
    assert bad and bad[0]["file"] == str(log_file(folder, 0))
    assert bad[0]["offset"] == damaged_at and bad[0]["skipped"] > 0
    assert len(log_bytes(folder)) == len(data)  # reported, never cut: data follows it


def test_a_log_that_is_not_a_log_is_refused_by_name(folder):
    log_file(folder, 0).write_text('{"op": "delete", "item_id": "a"}\n')
    with pytest.raises(ValueError, match=r"updates\.0\.log: not a recall-engine log"):
        Catalog.load(folder)


def test_bad_records_are_named_by_file_and_byte(folder):
    reader = Catalog.load(folder)
    with open(log_file(folder, 0), "ab") as fh:
        fh.write(encode_rows([{"op": "delete", "item_id": "b"}]))
        fh.write(encode_rows([{"op": "rename"}]))
    with pytest.raises(ValueError, match=r"updates\.0\.log at byte \d+: unknown op 'rename'"):
        reader.read_new_updates()


# -- compaction ------------------------------------------------------------------------
def test_compaction_writes_a_snapshot_and_a_fresh_log_and_restart_reads_only_those(folder):
    writer = Catalog.load(folder, compact_records=3)
    writer.upsert([ItemRecord("d", "Dee")])
    writer.delete(["a"])
    assert not writer.needs_compaction()
    writer.upsert([ItemRecord("e", "Eee"), ItemRecord("b", "bee again")])
    assert writer.needs_compaction()
    assert writer.compact()
    assert writer.generation == 1
    assert snapshot_file(folder, 1).exists() and log_bytes(folder, 1) == HEADER
    restarted = Catalog.load(folder)
    assert restarted.generation == 1
    assert sorted(restarted.ids()) == ["b", "c", "d", "e"]
    assert restarted.get("b").title == "bee again"
    writer.upsert([ItemRecord("g")])  # appended to the new generation
    assert log_file(folder, 1).stat().st_size > len(HEADER)
    assert "g" in Catalog.load(folder)


def test_followers_move_through_compactions_in_log_order(folder):
    leader, follower = Catalog.load(folder, compact_records=1), Catalog.load(folder)
    leader.upsert([ItemRecord("d", "one")])
    assert leader.compact()  # generation 0 -> 1; the follower has not read log 0 yet
    leader.upsert([ItemRecord("d", "two")])
    assert leader.compact()  # 1 -> 2: generation 0 is deleted
    leader.delete(["a"])
    assert not snapshot_file(folder, 0).exists() and not log_file(folder, 0).exists()
    ops = follower.read_new_updates()  # its log was deleted: the difference instead
    state = {i: follower.get(i) for i in follower.ids()}
    for op, what in ops:
        if op == "delete":
            state.pop(what)
        else:
            state[what.item_id] = what
    assert sorted(state) == ["b", "c", "d"] and state["d"].title == "two"
    assert follower.generation == 2

    # one generation behind: it reads the rest of the closed log, then the next one
    slow = Catalog.load(folder)
    leader.upsert([ItemRecord("h", "before")])
    assert leader.compact()  # 2 -> 3
    leader.upsert([ItemRecord("h", "after")])
    assert [what.title for _, what in slow.read_new_updates()] == ["before", "after"]
    assert slow.generation == 3


def test_a_writer_on_a_closed_generation_appends_to_the_next(folder):
    leader, other = Catalog.load(folder, compact_records=1), Catalog.load(folder)
    leader.upsert([ItemRecord("d")])
    assert leader.compact()
    other.upsert([ItemRecord("x", "late")])  # other still believes generation 0 is open
    assert log_bytes(folder, 0).count(b"late") == 0
    assert Catalog.load(folder).get("x").title == "late"
    # and it reads what it missed of generation 0 first, then its own record again
    assert [op for op, _ in other.read_new_updates()] == ["upsert", "upsert"]


def test_compaction_waits_until_this_process_has_read_everything(folder):
    one, two = Catalog.load(folder, compact_records=1), Catalog.load(folder)
    one.upsert([ItemRecord("d")])
    two.upsert([ItemRecord("e")])  # one has not read this yet
    assert not one.compact()
    one.read_new_updates()
    assert one.compact()


def test_compaction_default_is_large():
    assert COMPACT_RECORDS >= 10_000


# -- older logs and builds -------------------------------------------------------------
def test_an_unframed_log_from_an_earlier_version_is_migrated_once(folder, events):
    log_file(folder, 0).unlink()
    (folder / LEGACY_UPDATES_FILE).write_text(
        '{"op": "upsert", "item_id": "d", "title": "Dee"}\n'
        # the old version's failure: a torn line with the next record glued onto it
        '{"op": "delete", "item_id": "b"}\n{"op": "upsert", "item_id": "x", "ti'
        '{"op": "upsert", "item_id": "e", "title": "Eee"}\n'
        '{"op": "delete", "item_id": "c"}\n'
        '{"op": "delete", "it'  # torn last line
    )
    migrated = Catalog.load(folder)
    assert sorted(migrated.ids()) == ["a", "d", "e"]
    assert not (folder / LEGACY_UPDATES_FILE).exists()
    assert (folder / (LEGACY_UPDATES_FILE + ".migrated")).exists()
    assert migrated.generation == 1 and events("catalog_log_migrated")
    assert events("update_log_corrupt") and events("update_log_tail_cut")
    assert sorted(Catalog.load(folder).ids()) == ["a", "d", "e"]  # once


def test_saving_over_a_live_catalogues_updates_is_refused_naming_the_file(folder):
    Catalog.load(folder).upsert([ItemRecord("d")])
    with pytest.raises(CatalogInUse, match=r"updates\.0\.log: this folder holds a live"):
        catalog_of(["x"]).save(folder)
    assert "d" in Catalog.load(folder)  # nothing lost
    catalog_of(["x"]).save(folder, force=True)
    assert Catalog.load(folder).ids() == ["x"]
    assert (folder / ITEMS_FILE).exists()


def test_the_engine_applies_other_processes_updates_to_every_channel(folder, tmp_path):
    from recall_engine.config.schema import parse_config
    from recall_engine.serving.engine import Engine

    config = parse_config(
        {
            "artifacts": {"root": str(tmp_path)},
            "channels": {"f": {"plugin": "fixed", "params": {"items": ["a", "b", "c"]}}},
        },
        tmp_path,
    )
    engine = Engine(config)
    engine.load()
    try:
        other = Catalog.load(folder)  # another process's catalogue
        other.delete(["a"])
        other.upsert([ItemRecord("a", "back again"), ItemRecord("e")])
        other.delete(["b"])
        assert engine.sync_catalog() == 4
        assert engine.catalog.get("a").title == "back again"
        assert "e" in engine.catalog and "b" not in engine.catalog
        assert engine.sync_catalog() == 0
        out = asyncio.run(engine.recall(RecallInput(Query(user_id="u"), 3, "r")))
        assert out.fused.item_ids == ["a", "c"]  # the channel sees the catalogue now
    finally:
        engine.close()

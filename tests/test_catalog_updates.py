"""Several processes on one catalogue: each sees the others' logged upserts and deletes,
in log order (Catalog.read_new_updates, Engine.sync_catalog)."""

from __future__ import annotations

import asyncio

import pytest

from recall_engine.runtime.catalog import UPDATES_FILE, Catalog
from recall_engine.sdk.channel import ItemRecord, Query
from recall_engine.serving.requests import RecallInput
from tests.harness import catalog_of


@pytest.fixture()
def folder(tmp_path):
    catalog_of(["a", "b", "c"]).save(tmp_path / "catalog")
    return tmp_path / "catalog"


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
    two.upsert([ItemRecord("z", "second")])  # lands after one's line
    # two had not read one's line, so it reads both, its own last: log order
    assert [what.title for _, what in two.read_new_updates()] == ["first", "second"]
    assert [what.title for _, what in one.read_new_updates()] == ["second"]


def test_only_whole_lines_are_read_and_bad_lines_are_named(folder):
    reader = Catalog.load(folder)
    with open(folder / UPDATES_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"op": "delete", "item_id": "b"}\n{"op": "del')  # a writer mid-line
    assert reader.read_new_updates() == [("delete", "b")]
    assert reader.read_new_updates() == []
    with open(folder / UPDATES_FILE, "a", encoding="utf-8") as fh:
        fh.write('ete", "item_id": "c"}\n{"op": "rename"}\n')
    with pytest.raises(ValueError, match=r"updates.jsonl at byte \d+: unknown op 'rename'"):
        reader.read_new_updates()


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

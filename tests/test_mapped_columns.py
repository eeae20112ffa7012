"""Catalogue columns and index id maps mapped read-only from files (issue 16, memory
per host): same answers as the dicts they replace, one copy of the pages per host, and
damaged files refused by name."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.catalog_columns import (
    BaseRows,
    ColumnItems,
    ColumnsError,
    OverlayItems,
    columns_file,
)
from recall_engine.runtime.id_map import IDS_COLUMNS_FILE, IdMap
from recall_engine.runtime.index import IDS_FILE, VectorIndex
from recall_engine.sdk.types import ItemRecord, Query
from tests.helpers import python_children

CATS = ("a", "b", "ç", "long-category")


def _random_id(rng: random.Random) -> str:
    alphabet = "abcxyz019-_é漢"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def _random_item(rng: random.Random, item_id: str) -> ItemRecord:
    cats = tuple(rng.sample(CATS, rng.randint(0, 3)))
    return ItemRecord(item_id, f"title {rng.random()}", "text é " * rng.randint(0, 3), cats)


def _catalogue(tmp_path: Path, n: int, seed: int) -> tuple[Path, dict[str, ItemRecord]]:
    rng = random.Random(seed)
    ids = list(dict.fromkeys(_random_id(rng) for _ in range(n)))
    items = {i: _random_item(rng, i) for i in ids}
    folder = tmp_path / "catalog"
    Catalog(items.values()).save(folder)
    return folder, items


def _expected_mask(want: dict[str, ItemRecord], names: list[str], query: Query) -> list[bool]:
    cats = query.categories
    return [
        i in want
        and i not in query.exclude
        and (not cats or not cats.isdisjoint(want[i].categories))
        for i in names
    ]


def _assert_same(catalog: Catalog, want: dict[str, ItemRecord], probes: list[str]) -> None:
    assert len(catalog) == len(want)
    assert sorted(catalog.ids()) == sorted(want)
    for item_id in probes:
        assert (item_id in catalog) == (item_id in want), item_id
        assert catalog.get(item_id) == want.get(item_id), item_id
        got = catalog.categories(item_id)
        assert got == (want[item_id].categories if item_id in want else ())
    for cats in (frozenset(), frozenset({"a"}), frozenset({"ç", "b"}), frozenset({"nope", "a"})):
        query = Query(categories=cats, exclude=frozenset(probes[:3]))
        assert catalog.filter_mask(probes, query) == _expected_mask(want, probes, query)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mapped_catalogue_answers_like_a_dict_through_upserts_and_deletes(
    tmp_path: Path, seed: int
) -> None:
    folder, want = _catalogue(tmp_path, 300, seed)
    assert columns_file(folder / "items.jsonl").exists()
    catalog = Catalog.load(folder)
    assert isinstance(catalog._items, OverlayItems)
    rng = random.Random(seed + 100)
    unknown = [_random_id(rng) + "?" for _ in range(20)] + ["", "x" * 40]
    probes = list(want)[:100] + unknown
    _assert_same(catalog, want, probes)
    for _ in range(5):  # online changes: logged, applied on top of the mapped base
        fresh = [_random_item(rng, _random_id(rng)) for _ in range(10)]
        replaced = [_random_item(rng, i) for i in rng.sample(sorted(want), 5)]
        catalog.upsert(fresh + replaced)
        want.update((it.item_id, it) for it in fresh + replaced)
        gone = rng.sample(sorted(want), 8) + ["never-there"]
        catalog.delete(gone)
        for i in gone:
            want.pop(i, None)
        back = rng.choice(gone[:-1])  # deleted from the base, then upserted again
        item = _random_item(rng, back)
        catalog.upsert([item])
        want[back] = item
        probes = rng.sample(sorted(want), 50) + gone + unknown
        _assert_same(catalog, want, probes)
    reloaded = Catalog.load(folder)  # the base from the file, the changes from the log
    _assert_same(reloaded, want, probes)
    assert catalog.compact()
    compacted = Catalog.load(folder)
    assert isinstance(compacted._items, OverlayItems)
    assert compacted._items.changes == 0  # the new generation's columns hold everything
    _assert_same(compacted, want, probes)


@pytest.mark.parametrize("seed", [0, 1])
def test_filter_mask_with_a_lists_rows_answers_like_the_id_search(
    tmp_path: Path, seed: int
) -> None:
    """A channel that holds its candidates as positions in a fixed id list (cf's
    vocabulary) passes the list's rows in the columns, found once: same answers as
    the search, through upserts and deletes, with and without category filters."""
    folder, want = _catalogue(tmp_path, 300, seed)
    catalog = Catalog.load(folder)
    rng = random.Random(seed + 7)
    absent = [_random_id(rng) + "?" for _ in range(20)]
    vocab = np.asarray(sorted(set(list(want)[:200] + absent)))
    rows = catalog.base_rows(vocab.tolist())
    assert rows is not None and len(rows.rows) == len(vocab)
    for step in range(4):
        if step:  # absent ids arrive, present ones leave, one comes back
            arriving = [_random_item(rng, i) for i in rng.sample(absent, 3)]
            catalog.upsert(arriving)
            want.update((it.item_id, it) for it in arriving)
            gone = rng.sample(sorted(set(want) & set(vocab.tolist())), 6)
            catalog.delete(gone)
            for i in gone:
                del want[i]
            again = _random_item(rng, gone[0])
            catalog.upsert([again])
            want[again.item_id] = again
        positions = np.asarray(rng.sample(range(len(vocab)), 80))
        names = vocab[positions].tolist()
        for cats in (frozenset(), frozenset({"a"}), frozenset({"ç", "b"})):
            query = Query(categories=cats, exclude=frozenset(names[:2]))
            expect = _expected_mask(want, names, query)
            assert catalog.filter_mask(names, query, rows=(rows, positions)) == expect
            assert catalog.filter_mask(names, query) == expect


def test_a_lists_rows_are_read_only_for_the_columns_they_were_found_in(tmp_path: Path) -> None:
    folder, want = _catalogue(tmp_path, 100, 3)
    catalog = Catalog.load(folder)
    names = sorted(want)[:30]
    positions = np.arange(len(names))
    query = Query()
    assert isinstance(catalog._items, OverlayItems)
    nowhere = np.full(len(names), -1, dtype=np.int32)
    # rows for these columns are taken as given (so a channel's rows are used) ...
    stale = BaseRows(catalog._items.base, nowhere)
    assert catalog.filter_mask(names, query, rows=(stale, positions)) == [False] * len(names)
    # ... rows found in another load's columns are not: the ids are searched
    other = BaseRows(Catalog.load(folder)._items.base, nowhere)
    assert catalog.filter_mask(names, query, rows=(other, positions)) == [True] * len(names)
    # a catalogue held as a dict has no columns to find rows in
    in_memory = Catalog(want.values())
    assert in_memory.base_rows(names) is None
    assert in_memory.filter_mask(names, query, rows=(None, positions)) == [True] * len(names)


def test_catalogue_from_before_columns_loads_and_gets_them(tmp_path: Path) -> None:
    folder, want = _catalogue(tmp_path, 50, 7)
    columns_file(folder / "items.jsonl").unlink()
    catalog = Catalog.load(folder)
    assert isinstance(catalog._items, OverlayItems)
    assert columns_file(folder / "items.jsonl").exists()
    _assert_same(catalog, want, list(want))


def test_catalogue_columns_are_a_read_only_mapping(tmp_path: Path) -> None:
    folder, _ = _catalogue(tmp_path, 50, 3)
    items = Catalog.load(folder)._items
    assert isinstance(items, OverlayItems)
    column = items.base.id_column
    assert isinstance(column.base, np.memmap) or isinstance(column, np.memmap)
    assert not column.flags.writeable
    with pytest.raises(ValueError):
        column[0] = b"x"


_CHILD = """
import sys
from pathlib import Path
from recall_engine.runtime.catalog import Catalog
catalog = Catalog.load(Path(sys.argv[1]))
assert sum(1 for _ in catalog) == len(catalog)  # touch every page of the columns
print("ready", flush=True)
sys.stdin.readline()
"""


def _smaps_entry(pid: int, path: Path) -> dict[str, int]:
    fields: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line
            inside = line.endswith(" " + str(path))
        elif inside and line.endswith(" kB"):
            name, value = line.split(":")
            fields[name] = fields.get(name, 0) + int(value.split()[0])
    return fields


def test_two_processes_share_the_pages_of_the_columns_file(tmp_path: Path) -> None:
    folder, _ = _catalogue(tmp_path, 20_000, 5)
    path = columns_file(folder / "items.jsonl").resolve()
    children = python_children(_CHILD, str(folder))
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        first = _smaps_entry(children[0].pid, path)
        assert first.get("Rss", 0) > 0, "the child does not map the columns file"
        assert first.get("Private_Dirty", 0) == 0  # read-only: nothing copied
        assert first.get("Shared_Clean", 0) > 0  # the other child maps the same pages
        assert first["Pss"] < first["Rss"]
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_catalogue_columns_are_refused_by_name(tmp_path: Path, damage: str) -> None:
    folder, want = _catalogue(tmp_path, 200, 9)
    path = columns_file(folder / "items.jsonl")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "flip":
        data[-200] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a columns file at all")
    with pytest.raises(ColumnsError, match=r"items\.cols.*(truncated|sha256|header)"):
        ColumnItems(path)
    catalog = Catalog.load(folder)  # the JSON lines snapshot is read instead
    assert not isinstance(catalog._items, OverlayItems)
    _assert_same(catalog, want, list(want)[:20])


def _index(tmp_path: Path, n: int, seed: int) -> tuple[VectorIndex, list[str], np.ndarray]:
    rng = random.Random(seed)
    ids = list(dict.fromkeys(_random_id(rng) for _ in range(n)))
    vectors = np.random.default_rng(seed).normal(size=(len(ids), 8)).astype(np.float32)
    index = VectorIndex(8, metric="cos")
    index.add(ids, vectors)
    index.delete(ids[:5])  # holes in the keys
    return index, ids, vectors


@pytest.mark.parametrize("view", [True, False])
def test_mapped_id_map_answers_like_a_dict(tmp_path: Path, view: bool) -> None:
    index, ids, vectors = _index(tmp_path, 400, 11)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / IDS_COLUMNS_FILE).exists()
    loaded = VectorIndex.load(tmp_path / "idx", view=view)
    want = {i: v for i, v in zip(ids, vectors, strict=True)}
    for gone in ids[:5]:
        del want[gone]
    rng = random.Random(12)
    for round_ in range(4):
        probes = rng.sample(sorted(want), 30) + ids[:5] + ["nope", "", "z" * 50]
        assert len(loaded) == len(want)
        assert sorted(loaded.ids()) == sorted(want)
        for item_id in probes:
            assert (item_id in loaded) == (item_id in want), item_id
        got, positions = loaded.vectors(probes)
        assert [probes[p] for p in positions] == [p for p in probes if p in want]
        hits = loaded.search(vectors[10:12], 5)
        assert all(h in want for ids_, _ in hits for h in ids_)
        top, _ = loaded.search(want[probes[0]], 1)[0]
        assert top == [probes[0]]
        # online changes on top of the mapped base
        new = [f"new-{round_}-{n}" for n in range(5)]
        fresh = np.random.default_rng(round_).normal(size=(5, 8)).astype(np.float32)
        loaded.add(new, fresh)
        want.update(zip(new, fresh, strict=True))
        gone = rng.sample(sorted(want), 4)
        loaded.delete(gone)
        for g in gone:
            del want[g]
        back = np.random.default_rng(100 + round_).normal(size=(1, 8)).astype(np.float32)
        loaded.add([gone[0]], back)  # back again, under a new key
        want[gone[0]] = back[0]
    loaded.save(tmp_path / "again")
    again = VectorIndex.load(tmp_path / "again", view=view)
    assert sorted(again.ids()) == sorted(want)
    assert again.search(want[gone[0]], 1)[0][0] == [gone[0]]


def test_id_map_of_a_viewed_bundle_is_a_read_only_mapping(tmp_path: Path) -> None:
    index, _, _ = _index(tmp_path, 100, 13)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx", view=True)
    base = loaded._map._sorted
    assert isinstance(base.base, np.memmap) or isinstance(base, np.memmap)
    assert not base.flags.writeable


def test_bundle_without_ids_columns_loads_from_ids_json(tmp_path: Path) -> None:
    index, _, _ = _index(tmp_path, 100, 14)
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / IDS_COLUMNS_FILE).unlink()
    loaded = VectorIndex.load(tmp_path / "idx", view=True)
    assert sorted(loaded.ids()) == sorted(index.ids())
    listed = json.loads((tmp_path / "idx" / IDS_FILE).read_text())["ids"]
    assert len(IdMap.from_list(listed)) == len(index)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_ids_columns_are_refused_by_name(tmp_path: Path, damage: str) -> None:
    index, _, _ = _index(tmp_path, 100, 15)
    index.save(tmp_path / "idx")
    path = tmp_path / "idx" / IDS_COLUMNS_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[:-64])
    else:
        data[-70] ^= 0x55
        path.write_bytes(bytes(data))
    with pytest.raises(ColumnsError, match=r"ids\.cols.*(truncated|sha256).*rebuild"):
        VectorIndex.load(tmp_path / "idx", view=True)

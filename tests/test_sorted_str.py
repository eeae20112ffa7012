"""Id look-ups in sorted, fixed-width id columns (runtime/sorted_str.py): UTF-8 and str
columns give the same answers, and no id matches a form numpy would cut it to."""

from __future__ import annotations

import random

import numpy as np
import pytest

from recall_engine.runtime.catalog_columns import (
    ColumnItems,
    map_column_file,
    write_column_file,
    write_columns,
)
from recall_engine.runtime.id_map import IdMap
from recall_engine.runtime.sorted_str import (
    TABLE_MIN_IDS,
    find_sorted,
    hash_table,
    id_hashes,
    usable_table,
    utf8_column,
)
from recall_engine.sdk.types import ItemRecord

BIG = [f"item-{n:07d}" for n in range(0, 3 * TABLE_MIN_IDS, 3)]  # sorted, unique
STORED = ["a", "ab", "b", "item-7", "z" * 9, "é", "日本", "\U0001f600", "\ud800x", "~"]
ABSENT = ["", "a\0", "ab\0\0", "item-7\0", "z" * 10, "c", "日", "\ud800", "ab ", "A"]


@pytest.fixture(params=["utf-8", "str", "utf-8 hashed", "str hashed"])
def column(request):
    """(column, its look-up table or None)."""
    ids = np.unique(np.asarray(STORED, dtype=str))
    col = utf8_column(ids) if request.param.startswith("utf-8") else ids
    return col, hash_table(col) if request.param.endswith("hashed") else None


# A table serves look-ups of _TABLE_FROM ids or more: the probes are repeated past it.
MANY = 6


def test_stored_ids_are_found_at_their_rows(column):
    col, table = column
    ordered = sorted(STORED, key=lambda i: i.encode("utf-8", "surrogatepass"))
    for probes in (STORED, STORED * MANY):
        got = find_sorted(col, probes, table)
        assert got.tolist() == [ordered.index(i) for i in probes]
        assert got.dtype == np.int64


def test_ids_numpy_would_cut_or_pad_to_a_stored_one_are_absent(column):
    col, table = column
    for n in (1, MANY):
        assert find_sorted(col, ABSENT * n, table).tolist() == [-1] * len(ABSENT) * n
        mixed = ["b", "a\0", "é"] * 3 * n  # an id with NUL among others: the slow path
        assert (find_sorted(col, mixed, table) >= 0).tolist() == [True, False, True] * 3 * n


def test_utf8_and_str_columns_agree_on_random_ids():
    rng = random.Random(5)
    alphabet = "ab\0é日\U0001f600-"
    stored = sorted({"".join(rng.choices(alphabet[2:], k=rng.randint(1, 6))) for _ in range(300)})
    stored = [s for s in stored if not s.endswith("\0")]
    probes = stored[::3] + ["".join(rng.choices(alphabet, k=rng.randint(0, 7))) for _ in range(300)]
    as_str = np.unique(np.asarray(stored, dtype=str))
    as_utf8 = utf8_column(as_str)
    assert (np.diff(np.argsort(as_utf8)) == 1).all()  # UTF-8 keeps code-point order
    want = [stored.index(p) if p in stored else -1 for p in probes]
    for col in (as_str, as_utf8):
        assert find_sorted(col, probes).tolist() == want
        assert find_sorted(col, probes, hash_table(col)).tolist() == want


def test_the_table_finds_every_id_of_a_large_column_and_no_other():
    ids = utf8_column(np.unique(np.asarray([f"i{n * 7919 % 100_003}" for n in range(60_000)])))
    table = hash_table(ids)
    assert len(table) == 131_072 and (table >= 0).sum() == len(ids)
    assert np.array_equal(np.sort(table[table >= 0]), np.arange(len(ids)))
    probes = [i.decode() for i in ids.tolist()] + [f"x{n}" for n in range(5_000)]
    assert find_sorted(ids, probes, table).tolist() == list(range(len(ids))) + [-1] * 5_000


def test_the_hash_is_fixed_so_a_table_written_on_one_machine_serves_on_another():
    got = id_hashes(np.array([b"a", b"item-0000001", b"\xe6\x97\xa5"], dtype="S12"))
    assert got.tolist() == HASHES  # a change here makes every written table useless


HASHES = [13437277707048939581, 4762836079754501543, 2692135334335850648]


def test_a_damaged_table_is_not_used_and_a_used_one_cannot_return_a_wrong_row():
    col = utf8_column(np.asarray(BIG))
    table = hash_table(col)
    assert usable_table(table, col) is table
    assert usable_table(table[:-1], col) is None  # not a power of two
    assert usable_table(table.astype(np.float32), col) is None
    assert usable_table(np.where(table >= 0, table + 1, -1), col) is None  # past the end
    assert usable_table(table[: len(table) // 4], col) is None  # more than half full
    assert usable_table(None, col) is None
    probes = BIG[::1000] + ABSENT * MANY
    truth = find_sorted(col, probes).tolist()
    shuffled = table[::-1].copy()  # passes the checks, but rows sit in the wrong slots
    assert usable_table(shuffled, col) is shuffled
    got = find_sorted(col, probes, shuffled).tolist()
    assert all(g in (-1, t) for g, t in zip(got, truth, strict=True))  # misses, never wrong
    assert got != truth  # (the check above would hold for a sound table too)
    full = np.zeros_like(table)  # no empty slot anywhere: refused, and if one were
    assert usable_table(full, col) is None  # used, the sorted search ends the probing
    assert find_sorted(col, probes, full).tolist() == truth


def test_a_small_column_is_searched_the_sorted_way_whatever_its_table():
    """Under TABLE_MIN_IDS ids the column stays in the CPU's caches and the binary
    search is cheaper (the default install's 2,000 items)."""
    col = utf8_column(np.asarray(BIG[: TABLE_MIN_IDS - 1]))
    assert usable_table(hash_table(col), col) is None


def test_the_catalogue_columns_and_a_vector_index_refuse_an_id_with_a_trailing_nul(tmp_path):
    path = tmp_path / "items.cols"
    write_columns(path, [ItemRecord(i) for i in ("a", "b")])
    items = ColumnItems(path)
    assert items.positions(["a", "a\0", "b"]).tolist() == [0, -1, 1]
    ids = IdMap.from_list(["a", "b"])
    assert ids.keys_of(["b", "b\0", "a"]) == [1, None, 0]


# --------------------------------------------------------------------------- the files


def _rewrite(path, change):
    """The columns file at ``path`` written again with ``change(columns)`` applied."""
    cols, header = map_column_file(path, "test", "")
    extra = {k: v for k, v in header.items() if k not in ("columns", "body_bytes", "sha256")}
    order = sorted(header["columns"], key=lambda n: header["columns"][n]["offset"])
    write_column_file(path, change({n: np.array(cols[n]) for n in order}), extra)


def _without(name):
    return lambda cols: [(n, c) for n, c in cols.items() if n != name]


def _scrambled(name):
    return lambda cols: [(n, c[::-1].copy() if n == name else c) for n, c in cols.items()]


ITEMS = BIG  # the readers use a table from TABLE_MIN_IDS ids on
PROBES = ITEMS[::997] + [f"item-{n:07d}" for n in range(1, 3000, 97)]


def test_catalogue_columns_carry_a_table_that_answers_like_the_sorted_search(tmp_path):
    path = write_columns(tmp_path / "items.cols", [ItemRecord(i) for i in ITEMS])
    assert "ids_table" in map_column_file(path, "test", "")[0]
    got = ColumnItems(path).positions(PROBES).tolist()
    _rewrite(path, _without("ids_table"))  # a file written before 2026-12-05
    assert ColumnItems(path).positions(PROBES).tolist() == got
    assert [g >= 0 for g in got] == [p in set(ITEMS) for p in PROBES]
    path = write_columns(tmp_path / "items.cols", [ItemRecord(i) for i in ITEMS])
    _rewrite(path, _scrambled("ids_table"))  # the table is what answers: rows in the
    scrambled = ColumnItems(path).positions(PROBES).tolist()  # wrong slots go unfound
    assert scrambled != got and all(s in (-1, g) for s, g in zip(scrambled, got, strict=True))


def test_index_ids_carry_a_table_that_answers_like_the_sorted_search(tmp_path):
    path = IdMap.write(tmp_path / "ids.cols", ITEMS[::-1])  # key order is not id order
    assert "sorted_table" in map_column_file(path, "test", "")[0]
    got = IdMap.open(path).keys_of(PROBES)
    key = {item: len(ITEMS) - 1 - n for n, item in enumerate(ITEMS)}
    assert got == [key.get(p) for p in PROBES]
    _rewrite(path, _without("sorted_table"))
    assert IdMap.open(path).keys_of(PROBES) == got
    IdMap.write(path, ITEMS[::-1])
    _rewrite(path, _scrambled("sorted_table"))
    scrambled = IdMap.open(path).keys_of(PROBES)
    assert scrambled != got and all(s in (None, g) for s, g in zip(scrambled, got, strict=True))


def _id_map_story(ids: IdMap) -> list:
    """Every answer of an index id map through deletes, re-adds and new ids."""
    probes = ["a", "b", "c", "gone", "a\0", "zz", "new", ""]
    odd = [*probes, 7, None]  # get() and `in` take anything
    seen: list = [ids.keys_of(probes), [ids.get(p) for p in odd], len(ids)]
    seen.append(ids.ids_of(np.array([0, 1, 3])).tolist())
    assert ids.pop("b") == 1
    assert ids.pop("c") == 3  # deleted for good
    ids.add("new", 5)
    ids.add("b", 6)  # deleted from the base, then back under a new key
    seen += [ids.keys_of(probes), [ids.get(p) for p in odd], [p in ids for p in odd]]
    seen += [ids.ids_of(np.array([0, 1, 5, 6])).tolist(), ids.present(probes).tolist(), len(ids)]
    ids.pop("new")
    seen += [ids.keys_of(probes), sorted(ids), len(ids)]
    return seen


@pytest.mark.parametrize("cols", [False, True])
def test_a_small_id_map_answers_like_the_columns(tmp_path, monkeypatch, cols):
    """Under SMALL_MAP keys an index's id map answers from decoded copies (a dict and
    an object array); what it says must be what the columns say, through changes."""
    listed = ["a", "b", None, "c", "zz"]

    def fresh() -> IdMap:
        if cols:
            return IdMap.open(IdMap.write(tmp_path / "ids.cols", listed))
        return IdMap.from_list(listed)

    small = _id_map_story(fresh())
    monkeypatch.setattr("recall_engine.runtime.id_map.SMALL_MAP", 0)
    columns = fresh()
    assert columns._small_map() is None  # noqa: SLF001 - the other path
    assert _id_map_story(columns) == small
    assert small[0] == [0, 1, 3, None, None, 4, None, None]

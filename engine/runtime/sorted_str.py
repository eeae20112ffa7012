"""Ids looked up in a sorted, fixed-width id column (often memory-mapped from a bundle),
many at once, instead of a dict of them held by every process.

A column is either UTF-8 bytes (``S<w>``: the catalogue's, a vector index's and, since
2026-12-05, ``first_seen.npz``'s ``ids_utf8``) or ``str`` (``<U<w>``, UCS-4: older
bundles and the cf vocabulary). Both sort the same way (UTF-8 keeps code-point order), but numpy
compares ``S`` with ``memcmp`` and ``<U`` code point by code point: at a million items
a binary search of 360 ids costs 1.3-1.7 × more on a ``<U`` column (462 against 275 µs
with warm caches, 833 against 662 µs with flushed ones;
docs/reports/2026-12-05-issue-14-speed-per-core.md, "Id look-ups at a million items").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "encode_keys",
    "find_sorted",
    "TABLE_MIN_IDS",
    "hash_table",
    "id_hashes",
    "usable_table",
    "utf8_column",
]

_ENC = "surrogatepass"  # lone surrogates round-trip, in code-point order


def encode_keys(item_ids: Sequence[str], width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``item_ids`` as a fixed-width ``S<width>`` array to search a sorted id column
    with, and which of them cannot be in such a column (None when all can): longer than
    ``width``, empty, or ending in NUL (numpy drops trailing NULs, so "a\\0" would match
    "a"). One join, encode and split instead of an ``encode`` per id: this runs on every
    candidate list."""
    raw = "\0".join(item_ids).encode("utf-8", _ENC).split(b"\0")
    nul = len(raw) != len(item_ids)
    if nul:  # an id holding NUL: never stored, but it must not match its cut form
        raw = [i.encode("utf-8", _ENC) for i in item_ids]
    keys = np.array(raw, dtype=f"S{max(width, 1)}")
    if not nul and max(map(len, raw)) <= width and all(raw):
        return keys, None
    bad = np.fromiter((not r or len(r) > width or r.endswith(b"\0") for r in raw), bool, len(raw))
    return keys, bad if bad.any() else None


#: Open addressing with linear probing over a power-of-two table at most half full.
_SEED, _M1, _M2 = (
    np.uint64(0x243F6A8885A308D3),
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
)
#: Probe rounds before the keys left (about 1 in 10 after two) are searched the sorted
#: way: each round costs a few numpy calls whatever it has left to do, and a few keys
#: sit far from their slot.
_MAX_PROBES = 2
#: Fewer keys than this are searched the sorted way even with a table: at 20 keys whose
#: paths are in cache the binary search costs half as much
#: (docs/reports/2026-12-05-issue-14-speed-per-core.md, "Id look-ups at a million items").
_TABLE_FROM = 48
#: A column of fewer ids than this is searched the sorted way: it stays in the CPU's
#: caches, where the search beats the table's fixed cost (2,000 ids, 100 keys: 26
#: against 50 µs; 200,000 ids, 360 keys: 137 against 97 µs).
TABLE_MIN_IDS = 100_000


def id_hashes(keys: np.ndarray) -> np.ndarray:
    """uint64 hash of each row of a fixed-width ``S`` or ``<U`` array, over its bytes
    (NUL-padded to the width), the same on every machine."""
    keys = np.ascontiguousarray(keys)
    n, width = len(keys), keys.dtype.itemsize
    raw = keys.view(np.uint8).reshape(n, width)
    if width % 8:
        raw = np.concatenate((raw, np.zeros((n, -width % 8), np.uint8)), axis=1)
    words = raw.view("<u8")
    h = np.full(n, _SEED, dtype=np.uint64)
    for j in range(words.shape[1]):
        h ^= words[:, j]
        h *= _M1
        h ^= h >> np.uint64(31)
    h *= _M2
    h ^= h >> np.uint64(29)
    return h


def hash_table(column: np.ndarray) -> np.ndarray:
    """The look-up table of a sorted, unique id ``column``, written beside it in a
    bundle: slot ``id_hashes(id) mod size`` (linear probing) holds the id's row, -1 an
    empty slot. int32, a power of two of at least twice the column's length (8 MiB at a
    million ids). Built in numpy rounds: about half a second for a million ids."""
    n = len(column)
    size = max(8, 1 << (2 * n - 1).bit_length())
    table: np.ndarray = np.full(size, -1, dtype=np.int32 if n < 2**31 else np.int64)
    slots = (id_hashes(column) & np.uint64(size - 1)).astype(np.int64)
    todo = np.arange(n)
    while len(todo):
        want = slots[todo]
        free = np.flatnonzero(table[want] < 0)
        _, first = np.unique(want[free], return_index=True)  # one row per free slot
        won = free[first]
        table[want[won]] = todo[won]
        placed = np.zeros(len(todo), dtype=bool)
        placed[won] = True
        todo = todo[~placed]
        slots[todo] = (slots[todo] + 1) & (size - 1)
    return table


def usable_table(table: np.ndarray | None, column: np.ndarray) -> np.ndarray | None:
    """``table`` when it can be the look-up table of ``column`` (a power-of-two int
    array, at least twice as long, every entry a row or -1, one slot per id) and the
    column holds :data:`TABLE_MIN_IDS` ids or more, else None: the column is then
    searched the sorted way. Hits are checked against the column anyway, so a table can
    make a look-up slower, never wrong."""
    if table is None or table.ndim != 1 or table.dtype.kind != "i":
        return None
    if len(column) < TABLE_MIN_IDS:
        return None
    size = len(table)
    if size < 2 * len(column) or size & (size - 1) or not size:
        return None
    if int(table.min()) < -1 or int(table.max()) >= len(column):
        return None
    if int(np.count_nonzero(table >= 0)) != len(column):  # one slot per id
        return None
    return table


def find_sorted(
    column: np.ndarray, items: Sequence[str], table: np.ndarray | None = None
) -> np.ndarray:
    """int64 position of each of ``items`` in ``column`` (a sorted, unique ``S`` or
    ``<U`` array), -1 for one that is not there. An id the column's width would cut, or
    one numpy would store without its trailing NULs, is not there, whatever its cut form
    matches.

    ``table`` (:func:`hash_table` of the column, checked by :func:`usable_table`) finds
    each id in about two memory reads instead of a binary search's twenty: at a million
    ids the search's cache misses were most of its cost."""
    n = len(items)
    if not n or not len(column):
        return np.full(n, -1, dtype=np.int64)
    if column.dtype.kind == "S":
        keys, bad = encode_keys(items, column.dtype.itemsize)
    else:
        keys = np.asarray(list(items), dtype=str)
        lengths = np.char.str_len(keys)
        exact = lengths == np.fromiter(map(len, items), np.int64, n)
        exact &= lengths <= column.dtype.itemsize // 4  # UCS-4
        keys = keys.astype(column.dtype)
        bad = ~exact
    if table is not None and n >= _TABLE_FROM:
        found = _find_hashed(column, keys, table)
    else:
        pos = np.minimum(np.searchsorted(column, keys), len(column) - 1)
        found = np.where(column[pos] == keys, pos, -1)
    if bad is not None:
        found[bad] = -1
    return found.astype(np.int64, copy=False)


def _find_hashed(column: np.ndarray, keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    mask = len(table) - 1
    slot = (id_hashes(keys) & np.uint64(mask)).astype(np.int64)
    out = np.full(len(keys), -1, dtype=np.int64)
    todo = np.arange(len(keys))
    for _ in range(_MAX_PROBES):
        row = table[slot].astype(np.int64)
        filled = np.flatnonzero(row >= 0)
        same = filled[column[row[filled]] == keys[todo[filled]]]
        out[todo[same]] = row[same]
        more = np.zeros(len(todo), dtype=bool)
        more[filled] = True
        more[same] = False  # a different id in the slot: probe the next one
        if not more.any():
            return out
        todo, slot = todo[more], (slot[more] + 1) & mask
    left = keys[todo]
    pos = np.minimum(np.searchsorted(column, left), len(column) - 1)
    out[todo] = np.where(column[pos] == left, pos, -1)
    return out


def utf8_column(ids: np.ndarray) -> np.ndarray:
    """A sorted ``<U`` id column as the same ids in UTF-8 (``S<w>``), in the same order,
    for writing into a bundle."""
    if not len(ids):
        return np.empty(0, dtype="S1")
    return np.array([i.encode("utf-8", _ENC) for i in ids.tolist()])

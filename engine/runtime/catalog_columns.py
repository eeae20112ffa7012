"""A catalogue snapshot as read-only, memory-mapped columns, shared by every process.

``serve --processes N`` used to hold the whole catalogue once per process as Python
objects (≈ 810 MiB at 1M items). A snapshot's columns file (``items.cols`` beside
``items.jsonl``, ``items.<g>.cols`` beside ``items.<g>.jsonl``) holds the same items as
numpy arrays in one file that each process maps read-only, so the pages exist once per
host (the page cache) and a process pays only for the pages it touches.

Layout (little-endian)::

    b"RECOLS1\\n"  uint64 header length  header JSON (padded to 64 bytes)  column bytes

The header names every column (byte offset from the end of the header, dtype, length)
and carries the sha256 of the column bytes, the item count and the category
vocabulary. Items are stored sorted by id (UTF-8 bytes), so an id is found in the
fixed-width ``ids`` column (``sorted_str.find_sorted``: a binary search, or the hash
table ``ids_table`` for large columns); the strings are offsets + bytes:

    ids        S<w>  [n]      sorted item ids (UTF-8, NUL-padded to the longest)
    title_off  int64 [n + 1]  title of item i: title[title_off[i]:title_off[i + 1]]
    title      uint8          UTF-8 bytes of every title
    text_off / text           likewise for the text
    cat_off    int64 [n + 1]  categories of item i: cat_codes[cat_off[i]:cat_off[i + 1]]
    cat_codes  int32          indexes into the header's ``categories`` list
    ids_table  int32          the ids' hash table (runtime/sorted_str.py; files written
                              before 2026-12-05 have none and are binary-searched)

A file that is truncated, altered or not a columns file is refused with
:class:`ColumnsError` naming the file and saying how to rebuild it; the catalogue then
reads the JSON lines snapshot instead (a catalogue from an older build has no columns
file and is read that way too).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator, MutableMapping, Sequence, ValuesView
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recall_engine.runtime.files import HASH_CHUNK, atomic_open
from recall_engine.runtime.sorted_str import find_sorted, hash_table, usable_table
from recall_engine.sdk.types import ItemRecord

__all__ = [
    "ColumnItems",
    "ColumnsError",
    "OverlayItems",
    "columns_file",
    "map_column_file",
    "write_column_file",
    "write_columns",
]

MAGIC = b"RECOLS1\n"
_ALIGN = 64
_ENC = "surrogatepass"  # ids and texts round-trip whatever the JSON held


class ColumnsError(ValueError):
    """A columns file is damaged or not one; the message names the file."""


def columns_file(snapshot: Path) -> Path:
    """The columns file of the JSON lines snapshot ``snapshot`` (``items.jsonl`` →
    ``items.cols``)."""
    return snapshot.with_suffix(".cols")


def _offsets(parts: list[bytes]) -> tuple[np.ndarray, bytes]:
    off = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=off[1:])
    return off, b"".join(parts)


def write_columns(path: Path, items: Iterable[ItemRecord]) -> Path:
    """Write ``items`` as a columns file at ``path``, atomically."""
    records = sorted(items, key=lambda it: it.item_id.encode("utf-8", _ENC))
    ids = [it.item_id.encode("utf-8", _ENC) for it in records]
    if any(not i or i.endswith(b"\0") for i in ids):  # fixed-width bytes would drop it
        raise ColumnsError(f"{path}: an empty item id or one ending in NUL has no column form")
    width = max((len(i) for i in ids), default=1) or 1
    vocab: dict[str, int] = {}
    codes: list[int] = []
    cat_off = np.zeros(len(records) + 1, dtype=np.int64)
    for n, it in enumerate(records):
        codes.extend(vocab.setdefault(c, len(vocab)) for c in it.categories)
        cat_off[n + 1] = len(codes)
    title_off, title = _offsets([it.title.encode("utf-8", _ENC) for it in records])
    text_off, text = _offsets([it.text.encode("utf-8", _ENC) for it in records])
    id_column = np.asarray(ids, dtype=f"S{width}")
    columns: list[tuple[str, np.ndarray]] = [
        ("ids", id_column),
        ("ids_table", hash_table(id_column)),  # since 2026-12-05; older readers skip it
        ("title_off", title_off),
        ("title", np.frombuffer(title, dtype=np.uint8)),
        ("text_off", text_off),
        ("text", np.frombuffer(text, dtype=np.uint8)),
        ("cat_off", cat_off),
        ("cat_codes", np.asarray(codes, dtype="<i4")),
    ]
    return write_column_file(path, columns, {"count": len(records), "categories": list(vocab)})


def write_column_file(
    path: Path, columns: Sequence[tuple[str, np.ndarray]], extra: dict[str, Any]
) -> Path:
    """Write named 1-d arrays as one columns file (layout in the module doc), with
    ``extra`` in its header, atomically."""
    body: list[bytes] = []
    meta: dict[str, Any] = {}
    at = 0
    for name, arr in columns:
        data = np.ascontiguousarray(arr).tobytes()
        meta[name] = {"offset": at, "dtype": arr.dtype.str, "length": len(arr)}
        pad = -len(data) % _ALIGN
        body.extend((data, b"\0" * pad))
        at += len(data) + pad
    digest = hashlib.sha256()
    for chunk in body:
        digest.update(chunk)
    header = json.dumps(
        {**extra, "columns": meta, "body_bytes": at, "sha256": digest.hexdigest()},
        ensure_ascii=False,
    ).encode("utf-8")
    header += b" " * (-(len(MAGIC) + 8 + len(header)) % _ALIGN)
    with atomic_open(path, "wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for chunk in body:
            fh.write(chunk)
    return path


def map_column_file(
    path: Path, what: str, rebuild: str, *, verify: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The columns of the file at ``path``, mapped read-only, and its header. Raises
    :class:`ColumnsError` naming the file (as ``what``) and ending with ``rebuild``
    when it is not a sound columns file."""
    where = f"{path}: {what}"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
                raise ColumnsError(f"{where} has no RECOLS1 header{rebuild}")
            (hlen,) = struct.unpack("<Q", head[len(MAGIC) :])
            if hlen > size:
                raise ColumnsError(f"{where} is truncated (header){rebuild}")
            header = json.loads(fh.read(hlen))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ColumnsError):
            raise
        raise ColumnsError(f"{where} is unreadable ({exc}){rebuild}") from None
    start = len(MAGIC) + 8 + hlen
    expected = start + int(header.get("body_bytes", -1))
    if size != expected:
        raise ColumnsError(
            f"{where} is {size} bytes, its header says {expected} (truncated or appended "
            f"to){rebuild}"
        )
    if verify and _sha256_from(path, start) != header.get("sha256"):
        raise ColumnsError(f"{where}: sha256 mismatch (altered after it was written){rebuild}")
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    cols: dict[str, np.ndarray] = {}
    try:
        for name, spec in header["columns"].items():
            dtype = np.dtype(spec["dtype"])
            begin = start + int(spec["offset"])
            end = begin + dtype.itemsize * int(spec["length"])
            if end > size:
                raise ColumnsError(f"{where}: column {name} runs past the end{rebuild}")
            # a plain ndarray over the mapping: np.memmap's Python-level __getitem__
            # and __array_finalize__ would run on every look-up of every request
            cols[name] = mapped[begin:end].view(dtype).view(np.ndarray)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ColumnsError):
            raise
        raise ColumnsError(f"{where}: bad header ({exc}){rebuild}") from None
    return cols, header


class ColumnItems:
    """A columns file mapped read-only: item lookups by id without a Python object per
    item. Thread-safe (nothing here changes after opening)."""

    def __init__(self, path: Path, *, verify: bool = True) -> None:
        self.path = path
        rebuild = (
            f"; delete it and the catalogue is read from {path.with_suffix('.jsonl').name} "
            "(or rebuild with `recall-engine build`)"
        )
        cols, header = map_column_file(path, "catalogue columns file", rebuild, verify=verify)
        missing = {"ids", "title_off", "title", "text_off", "text", "cat_off", "cat_codes"}
        missing -= set(cols)
        if missing or "count" not in header:
            raise ColumnsError(f"{path}: catalogue columns file lacks {sorted(missing)}{rebuild}")
        self._n = int(header["count"])
        self._ids = cols["ids"]
        self._table = usable_table(cols.get("ids_table"), self._ids)  # None: older file
        self._width = self._ids.dtype.itemsize
        self._title_off, self._title = cols["title_off"], cols["title"]
        self._text_off, self._text = cols["text_off"], cols["text"]
        self._cat_off, self._cat_codes = cols["cat_off"], cols["cat_codes"]
        self._vocab: tuple[str, ...] = tuple(sys.intern(c) for c in header["categories"])
        self._code_of = {c: n for n, c in enumerate(self._vocab)}

    def __len__(self) -> int:
        return self._n

    @property
    def id_column(self) -> np.ndarray:
        """The sorted, fixed-width ids (read-only, mapped)."""
        return self._ids

    def position(self, item_id: str) -> int:
        """Row of ``item_id``, or -1 when absent."""
        try:
            key = item_id.encode("utf-8", _ENC)
        except AttributeError:
            return -1
        if len(key) > self._width or not key or key.endswith(b"\0"):
            return -1
        pos = int(np.searchsorted(self._ids, key))
        return pos if pos < self._n and self._ids[pos] == key else -1

    def positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``item_ids`` (-1 where absent), in one vectorised search."""
        return find_sorted(self._ids, item_ids, self._table)

    def in_categories(self, pos: np.ndarray, categories: Iterable[str]) -> np.ndarray:
        """Per row of ``pos`` (rows of this file, -1 where absent), whether it is
        present and has one of ``categories``: the rows' code ranges gathered in a few
        array operations, not a tuple of names per row."""
        wanted = [self._code_of[c] for c in categories if c in self._code_of]
        found = pos >= 0
        if not wanted or not found.any():
            return np.zeros(len(pos), dtype=bool)
        rows = np.where(found, pos, 0)
        lo, hi = self._cat_off[rows], self._cat_off[rows + 1]
        lengths = np.where(found, hi - lo, 0)
        total = int(lengths.sum())
        if not total:
            return np.zeros(len(pos), dtype=bool)
        owner = np.repeat(np.arange(len(pos)), lengths)
        starts = np.cumsum(lengths) - lengths
        flat = np.arange(total) - starts[owner] + lo[owner]
        hit = np.isin(self._cat_codes[flat], wanted)
        out = np.zeros(len(pos), dtype=bool)
        out[owner[hit]] = True
        return out

    def item_id(self, pos: int) -> str:
        return sys.intern(self._ids[pos].decode("utf-8", _ENC))

    def categories(self, pos: int) -> tuple[str, ...]:
        vocab = self._vocab
        lo, hi = self._cat_off[pos], self._cat_off[pos + 1]
        return tuple(vocab[c] for c in self._cat_codes[lo:hi].tolist())

    def record(self, pos: int) -> ItemRecord:
        a, b = self._title_off[pos], self._title_off[pos + 1]
        c, d = self._text_off[pos], self._text_off[pos + 1]
        return ItemRecord(
            self.item_id(pos),
            self._title[a:b].tobytes().decode("utf-8", _ENC),
            self._text[c:d].tobytes().decode("utf-8", _ENC),
            self.categories(pos),
        )

    def iter_records(self, step: int = 8192) -> Iterator[tuple[int, ItemRecord]]:
        """Every row and its record, in id order, a chunk of rows at a time (one read of
        each column per chunk, not a lookup per item: reconciling a channel's index
        with the catalogue reads every item)."""
        vocab, codes = self._vocab, self._cat_codes
        for lo in range(0, self._n, step):
            hi = min(lo + step, self._n)
            ids = self._ids[lo:hi].tolist()
            t_off = self._title_off[lo : hi + 1].tolist()
            x_off = self._text_off[lo : hi + 1].tolist()
            c_off = self._cat_off[lo : hi + 1].tolist()
            titles = self._title[t_off[0] : t_off[-1]].tobytes()
            texts = self._text[x_off[0] : x_off[-1]].tobytes()
            cats = codes[c_off[0] : c_off[-1]].tolist()
            t0, x0, c0 = t_off[0], x_off[0], c_off[0]
            for n, raw in enumerate(ids):
                yield (
                    lo + n,
                    ItemRecord(
                        raw.decode("utf-8", _ENC),  # not interned: see iter_ids
                        titles[t_off[n] - t0 : t_off[n + 1] - t0].decode("utf-8", _ENC),
                        texts[x_off[n] - x0 : x_off[n + 1] - x0].decode("utf-8", _ENC),
                        tuple(vocab[c] for c in cats[c_off[n] - c0 : c_off[n + 1] - c0]),
                    ),
                )

    def iter_ids(self) -> Iterator[str]:
        """Every id, in id order. Not interned: interning a million ids once (a load's
        reconcile reads them all) grows the interpreter's table of interned strings for
        good, ≈ 30 MiB a process at 1M items that no other process shares."""
        step = 65536
        for lo in range(0, self._n, step):
            for raw in self._ids[lo : lo + step].tolist():
                yield raw.decode("utf-8", _ENC)


def _sha256_from(path: Path, start: int) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        while n := fh.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


@dataclass(slots=True, frozen=True, eq=False)
class BaseRows:
    """The rows of a fixed list of ids (a channel's vocabulary) in one mapped
    :class:`ColumnItems`, found once (``-1``: not there), so that a channel filtering
    candidates it holds as positions in that list skips the per-request id search
    (``Catalog.filter_mask(..., rows=(base_rows, positions))``). Valid for that base
    only: the catalogue checks it is still the one it reads."""

    base: ColumnItems
    rows: np.ndarray  # int32 or int64, one per id of the list


class OverlayItems(MutableMapping[str, ItemRecord]):
    """The catalogue's items: a mapped :class:`ColumnItems` base with the online
    changes since its snapshot on top (upserted records, deleted base ids). Behaves as
    the ``dict[str, ItemRecord]`` it replaces; :meth:`copy` shares the base, so the
    catalogue's copy-on-write swap costs the size of the changes, not of the base."""

    def __init__(
        self,
        base: ColumnItems,
        upserts: dict[str, ItemRecord] | None = None,
        deleted: set[str] | None = None,
    ) -> None:
        self.base = base
        self._up = upserts if upserts is not None else {}
        self._gone = deleted if deleted is not None else set()
        # upserted ids the base does not hold (they add to the length)
        self._new = sum(1 for i in self._up if base.position(i) < 0)

    def copy(self) -> OverlayItems:
        return OverlayItems(self.base, dict(self._up), set(self._gone))

    @property
    def changes(self) -> int:
        """How many ids the overlay holds (upserted or deleted)."""
        return len(self._up) + len(self._gone)

    def __getitem__(self, item_id: str) -> ItemRecord:
        found = self._up.get(item_id)
        if found is not None:
            return found
        if item_id in self._gone:
            raise KeyError(item_id)
        pos = self.base.position(item_id)
        if pos < 0:
            raise KeyError(item_id)
        return self.base.record(pos)

    def __contains__(self, item_id: object) -> bool:
        if item_id in self._up:
            return True
        if item_id in self._gone or not isinstance(item_id, str):
            return False
        return self.base.position(item_id) >= 0

    def __setitem__(self, item_id: str, item: ItemRecord) -> None:
        if item_id not in self._up:
            in_base = self.base.position(item_id) >= 0
            if not in_base:
                self._new += 1
            self._gone.discard(item_id)
        self._up[item_id] = item

    def __delitem__(self, item_id: str) -> None:
        in_base = self.base.position(item_id) >= 0
        if item_id in self._up:
            del self._up[item_id]
            if in_base:
                self._gone.add(item_id)
            else:
                self._new -= 1
            return
        if not in_base or item_id in self._gone:
            raise KeyError(item_id)
        self._gone.add(item_id)

    def __len__(self) -> int:
        return len(self.base) - len(self._gone) + self._new

    def __iter__(self) -> Iterator[str]:
        up, gone = self._up, self._gone
        for item_id in self.base.iter_ids():
            if item_id not in gone and item_id not in up:
                yield item_id
        yield from up

    def values(self) -> ValuesView[ItemRecord]:
        return _Values(self)

    def iter_records(self) -> Iterator[ItemRecord]:
        """Every record, in the order of ``__iter__``: the base's in id order (read a
        chunk at a time) less the changed ones, then the upserted ones."""
        up, gone = self._up, self._gone
        for _, record in self.base.iter_records():
            if record.item_id not in up and record.item_id not in gone:
                yield record
        yield from up.values()

    def present(self, item_ids: Sequence[str], pos: np.ndarray | None = None) -> np.ndarray:
        """Per id, whether it is in the catalogue (bool array), vectorised. ``pos``:
        the ids' rows in :attr:`base` when the caller knows them (:class:`BaseRows`)."""
        found = (self.base.positions(item_ids) if pos is None else pos) >= 0
        up, gone = self._up, self._gone
        if up or gone:
            for n, item_id in enumerate(item_ids):
                if item_id in up:
                    found[n] = True
                elif item_id in gone:
                    found[n] = False
        return found

    def in_categories(
        self, item_ids: Sequence[str], categories: frozenset[str], pos: np.ndarray | None = None
    ) -> np.ndarray:
        """Per id, whether it is in the catalogue with one of ``categories`` (a bool
        array), vectorised over the base; changed ids are patched from the overlay.
        ``pos``: as in :meth:`present`."""
        if pos is None:
            pos = self.base.positions(item_ids)
        out = self.base.in_categories(pos, categories)
        up, gone = self._up, self._gone
        if up or gone:
            for n, item_id in enumerate(item_ids):
                rec = up.get(item_id)
                if rec is not None:
                    out[n] = not categories.isdisjoint(rec.categories)
                elif item_id in gone:
                    out[n] = False
        return out

    def categories_of(self, item_ids: Sequence[str]) -> list[tuple[str, ...] | None]:
        """Per id, its categories, or None when absent."""
        pos = self.base.positions(item_ids).tolist()
        up, gone, base = self._up, self._gone, self.base
        out: list[tuple[str, ...] | None] = []
        for item_id, p in zip(item_ids, pos, strict=True):
            rec = up.get(item_id)
            if rec is not None:
                out.append(rec.categories)
            elif p < 0 or item_id in gone:
                out.append(None)
            else:
                out.append(base.categories(p))
        return out


class _Values(ValuesView[ItemRecord]):
    """``OverlayItems.values()``: iterates the columns a chunk at a time."""

    _mapping: OverlayItems

    def __iter__(self) -> Iterator[ItemRecord]:
        return self._mapping.iter_records()

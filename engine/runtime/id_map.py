"""A vector index's map between string item ids and integer usearch keys.

It used to be a dict (id → key) and an object array (key → id) per channel and per
process, ≈ 100 MiB each at 1M items. Here the keys a bundle was built with are two
read-only columns that every process maps from ``ids.cols`` beside ``ids.json``
(written by ``VectorIndex.save``, covered by the bundle's digests like every file):

    ids          S<w>  [n]  the id of key 0 … n-1 (UTF-8, NUL-padded; b"" where deleted)
    sorted_ids   S<w>  [m]  the m live ids, sorted (``sorted_str.find_sorted``)
    sorted_keys  int64 [m]  their keys
    sorted_table int32      the sorted ids' hash table (runtime/sorted_str.py; files
                            written before 2026-12-05 have none and are binary-searched)

Online changes stay in the process: ids added after the build (keys n and up) in a
dict, and base keys deleted since in a bit per key. A bundle from before ``ids.cols``
builds the same columns in memory from ``ids.json`` (private, but a few bytes per id
instead of a dict entry and a string).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from recall_engine.runtime.catalog_columns import (
    ColumnsError,
    map_column_file,
    write_column_file,
)
from recall_engine.runtime.sorted_str import find_sorted, hash_table, usable_table

__all__ = ["IDS_COLUMNS_FILE", "IdMap"]

IDS_COLUMNS_FILE = "ids.cols"
_ENC = "surrogatepass"
#: A map of at most this many base keys also keeps its ids decoded (key -> id, an
#: object array) and a dict id -> key, built at first use: every search turns its keys
#: into ids and every history its ids into keys, and for a catalogue this small both
#: cost more through the columns (decoding, encoding and searching bytes) than the
#: copies take (126 bytes an id for 12-character ids: 7.9 MiB at the bound, per map and
#: process; the demo's 2,000 items, 0.25 MiB)
SMALL_MAP = 65_536


def _encode(ids: Sequence[str | None]) -> np.ndarray:
    raw = [b"" if i is None else i.encode("utf-8", _ENC) for i in ids]
    return np.array(raw) if raw else np.empty(0, dtype="S1")


class IdMap:
    """Item id ↔ key. Not thread-safe on its own: ``VectorIndex`` calls it under its lock
    (lookups that race a write see the state before or after it)."""

    def __init__(
        self,
        ids: np.ndarray,
        sorted_ids: np.ndarray,
        sorted_keys: np.ndarray,
        table: np.ndarray | None = None,
    ) -> None:
        self._base = ids  # key -> id bytes
        self._sorted = sorted_ids
        self._sorted_keys = sorted_keys
        self._table = usable_table(table, sorted_ids)  # None: searched the sorted way
        self._n = len(ids)
        self._dead = np.zeros(self._n, dtype=bool)
        for key in np.flatnonzero(ids == b"").tolist():
            self._dead[key] = True
        self._live_base = len(sorted_keys)
        self._extra: dict[str, int] = {}  # id -> key >= n
        self._extra_ids: dict[int, str] = {}  # key >= n -> id
        # SMALL_MAP: (ids decoded by key, live base id -> key), None until built or
        # when the map is larger
        self._small: tuple[np.ndarray, dict[str, int]] | None = None
        self._small_tried = False
        self._opened_live = self._live_base  # fewer later: base ids were deleted

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_list(cls, ids: Sequence[str | None]) -> IdMap:
        """In memory, from ``ids.json``'s list (key order, None where deleted)."""
        base = _encode(ids)
        live = np.flatnonzero(base != b"")
        order = live[np.argsort(base[live], kind="stable")]
        mapped = cls(base, base[order], order.astype(np.int64))
        if len(np.unique(base[live])) != len(live):
            raise ValueError("duplicate item ids")
        return mapped

    @classmethod
    def open(cls, path: Path) -> IdMap:
        """Mapped read-only from an ``ids.cols`` file; :class:`ColumnsError` naming it
        when it is damaged."""
        rebuild = "; rebuild the bundle with `recall-engine build` (or delete the file)"
        cols, _ = map_column_file(path, "index ids file", rebuild)
        if not {"ids", "sorted_ids", "sorted_keys"} <= set(cols):
            raise ColumnsError(f"{path}: index ids file lacks its columns{rebuild}")
        return cls(cols["ids"], cols["sorted_ids"], cols["sorted_keys"], cols.get("sorted_table"))

    @staticmethod
    def write(path: Path, ids: Sequence[str | None]) -> Path:
        """``ids`` (key order, None where deleted) as an ``ids.cols`` file."""
        mapped = IdMap.from_list(ids)
        return write_column_file(
            path,
            [
                ("ids", mapped._base),
                ("sorted_ids", mapped._sorted),
                ("sorted_keys", mapped._sorted_keys),
                ("sorted_table", hash_table(mapped._sorted)),  # since 2026-12-05
            ],
            {"count": int(mapped._live_base)},
        )

    # -- lookups ----------------------------------------------------------------------
    @property
    def key_count(self) -> int:
        """Keys the base covers (0 … n-1), deleted ones included."""
        return self._n

    def __len__(self) -> int:
        return self._live_base + len(self._extra)

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get(item_id) is not None

    def get(self, item_id: str) -> int | None:
        key = self._extra.get(item_id)
        if key is not None:
            return key
        if not self._live_base:
            return None
        small = self._small_map()
        if small is not None:
            key = small[1].get(item_id) if isinstance(item_id, str) else None
            return None if key is None or self._dead[key] else key
        try:
            raw = item_id.encode("utf-8", _ENC)
        except AttributeError:
            return None
        if not raw or len(raw) > self._base.dtype.itemsize:
            return None
        pos = int(np.searchsorted(self._sorted, raw))
        if pos >= len(self._sorted) or self._sorted[pos] != raw:
            return None
        key = int(self._sorted_keys[pos])
        return None if self._dead[key] else key

    def present(self, item_ids: Sequence[str]) -> np.ndarray:
        """Per id, whether it is mapped (a bool array)."""
        return np.fromiter((k is not None for k in self.keys_of(item_ids)), bool, len(item_ids))

    def _small_map(self) -> tuple[np.ndarray, dict[str, int]] | None:
        """The decoded copies of a map of at most :data:`SMALL_MAP` base keys (see
        there), built at the first call; None for a larger one. Lookups that race the
        build each build their own, identical ones."""
        if self._small_tried:
            return self._small
        small = None
        if 0 < self._n <= SMALL_MAP:
            decoded = [raw.decode("utf-8", _ENC) for raw in self._base.tolist()]
            names = np.empty(self._n, dtype=object)
            names[:] = decoded
            # ids deleted at the build are b"" (left out); deleted since: keys_of checks
            live = {name: key for key, name in enumerate(decoded) if name}
            small = (names, live)
        self._small = small
        self._small_tried = True
        return small

    def keys_of(self, item_ids: Sequence[str]) -> list[int | None]:
        """:meth:`get` for many ids, with one vectorised search of the base (a dict
        look-up per id in a small map)."""
        small = self._small_map()
        out: list[int | None]
        if small is not None:
            live = small[1].get
            out = [live(i) if isinstance(i, str) else None for i in item_ids]
            if self._live_base != self._opened_live:  # the dict still has deleted ids
                dead = self._dead
                for n, key in enumerate(out):
                    if key is not None and dead[key]:
                        out[n] = None
        else:
            out = [None] * len(item_ids)
            if self._live_base and len(item_ids):
                pos = find_sorted(self._sorted, item_ids, self._table)
                keys = self._sorted_keys[np.maximum(pos, 0)]
                ok = (pos >= 0) & ~self._dead[keys]
                for n in np.flatnonzero(ok).tolist():
                    out[n] = int(keys[n])
        if self._extra:
            extra = self._extra
            for n, item_id in enumerate(item_ids):
                key = extra.get(item_id)
                if key is not None:
                    out[n] = key
        return out

    def ids_of(self, keys: np.ndarray) -> np.ndarray:
        """The ids of ``keys`` as an object array (None where deleted)."""
        keys = np.asarray(keys, dtype=np.int64)
        out = np.empty(len(keys), dtype=object)
        if not len(keys):
            return out
        n = self._n
        if n and int(keys.max()) < n and not self._dead[keys].any():  # the usual answer
            small = self._small_map()
            if small is not None:
                return small[0][keys]
            out[:] = [raw.decode("utf-8", _ENC) for raw in self._base[keys].tolist()]
            return out
        extra = self._extra_ids
        for i, key in enumerate(keys.tolist()):
            if key >= n:
                out[i] = extra.get(key)
            elif not self._dead[key]:
                out[i] = self._base[key].decode("utf-8", _ENC)
        return out

    def __iter__(self) -> Iterator[str]:
        """Live ids in key order (not interned: see ``ColumnItems.iter_ids``)."""
        step = 65536
        for lo in range(0, self._n, step):
            dead = self._dead[lo : lo + step].tolist()
            for raw, gone in zip(self._base[lo : lo + step].tolist(), dead, strict=True):
                if not gone:
                    yield raw.decode("utf-8", _ENC)
        yield from (self._extra_ids[k] for k in sorted(self._extra_ids))

    def live_keys(self) -> np.ndarray:
        base = np.flatnonzero(~self._dead).astype(np.uint64)
        extra = np.fromiter(sorted(self._extra_ids), dtype=np.uint64, count=len(self._extra_ids))
        return np.concatenate([base, extra])

    def key_order_ids(self, upto: int) -> list[str | None]:
        """Every key below ``upto``'s id (None where deleted), for ``ids.json``."""
        out: list[str | None] = []
        for lo in range(0, min(upto, self._n), 65536):
            dead = self._dead[lo : lo + 65536].tolist()
            for raw, gone in zip(self._base[lo : lo + 65536].tolist(), dead, strict=True):
                out.append(None if gone else raw.decode("utf-8", _ENC))
        out.extend(self._extra_ids.get(k) for k in range(self._n, upto))
        return out

    # -- changes ----------------------------------------------------------------------
    def add(self, item_id: str, key: int) -> None:
        """A new id (not present) with a new key (at least every key given so far)."""
        self._extra[item_id] = key
        self._extra_ids[key] = item_id

    def pop(self, item_id: str) -> int:
        """Remove ``item_id`` (``KeyError`` if absent); returns its key."""
        key = self._extra.pop(item_id, None)
        if key is not None:
            del self._extra_ids[key]
            return key
        found = self.get(item_id)
        if found is None:
            raise KeyError(item_id)
        if not self._dead.flags.writeable:
            self._dead = self._dead.copy()
        self._dead[found] = True
        self._live_base -= 1
        return found

"""The shared item catalogue: ids, titles, text and categories.

Every channel gets the same :class:`Catalog`; it backs category filters, the text that
online upserts bring, and deletes that must disappear from every channel. Reads are
lock-free (copy-on-write swap of the items); writes are serialised and written to an
update log beside the catalogue file *before* memory changes, so that an acknowledged
change survives a restart and a failed write changes nothing.

The items of a snapshot are not Python objects: they are read from its columns file
(``items.cols``), mapped read-only and shared by every process of the host
(:mod:`recall_engine.runtime.catalog_columns`), with the online changes since the
snapshot in a small overlay (``OverlayItems``); a catalogue written before columns
existed gets them on its first load. Filters search the id column for a whole candidate
list at once (:meth:`Catalog.filter_mask`, :meth:`Catalog.present`).

On disk (``ARTIFACTS/catalog/``), by generation ``g`` (0 is what ``build`` writes)::

    items.jsonl, items.<g>.jsonl   snapshot of generation g: one JSON object per item
                                   (item_id, title, text, categories)
    items.cols, items.<g>.cols     the same snapshot as memory-mapped columns, shared
                                   read-only by every process of the host
                                   (runtime/catalog_columns.py); older builds have none
    updates.<g>.log                the changes since that snapshot, in order: framed
                                   records (length + crc32, runtime/shared_log.py) of
                                   {"op": "upsert", ...item} / {"op": "delete", "item_id"}
    vectors/<channel>.<version>.npz   vectors the channels encoded online (see below)
    first_seen.npz                 what ``build`` saw of each item: its first interaction
                                   time in the training log (see "Cold items" below)

Start-up reads the newest snapshot and replays its log: a torn tail is cut back with a
warning (never fatal), a damaged record in the middle is skipped and reported.

Compaction. Once a generation's log holds :data:`COMPACT_RECORDS` rows or
:data:`COMPACT_BYTES` bytes, :meth:`Catalog.compact` writes snapshot ``g+1`` (the state
in memory) and an empty ``updates.<g+1>.log``, both while holding the exclusive lock on
``updates.<g>.log``, so restart time stays bounded however many online updates there
were. The rename of ``items.<g+1>.jsonl`` is the commit: a writer that takes the lock
afterwards finds log ``g`` closed and appends to ``g+1``; a follower reads log ``g`` to
its end (nothing can be added after the commit) and moves on to ``g+1``, without
re-reading any snapshot, since snapshot ``g+1`` is exactly snapshot ``g`` plus log
``g``. Compaction deletes generation ``g-1``; a follower so far behind that its log is
gone re-reads the newest snapshot and applies the difference. The engine asks the
vector channels to save what they encoded online before it compacts
(``vectors/<channel>.<version>.npz``), so a restart reuses those vectors instead of
running the encoder again for every upsert ever made.

Several processes on one catalogue (``serve --processes N``): :meth:`Catalog.read_new_updates`
returns what the other processes appended since, in log order, for the engine to apply
(``Engine.sync_catalog``, polled every ``server.catalog_sync_ms``). A process whose own
write lands after someone else's re-reads its own record after theirs (upserts and
deletes are idempotent), so every process ends in the log's order.

Cold items. ``build`` writes ``first_seen.npz`` (:func:`write_first_seen`): the ids of
the items that have interactions in the log it built from, each one's first interaction
time, and the log's newest time. :meth:`Catalog.cold_mask` calls an item *cold* when
it had no interaction then (a new item, or one upserted online since) or when its first
one came less than ``max_age_days`` before the log's end; the fusion's cold quota keeps
slots for such items. The file is read when the catalogue is opened; without it (a
catalogue from an older build) nothing is known to be cold.

Logs from earlier versions (one unframed ``updates.jsonl``) are migrated once, at load:
replayed onto ``items.jsonl`` into snapshot 1, then renamed ``updates.jsonl.migrated``.

Replicas (``[cluster] log = "nats"``): the catalogue's history is a
:class:`~recall_engine.runtime.update_log.SnapshotLog` instead (``stream``): writes go
to it, :meth:`Catalog.read_new_updates` follows it, and compaction stores the snapshot
in it (:mod:`recall_engine.runtime.update_log_nats`). The folder then holds only the
build's ``items.jsonl`` (where a catalogue starts when the stream has no snapshot yet)
and the channels' online vectors; nothing is written to its logs.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from pathlib import Path

import numpy as np

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.catalog_columns import BaseRows, OverlayItems
from recall_engine.runtime.catalog_files import (
    ITEMS_FILE,
    LEGACY_UPDATES_FILE,
    VECTORS_DIR,
    CatalogInUse,
    Op,
    apply_ops,
    create_log,
    generation_files,
    log_file,
    migrate_legacy,
    newest_snapshot,
    online_updates,
    parse_op,
    read_snapshot_items,
    record_from_json,
    record_to_json,
    remove_generations_before,
    snapshot_file,
    write_snapshot,
    write_snapshot_columns,
)
from recall_engine.runtime.files import atomic_write
from recall_engine.runtime.npz_map import map_npz, save_npz
from recall_engine.runtime.shared_log import HEADER, LogClosed, SharedLog
from recall_engine.runtime.sorted_str import find_sorted, hash_table, usable_table, utf8_column
from recall_engine.runtime.update_log import SnapshotLog
from recall_engine.sdk.types import ColdItems, ItemRecord, Query

__all__ = [
    "COMPACT_BYTES",
    "COMPACT_RECORDS",
    "FIRST_SEEN_FILE",
    "ITEMS_FILE",
    "LEGACY_UPDATES_FILE",
    "Catalog",
    "CatalogInUse",
    "log_file",
    "online_updates",
    "snapshot_file",
    "first_seen",
    "write_first_seen",
]

#: Per item, its first interaction in the log ``build`` built from (cold-item signal).
FIRST_SEEN_FILE = "first_seen.npz"
_DAY = 86400.0

log = get_logger(__name__)

#: Compact once the current log holds this many rows (upserted or deleted items) ...
COMPACT_RECORDS = 50_000
#: ... or this many bytes. Replaying 50,000 rows takes well under a second.
COMPACT_BYTES = 64 << 20


class Catalog:
    """Item metadata keyed by item id. Thread-safe.

    ``compact_records`` / ``compact_bytes``: when :meth:`needs_compaction` says yes
    (defaults :data:`COMPACT_RECORDS`, :data:`COMPACT_BYTES`). ``stream``: the log that
    holds the history instead of the folder's files (replicas; see the module
    docstring)."""

    def __init__(
        self,
        items: Iterable[ItemRecord] = (),
        folder: Path | None = None,
        *,
        compact_records: int = COMPACT_RECORDS,
        compact_bytes: int = COMPACT_BYTES,
        stream: SnapshotLog | None = None,
    ) -> None:
        # a dict, or mapped columns with the online changes on top (OverlayItems); never
        # changed once published: writers change a copy and swap it in
        self._items: MutableMapping[str, ItemRecord] = {it.item_id: it for it in items}
        self._folder = folder
        self._stream = stream
        self._lock = threading.Lock()
        self.compact_records = compact_records
        self.compact_bytes = compact_bytes
        # the generation whose log this process reads, and the one it appends to (a
        # later one when a compaction closed the first before this process read it all)
        self._gen = self._write_gen = newest_snapshot(folder) if folder is not None else 0
        self._logs: dict[int, SharedLog] = {}
        # item -> days between its first interaction and the build log's end (inf when
        # the log had no times); None: no first_seen.npz, nothing is known to be cold
        self._age_days: _Ages | None = None
        # cold_items() per max_age_days, kept up to date by upsert and delete; and, for
        # a set not kept, the largest limit it was counted past (not updated by changes:
        # a stale answer only sends fusion to the first-seen record)
        self._cold: dict[float, ColdItems] = {}
        self._cold_over: dict[float, int] = {}

    @property
    def folder(self) -> Path | None:
        return self._folder

    @property
    def generation(self) -> int:
        """The snapshot generation this process's state builds on."""
        return self._gen

    # -- reading ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[ItemRecord]:
        return iter(self._items.values())  # never mutated once published: no copy

    def present(self, item_ids: Sequence[str]) -> np.ndarray:
        """Per id, whether the catalogue holds it (a bool array; vectorised over mapped
        columns, where one ``in`` test at a time would cost a search each)."""
        items = self._items
        if isinstance(items, OverlayItems):
            return items.present(item_ids)
        return np.fromiter(map(items.__contains__, item_ids), bool, len(item_ids))

    def get(self, item_id: str) -> ItemRecord | None:
        return self._items.get(item_id)

    def ids(self) -> list[str]:
        return list(self._items)

    def categories(self, item_id: str) -> tuple[str, ...]:
        item = self._items.get(item_id)
        return item.categories if item is not None else ()

    def keep(self, item_id: str, query: Query) -> bool:
        """Whether ``item_id`` may be returned for ``query`` (exists, not excluded,
        matches the category filter)."""
        if item_id in query.exclude:
            return False
        item = self._items.get(item_id)
        if item is None:
            return False
        if query.categories and query.categories.isdisjoint(item.categories):
            return False
        return True

    def base_rows(self, item_ids: Sequence[str]) -> BaseRows | None:
        """Where each of a fixed list of ids (a channel's vocabulary) sits in the
        mapped columns this catalogue reads, found once (0.3-0.5 s and 4 MiB for a
        million ids), for :meth:`filter_mask`'s ``rows``. None for a catalogue held as a
        dict, whose look-ups are dict hits already."""
        items = self._items
        if not isinstance(items, OverlayItems):
            return None
        pos = items.base.positions(item_ids)
        return BaseRows(items.base, pos.astype(np.int32) if len(items.base) < 2**31 else pos)

    def filter_mask(
        self,
        item_ids: Sequence[str],
        query: Query,
        rows: tuple[BaseRows | None, np.ndarray] | None = None,
    ) -> list[bool]:
        """``keep`` for many ids at once (what channels call after an over-fetch).

        ``rows``: ``(base_rows, positions)`` when ``item_ids`` are the ids at
        ``positions`` of the list given to :meth:`base_rows`: the ids' rows are then
        read from it instead of searched for (the overlay of changes since the columns
        were written still applies by id). Ignored when the columns are not the ones
        it was made for. An empty catalogue knows nothing, so it only applies
        ``query.exclude``."""
        items = self._items
        exclude, cats = query.exclude, query.categories
        if isinstance(items, OverlayItems):
            pos = None
            if rows is not None:
                known, at = rows
                if known is not None and known.base is items.base:
                    pos = known.rows[at]
            return _filter_mapped(items, item_ids, query, pos)
        # Comprehensions over `in` tests: this runs on every candidate list of every
        # channel (and again in the engine's safety net), so it is kept loop-light.
        if not items:
            return [i not in exclude for i in item_ids]
        if not cats:
            if not exclude or exclude.isdisjoint(item_ids):
                return list(map(items.__contains__, item_ids))
            return [i in items and i not in exclude for i in item_ids]
        get = items.get
        return [
            (it := get(i)) is not None and i not in exclude and not cats.isdisjoint(it.categories)
            for i in item_ids
        ]

    def cold_mask(self, item_ids: Sequence[str], max_age_days: float = 0.0) -> np.ndarray | None:
        """Per id, whether it is cold (see "Cold items" in the module doc): unknown to
        the build's log, or first seen less than ``max_age_days`` before its end. None
        when this catalogue has no first-seen record."""
        ages = self._age_days
        if ages is None:
            return None
        return ages.of(item_ids) < max_age_days if max_age_days > 0 else ~ages.known(item_ids)

    def item_ages_days(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """Per id, days from its first interaction to the build log's end; -1 for an
        item the log did not hold (new); NaN for an id this catalogue does not hold
        (nothing is known of it). None when this catalogue has no first-seen record, or
        one without times: nothing is known about age then."""
        ages = self._age_days
        if ages is None or not ages.timed:
            return None
        out = ages.of(item_ids)
        items = self._items
        held = np.fromiter((i in items for i in item_ids), bool, len(item_ids))
        return np.where(held, out, np.nan)

    def cold_items(self, max_age_days: float = 0.0, limit: int | None = None) -> ColdItems | None:
        """Every cold item the catalogue holds (:meth:`cold_mask` over all of it), for
        channels that search new items alone (the fusion's scouts) and for fusion's
        cold mask; None when this catalogue has no first-seen record. The first call
        per ``max_age_days`` reads every id (the engine makes it at load); later
        changes update it in place. ``limit``: None instead of a set of more ids than
        that (about 110 bytes each in memory), remembered, so that asking again costs
        nothing; a set already made is returned whatever its size."""
        if self._age_days is None:
            return None
        key = float(max_age_days)
        found = self._cold.get(key)
        if found is None:
            if limit is not None and self._cold_over.get(key, -1) >= limit:
                return None  # more than ``limit`` last time it was counted
            with self._lock:
                found = self._cold.get(key)
                if found is None:
                    cold: list[str] = []
                    ids = iter(self._items)  # in chunks: a million ids at once peak at
                    while chunk := list(itertools.islice(ids, _COLD_CHUNK)):  # ~250 MiB
                        mask = self.cold_mask(chunk, key)
                        if mask is not None:
                            cold.extend(itertools.compress(chunk, mask.tolist()))
                        if limit is not None and len(cold) > limit:
                            over = max(self._cold_over.get(key, limit), limit)
                            self._cold_over = {**self._cold_over, key: over}
                            return None
                    found = ColdItems(tuple(sorted(cold)), next(_COLD_TOKENS))
                    self._cold = {**self._cold, key: found}
        return found

    def _cold_changed(self, upserted: Sequence[str] = (), deleted: Sequence[str] = ()) -> None:
        """Carry every :meth:`cold_items` set over an upsert or delete (under the lock)."""
        if not self._cold or not (upserted or deleted):
            return
        fresh = {}
        for key, cold in self._cold.items():
            ids = set(cold.ids).difference(deleted)
            if upserted:
                mask = self.cold_mask(upserted, key)
                if mask is not None:
                    ids.update(itertools.compress(upserted, mask.tolist()))
            fresh[key] = ColdItems(tuple(sorted(ids)), next(_COLD_TOKENS))
        self._cold = fresh

    # -- writing ---------------------------------------------------------------
    def upsert(self, items: Sequence[ItemRecord], *, log: bool = True) -> int:
        """Add or replace ``items``: logged first, then applied (a failed write raises
        ``OSError`` and changes nothing). ``log=False`` applies what is already in the
        log (another process's record, or :meth:`log_upserts` called first)."""
        with self._lock:
            if log:
                self._append([{"op": "upsert", **record_to_json(it)} for it in items])
            new = _copy(self._items)
            new.update((it.item_id, it) for it in items)
            self._items = new
            self._cold_changed(upserted=[it.item_id for it in items])
        return len(items)

    def delete(self, item_ids: Sequence[str], *, log: bool = True) -> int:
        """Remove ``item_ids`` (logged first, like :meth:`upsert`); returns how many
        were present."""
        with self._lock:
            present = list(dict.fromkeys(i for i in item_ids if i in self._items))
            if log:
                self._append([{"op": "delete", "item_id": i} for i in present])
            new = _copy(self._items)
            for i in present:
                del new[i]
            self._items = new
            self._cold_changed(deleted=present)
        return len(present)

    def log_upserts(self, items: Sequence[ItemRecord]) -> None:
        """Write the upsert of ``items`` to the update log, changing nothing in memory
        (the engine logs first, then applies to the catalogue and every channel)."""
        with self._lock:
            self._append([{"op": "upsert", **record_to_json(it)} for it in items])

    def log_deletes(self, item_ids: Sequence[str]) -> None:
        """Write the delete of those of ``item_ids`` that are present to the log."""
        with self._lock:
            present = dict.fromkeys(i for i in item_ids if i in self._items)
            self._append([{"op": "delete", "item_id": i} for i in present])

    def _append(self, rows: list[dict]) -> None:
        if self._stream is not None:
            self._stream.append(rows)
            return
        if self._folder is None or not rows:
            return
        for _ in range(1000):  # each turn moves a generation on: bounded by the files
            target = self._log(self._write_gen)
            try:
                target.append(rows, advance=self._write_gen == self._gen)
                return
            except LogClosed:
                self._write_gen += 1
            except FileNotFoundError:  # never created, or deleted by a compaction
                newest = newest_snapshot(self._folder)
                if newest > self._write_gen:
                    self._write_gen = newest
                else:
                    create_log(log_file(self._folder, self._write_gen))
        raise RuntimeError(f"{self._folder}: no open update log found")

    def _log(self, generation: int) -> SharedLog:
        found = self._logs.get(generation)
        if found is None:
            assert self._folder is not None
            folder = self._folder
            found = SharedLog(
                log_file(folder, generation),
                closed=lambda: newest_snapshot(folder) > generation,
                create=False,
            )
            self._logs[generation] = found
        return found

    # -- following ---------------------------------------------------------------
    def read_new_updates(self) -> list[Op]:
        """What other processes appended to the update log since this catalogue last
        read or wrote it, in log order: ``("upsert", ItemRecord)`` or ``("delete",
        item_id)``; follows compactions into the next generation. The read position
        moves past them; nothing is applied here. Raises ``ValueError`` naming the file
        and byte offset of a bad record (a stream's bad record is logged and skipped)."""
        if self._stream is not None:
            with self._lock:
                return self._follow_stream(self._stream)
        if self._folder is None:
            return []
        with self._lock:
            return self._follow(resync=True)

    def _follow_stream(self, stream: SnapshotLog) -> list[Op]:
        rows = stream.read_new()
        base = stream.take_resync()
        ops: list[Op] = []
        if base is not None:  # fell behind a compaction: jump to its snapshot
            fresh = _items_of(base, "snapshot")
            ops = self._difference(fresh)
            log.warning("catalog_resynced", source="stream snapshot", changes=len(ops))
        for where, row in rows:
            try:
                ops.append(parse_op(row, where))
            except ValueError as e:  # one bad record must not stop every replica
                log.error("catalog_update_skipped", error=str(e))
        return ops

    def _difference(self, fresh: MutableMapping[str, ItemRecord]) -> list[Op]:
        """The ops that turn what this catalogue holds into ``fresh``."""
        current = self._items
        ops: list[Op] = [("delete", i) for i in current if i not in fresh]
        ops.extend(("upsert", it) for i, it in fresh.items() if current.get(i) != it)
        return ops

    def _follow(self, *, resync: bool) -> list[Op]:
        assert self._folder is not None
        ops: list[Op] = []
        while True:
            # checked before reading: once a successor exists, nothing more is added
            closed = newest_snapshot(self._folder) > self._gen
            try:
                rows = self._log(self._gen).read_new()
            except FileNotFoundError:
                if not closed:  # nobody has written in this generation yet
                    return ops
                if not resync:
                    raise
                return self._resync()  # deleted before this process read all of it
            ops.extend(parse_op(row, where) for where, row in rows)
            if not closed:
                return ops
            self._logs.pop(self._gen, None)
            self._gen += 1
            self._write_gen = max(self._write_gen, self._gen)

    def _resync(self) -> list[Op]:
        """This process fell more than a generation behind (its log was deleted): read
        the newest state from disk and return the difference to memory as ops."""
        assert self._folder is not None
        fresh = Catalog.load(self._folder)
        ops = self._difference(fresh._items)
        self._gen, self._write_gen, self._logs = fresh._gen, fresh._write_gen, fresh._logs
        log.warning(
            "catalog_resynced", folder=str(self._folder), generation=self._gen, changes=len(ops)
        )
        return ops

    # -- compaction --------------------------------------------------------------
    def needs_compaction(self) -> bool:
        """Whether the current log has grown past the thresholds."""
        if self._stream is not None:
            stream = self._stream
            return stream.records >= self.compact_records or stream.size >= self.compact_bytes
        if self._folder is None:
            return False
        current = self._logs.get(self._gen)
        return current is not None and (
            current.records >= self.compact_records or current.offset >= self.compact_bytes
        )

    def compact(self) -> bool:
        """Write the state in memory as the next snapshot and start an empty log.

        Only when this process has applied the whole current log (it returns False
        otherwise, or when another process compacted first: the caller syncs and tries
        again later). The caller must have applied every change it logged to whatever
        else it snapshots (the engine: the channels' online vectors)."""
        if self._stream is not None:
            return self._compact_stream(self._stream)
        if self._folder is None:
            return False
        with self._lock:
            if self._write_gen != self._gen:
                return False
            current = self._log(self._gen)
            started = time.perf_counter()
            nxt = self._gen + 1
            try:
                with current.hold() as fd:
                    if os.fstat(fd).st_size != max(current.offset, len(HEADER)):
                        return False  # someone wrote since this process last read
                    create_log(log_file(self._folder, nxt))
                    write_snapshot_columns(self._folder, nxt, self._items.values())
                    write_snapshot(
                        snapshot_file(self._folder, nxt), self._items.values()
                    )  # the commit
            except (LogClosed, FileNotFoundError):
                return False
            rows, size = current.records, current.offset
            self._gen = self._write_gen = nxt
            self._logs = {}
            self._log(nxt).offset = len(HEADER)
        remove_generations_before(self._folder, nxt - 1)
        log.info(
            "catalog_compacted",
            folder=str(self._folder),
            generation=nxt,
            items=len(self._items),
            log_rows=rows,
            log_bytes=size,
            seconds=round(time.perf_counter() - started, 3),
        )
        return True

    def _compact_stream(self, stream: SnapshotLog) -> bool:
        """The state in memory as the stream's newest snapshot (the stream drops what
        it covers). Raises ``OSError`` when the stream cannot be reached."""
        with self._lock:
            started = time.perf_counter()
            stored = stream.write_snapshot(record_to_json(it) for it in self._items.values())
        if stored:
            log.info(
                "catalog_compacted",
                source="stream",
                items=len(self._items),
                seconds=round(time.perf_counter() - started, 3),
            )
        return stored

    def online_vectors_file(self, channel: str, version: str) -> Path | None:
        """Where channel ``channel`` (bundle ``version``) keeps the vectors it encoded
        for online upserts (None without a folder)."""
        if self._folder is None:
            return None
        return self._folder / VECTORS_DIR / f"{channel}.{version}.npz"

    # -- files -----------------------------------------------------------------
    def save(self, folder: Path, *, force: bool = False) -> Path:
        """Write ``items.jsonl`` (generation 0) and an empty update log, removing any
        other generation. Refuses with :class:`CatalogInUse` when ``folder`` holds a
        live catalogue's online updates (``force=True``: overwrite them)."""
        folder.mkdir(parents=True, exist_ok=True)
        busy = online_updates(folder)
        if busy and not force:
            raise CatalogInUse(
                f"{busy}: this folder holds a live catalogue's online updates, which a "
                "new build here would throw away; build into another folder, or move "
                f"{folder} away first"
            )
        for path in generation_files(folder):
            path.unlink(missing_ok=True)
        (folder / LEGACY_UPDATES_FILE).unlink(missing_ok=True)
        write_snapshot_columns(folder, 0, self._items.values())
        write_snapshot(folder / ITEMS_FILE, self._items.values())
        atomic_write(log_file(folder, 0), HEADER)
        if folder == self._folder:
            self._gen = self._write_gen = 0
            self._logs = {}
            self._log(0).offset = len(HEADER)
        return folder / ITEMS_FILE

    @staticmethod
    def exists(folder: Path) -> bool:
        """Whether ``folder`` holds a catalogue (a snapshot or an update log)."""
        return (folder / LEGACY_UPDATES_FILE).exists() or bool(generation_files(folder))

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        compact_records: int = COMPACT_RECORDS,
        compact_bytes: int = COMPACT_BYTES,
        stream: SnapshotLog | None = None,
    ) -> Catalog:
        """Read the newest snapshot and replay its update log (cutting back a torn
        tail, with a warning). Errors name the file and line or byte offset. With a
        ``stream``: its newest snapshot (the folder's ``items.jsonl`` when it has none)
        and the stream after it."""
        if stream is not None:
            return cls._load_stream(folder, stream, compact_records, compact_bytes)
        if not cls.exists(folder):
            raise FileNotFoundError(f"{folder / ITEMS_FILE}: catalogue file missing")
        migrate_legacy(folder)
        for _ in range(10):  # a compaction by another process may delete what we read
            catalog = cls(
                folder=folder, compact_records=compact_records, compact_bytes=compact_bytes
            )
            try:
                items = read_snapshot_items(folder, catalog._gen)
                current = catalog._log(catalog._gen)
                if current.path.exists():
                    current.recover()
                ops = catalog._follow(resync=False)
            except (FileNotFoundError, LogClosed):  # a compaction moved on meanwhile
                continue
            apply_ops(items, ops)
            catalog._items = items
            catalog._age_days = _read_first_seen(folder)
            return catalog
        raise RuntimeError(f"{folder}: the catalogue kept changing while being read")

    @classmethod
    def _load_stream(
        cls, folder: Path, stream: SnapshotLog, compact_records: int, compact_bytes: int
    ) -> Catalog:
        catalog = cls(
            folder=folder,
            compact_records=compact_records,
            compact_bytes=compact_bytes,
            stream=stream,
        )
        rows = stream.snapshot()
        if rows is not None:
            catalog._items = _items_of(rows, "snapshot")
        else:
            catalog._items = read_snapshot_items(folder, 0)
            busy = online_updates(folder)
            if busy is not None:
                log.warning(
                    "catalog_local_updates_ignored",
                    file=str(busy),
                    note="the update stream holds the online updates of replicas; this "
                    "folder's own log is not read",
                )
        for _ in range(10_000):  # each round reads the stream to its end as of then
            ops = catalog.read_new_updates()
            if not ops:
                break
            items = _copy(catalog._items)
            apply_ops(items, ops)
            catalog._items = items
        catalog._age_days = _read_first_seen(folder)
        return catalog


def _copy(items: MutableMapping[str, ItemRecord]) -> MutableMapping[str, ItemRecord]:
    return items.copy() if isinstance(items, OverlayItems) else dict(items)


def _filter_mapped(
    items: OverlayItems, item_ids: Sequence[str], query: Query, pos: np.ndarray | None = None
) -> list[bool]:
    """``Catalog.filter_mask`` over mapped columns: one vectorised id search, none when
    the ids' rows in the columns are known (``pos``)."""
    exclude, cats = query.exclude, query.categories
    if not cats:
        found = items.present(item_ids, pos)
        if exclude and not exclude.isdisjoint(item_ids):
            found &= np.fromiter((i not in exclude for i in item_ids), bool, len(item_ids))
        return found.tolist()
    found = items.in_categories(item_ids, cats, pos)
    if exclude and not exclude.isdisjoint(item_ids):
        found &= np.fromiter((i not in exclude for i in item_ids), bool, len(item_ids))
    return found.tolist()


def _items_of(rows: Iterable[dict], where: str) -> dict[str, ItemRecord]:
    items: dict[str, ItemRecord] = {}
    for n, row in enumerate(rows):
        it = record_from_json(row, f"{where} row {n}")
        items[it.item_id] = it
    return items


#: Each cold-item set gets a token no other set (of any catalogue) had.
_COLD_TOKENS = itertools.count(1)
#: Ids read at a time when the cold-item set is first made.
_COLD_CHUNK = 65_536


def write_first_seen(folder: Path, item_ids: np.ndarray, timestamps: np.ndarray | None) -> Path:
    """Write ``first_seen.npz`` into the catalogue ``folder``: every item of the log
    (``item_ids`` with parallel ``timestamps`` in seconds, None when the log has none)
    with its first interaction time, and the log's newest time."""
    ids, first = first_seen(item_ids, timestamps)
    utf8 = utf8_column(ids)
    path = folder / FIRST_SEEN_FILE
    with open(path, "wb") as fh:
        save_npz(
            fh,
            ids=ids,  # what servers before 2026-12-05 read (a rollback still loads)
            ids_utf8=utf8,
            ids_utf8_table=hash_table(utf8),  # searched on every fused pool
            first_seen=first,
            as_of=np.int64(np.max(timestamps) if timestamps is not None and len(ids) else 0),
            has_timestamps=np.bool_(timestamps is not None),
        )
    return path


def first_seen(
    item_ids: np.ndarray | Sequence[str], timestamps: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``item_ids`` (sorted, str) and each one's first time in
    ``timestamps`` (parallel, seconds; all 0 when None)."""
    ids, inverse = np.unique(np.asarray(item_ids).astype(str), return_inverse=True)
    first = np.zeros(len(ids), dtype=np.int64)
    if timestamps is not None and len(ids):
        first[:] = np.iinfo(np.int64).max
        np.minimum.at(first, inverse, np.asarray(timestamps, dtype=np.int64))
    return ids, first


class _Ages:
    """Per item of the build's log, days from its first interaction to the log's end,
    looked up with ``find_sorted`` in ``first_seen.npz``'s ids (UTF-8 and hashed where
    the file has them, sorted by ``np.unique``), mapped read-only from the file like its
    first-seen times, so every process of the host shares them (a dict of a million ids
    cost ≈ 100 MiB per process, arrays of its own ≈ 30 MiB)."""

    def __init__(
        self,
        ids: np.ndarray,
        first_seen: np.ndarray,
        as_of: int | None,
        table: np.ndarray | None = None,
    ) -> None:
        self._ids, self._first, self._as_of = ids, first_seen, as_of  # as_of None: no times
        self._table = table

    def _positions(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        found = find_sorted(self._ids, item_ids, self._table)
        return np.maximum(found, 0), found >= 0

    @property
    def timed(self) -> bool:
        return self._as_of is not None

    def known(self, item_ids: Sequence[str]) -> np.ndarray:
        return self._positions(item_ids)[1]

    def of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Ages of ``item_ids``, -1 where unknown."""
        pos, found = self._positions(item_ids)
        if self._as_of is None:
            return np.where(found, np.inf, -1.0)
        return np.where(found, (self._as_of - self._first[pos]) / _DAY, -1.0)


def _read_first_seen(folder: Path) -> _Ages | None:
    path = folder / FIRST_SEEN_FILE
    if not path.exists():
        return None
    f = map_npz(path)
    # The same ids as UTF-8 since 2026-12-05 (1.3-1.7 x cheaper to search than numpy str);
    # a file of an older build has only the str column, searched as it is.
    name = "ids_utf8" if "ids_utf8" in f else "ids"
    ids = f[name]
    if ids.dtype.kind != ("S" if name == "ids_utf8" else "U"):
        raise ValueError(f"{path}: {name!r} has the wrong type ({ids.dtype})")
    as_of = int(f["as_of"]) if bool(f["has_timestamps"]) else None
    return _Ages(ids, f["first_seen"], as_of, usable_table(f.get(f"{name}_table"), ids))

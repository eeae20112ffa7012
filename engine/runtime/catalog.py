"""The shared item catalogue: ids, titles, text and categories.

Every channel gets the same :class:`Catalog`; it backs category filters, the text that
online upserts bring, and deletes that must disappear from every channel. Reads are
lock-free (copy-on-write dict swap); writes are serialised and written to an update log
beside the catalogue file *before* memory changes, so that an acknowledged change
survives a restart and a failed write changes nothing.

Item ids read from files are interned (``sys.intern``), here and where the channels load
their own id lists (``VectorIndex``, cf's vocabulary, popular), so a million ids exist
once per process instead of once per structure: ≈ 60 MiB less per channel at 1M items,
and a candidate looked up in the catalogue matches its key by identity, without
comparing the strings (docs/performance.md).

On disk (``ARTIFACTS/catalog/``), by generation ``g`` (0 is what ``build`` writes)::

    items.jsonl, items.<g>.jsonl   snapshot of generation g: one JSON object per item
                                   (item_id, title, text, categories)
    updates.<g>.log                the changes since that snapshot, in order: framed
                                   records (length + crc32, runtime/shared_log.py) of
                                   {"op": "upsert", ...item} / {"op": "delete", "item_id"}
    vectors/<channel>.<version>.npz   vectors the channels encoded online (see below)

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

Logs from earlier versions (one unframed ``updates.jsonl``) are migrated once, at load:
replayed onto ``items.jsonl`` into snapshot 1, then renamed ``updates.jsonl.migrated``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.files import atomic_open, atomic_write, fsync_dir, parse_json_object
from recall_engine.runtime.shared_log import HEADER, LogClosed, SharedLog
from recall_engine.sdk.types import ItemRecord, Query

log = get_logger(__name__)

ITEMS_FILE = "items.jsonl"
LEGACY_UPDATES_FILE = "updates.jsonl"
VECTORS_DIR = "vectors"
#: Compact once the current log holds this many rows (upserted or deleted items) ...
COMPACT_RECORDS = 50_000
#: ... or this many bytes. Replaying 50,000 rows takes well under a second.
COMPACT_BYTES = 64 << 20
_SNAPSHOT = re.compile(r"^items(?:\.(\d+))?\.jsonl$")
_LOG = re.compile(r"^updates\.(\d+)\.log$")


class CatalogInUse(RuntimeError):
    """The folder holds a live catalogue's online updates, which a new build there would
    throw away. The message names the file."""


def snapshot_file(folder: Path, generation: int) -> Path:
    return folder / (ITEMS_FILE if generation == 0 else f"items.{generation}.jsonl")


def log_file(folder: Path, generation: int) -> Path:
    return folder / f"updates.{generation}.log"


def _record(obj: dict, where: str) -> ItemRecord:
    try:
        item_id = sys.intern(str(obj["item_id"]))
    except KeyError:
        raise ValueError(f"{where}: missing item_id") from None
    cats = obj.get("categories") or ()
    if isinstance(cats, str):
        cats = [c for c in cats.split("|") if c]
    return ItemRecord(
        item_id, str(obj.get("title", "")), str(obj.get("text", "")), tuple(str(c) for c in cats)
    )


def _to_json(item: ItemRecord) -> dict:
    return {
        "item_id": item.item_id,
        "title": item.title,
        "text": item.text,
        "categories": list(item.categories),
    }


Op = tuple[str, "ItemRecord | str"]


class Catalog:
    """Item metadata keyed by item id. Thread-safe.

    ``compact_records`` / ``compact_bytes``: when :meth:`needs_compaction` says yes
    (defaults :data:`COMPACT_RECORDS`, :data:`COMPACT_BYTES`)."""

    def __init__(
        self,
        items: Iterable[ItemRecord] = (),
        folder: Path | None = None,
        *,
        compact_records: int = COMPACT_RECORDS,
        compact_bytes: int = COMPACT_BYTES,
    ) -> None:
        self._items: dict[str, ItemRecord] = {it.item_id: it for it in items}
        self._folder = folder
        self._lock = threading.Lock()
        self.compact_records = compact_records
        self.compact_bytes = compact_bytes
        # the generation whose log this process reads, and the one it appends to (a
        # later one when a compaction closed the first before this process read it all)
        self._gen = self._write_gen = _newest_snapshot(folder) if folder is not None else 0
        self._logs: dict[int, SharedLog] = {}

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
        return iter(list(self._items.values()))

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

    def filter_mask(self, item_ids: Sequence[str], query: Query) -> list[bool]:
        """``keep`` for many ids at once (what channels call after an over-fetch).

        An empty catalogue knows nothing, so it only applies ``query.exclude``."""
        items = self._items
        exclude, cats = query.exclude, query.categories
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

    # -- writing ---------------------------------------------------------------
    def upsert(self, items: Sequence[ItemRecord], *, log: bool = True) -> int:
        """Add or replace ``items``: logged first, then applied (a failed write raises
        ``OSError`` and changes nothing). ``log=False`` applies what is already in the
        log (another process's record, or :meth:`log_upserts` called first)."""
        with self._lock:
            if log:
                self._append([{"op": "upsert", **_to_json(it)} for it in items])
            new = dict(self._items)
            new.update((it.item_id, it) for it in items)
            self._items = new
        return len(items)

    def delete(self, item_ids: Sequence[str], *, log: bool = True) -> int:
        """Remove ``item_ids`` (logged first, like :meth:`upsert`); returns how many
        were present."""
        with self._lock:
            present = list(dict.fromkeys(i for i in item_ids if i in self._items))
            if log:
                self._append([{"op": "delete", "item_id": i} for i in present])
            new = dict(self._items)
            for i in present:
                del new[i]
            self._items = new
        return len(present)

    def log_upserts(self, items: Sequence[ItemRecord]) -> None:
        """Write the upsert of ``items`` to the update log, changing nothing in memory
        (the engine logs first, then applies to the catalogue and every channel)."""
        with self._lock:
            self._append([{"op": "upsert", **_to_json(it)} for it in items])

    def log_deletes(self, item_ids: Sequence[str]) -> None:
        """Write the delete of those of ``item_ids`` that are present to the log."""
        with self._lock:
            present = dict.fromkeys(i for i in item_ids if i in self._items)
            self._append([{"op": "delete", "item_id": i} for i in present])

    def _append(self, rows: list[dict]) -> None:
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
                newest = _newest_snapshot(self._folder)
                if newest > self._write_gen:
                    self._write_gen = newest
                else:
                    _create_log(log_file(self._folder, self._write_gen))
        raise RuntimeError(f"{self._folder}: no open update log found")

    def _log(self, generation: int) -> SharedLog:
        found = self._logs.get(generation)
        if found is None:
            assert self._folder is not None
            folder = self._folder
            found = SharedLog(
                log_file(folder, generation),
                closed=lambda: _newest_snapshot(folder) > generation,
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
        and byte offset of a bad record."""
        if self._folder is None:
            return []
        with self._lock:
            return self._follow(resync=True)

    def _follow(self, *, resync: bool) -> list[Op]:
        assert self._folder is not None
        ops: list[Op] = []
        while True:
            # checked before reading: once a successor exists, nothing more is added
            closed = _newest_snapshot(self._folder) > self._gen
            try:
                rows = self._log(self._gen).read_new()
            except FileNotFoundError:
                if not closed:  # nobody has written in this generation yet
                    return ops
                if not resync:
                    raise
                return self._resync()  # deleted before this process read all of it
            ops.extend(_op(row, where) for where, row in rows)
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
        current = self._items
        ops: list[Op] = [("delete", i) for i in current if i not in fresh._items]
        ops.extend(("upsert", it) for i, it in fresh._items.items() if current.get(i) != it)
        self._gen, self._write_gen, self._logs = fresh._gen, fresh._write_gen, fresh._logs
        log.warning(
            "catalog_resynced", folder=str(self._folder), generation=self._gen, changes=len(ops)
        )
        return ops

    # -- compaction --------------------------------------------------------------
    def needs_compaction(self) -> bool:
        """Whether the current log has grown past the thresholds."""
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
                    _create_log(log_file(self._folder, nxt))
                    self._write_snapshot(snapshot_file(self._folder, nxt))  # the commit
            except (LogClosed, FileNotFoundError):
                return False
            rows, size = current.records, current.offset
            self._gen = self._write_gen = nxt
            self._logs = {}
            self._log(nxt).offset = len(HEADER)
        _remove_generations_before(self._folder, nxt - 1)
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

    def online_vectors_file(self, channel: str, version: str) -> Path | None:
        """Where channel ``channel`` (bundle ``version``) keeps the vectors it encoded
        for online upserts (None without a folder)."""
        if self._folder is None:
            return None
        return self._folder / VECTORS_DIR / f"{channel}.{version}.npz"

    # -- files -----------------------------------------------------------------
    def _write_snapshot(self, path: Path) -> None:
        with atomic_open(path, "w") as fh:
            for it in self._items.values():
                fh.write(json.dumps(_to_json(it), ensure_ascii=False) + "\n")

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
        for path in _generation_files(folder):
            path.unlink(missing_ok=True)
        (folder / LEGACY_UPDATES_FILE).unlink(missing_ok=True)
        self._write_snapshot(folder / ITEMS_FILE)
        atomic_write(log_file(folder, 0), HEADER)
        if folder == self._folder:
            self._gen = self._write_gen = 0
            self._logs = {}
            self._log(0).offset = len(HEADER)
        return folder / ITEMS_FILE

    @staticmethod
    def exists(folder: Path) -> bool:
        """Whether ``folder`` holds a catalogue (a snapshot or an update log)."""
        return (folder / LEGACY_UPDATES_FILE).exists() or bool(_generation_files(folder))

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        compact_records: int = COMPACT_RECORDS,
        compact_bytes: int = COMPACT_BYTES,
    ) -> Catalog:
        """Read the newest snapshot and replay its update log (cutting back a torn
        tail, with a warning). Errors name the file and line or byte offset."""
        if not cls.exists(folder):
            raise FileNotFoundError(f"{folder / ITEMS_FILE}: catalogue file missing")
        _migrate_legacy(folder)
        for _ in range(10):  # a compaction by another process may delete what we read
            catalog = cls(
                folder=folder, compact_records=compact_records, compact_bytes=compact_bytes
            )
            try:
                items = _read_snapshot(folder, catalog._gen)
                current = catalog._log(catalog._gen)
                if current.path.exists():
                    current.recover()
                ops = catalog._follow(resync=False)
            except (FileNotFoundError, LogClosed):  # a compaction moved on meanwhile
                continue
            _apply(items, ops)
            catalog._items = items
            return catalog
        raise RuntimeError(f"{folder}: the catalogue kept changing while being read")


def _apply(items: dict[str, ItemRecord], ops: Iterable[Op]) -> int:
    """Apply ``ops`` to ``items`` in order (an upsert carries its record, a delete its
    id); returns how many there were."""
    count = 0
    for _, what in ops:
        if isinstance(what, ItemRecord):
            items[what.item_id] = what
        else:
            items.pop(what, None)
        count += 1
    return count


def _op(row: dict, where: str) -> Op:
    if row.get("op") == "delete":
        return ("delete", sys.intern(str(row.get("item_id"))))
    if row.get("op") == "upsert":
        return ("upsert", _record(row, where))
    raise ValueError(f"{where}: unknown op {row.get('op')!r}")


def _generation_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if _SNAPSHOT.match(p.name) or _LOG.match(p.name)]


def _generation(path: Path) -> int:
    match = _SNAPSHOT.match(path.name) or _LOG.match(path.name)
    assert match is not None
    return int(match.group(1) or 0)


def _newest_snapshot(folder: Path) -> int:
    gens = [_generation(p) for p in _generation_files(folder) if _SNAPSHOT.match(p.name)]
    return max(gens, default=0)


def _read_snapshot(folder: Path, generation: int) -> dict[str, ItemRecord]:
    path = snapshot_file(folder, generation)
    items: dict[str, ItemRecord] = {}
    if generation == 0 and not path.exists():
        return items  # a catalogue that started empty: everything is in the log
    for lineno, obj in _read_jsonl(path):
        it = _record(obj, f"{path}:{lineno}")
        items[it.item_id] = it
    return items


def _create_log(path: Path) -> None:
    """An empty log (its header only), unless one exists: created exclusively, never
    replacing a log someone else just started (a crash mid-header leaves a prefix of the
    header, which the log treats as empty)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    try:
        os.write(fd, HEADER)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _remove_generations_before(folder: Path, keep_from: int) -> None:
    """Delete snapshots and logs older than ``keep_from`` (one generation back is kept
    for followers that have not read all of it yet). Logs go first: a snapshot newer
    than a log is what tells a writer holding that log that it is closed."""
    old = [p for p in _generation_files(folder) if _generation(p) < keep_from]
    for path in sorted(old, key=lambda p: (_SNAPSHOT.match(p.name) is not None, p.name)):
        path.unlink(missing_ok=True)


def online_updates(folder: Path) -> Path | None:
    """The first file in ``folder`` that holds online updates (a log with records, a
    compacted snapshot, an unmigrated legacy log), or None."""
    legacy = folder / LEGACY_UPDATES_FILE
    if legacy.exists() and legacy.stat().st_size > 0:
        return legacy
    for path in sorted(_generation_files(folder)):
        if _LOG.match(path.name) and path.stat().st_size > len(HEADER):
            return path
        if _SNAPSHOT.match(path.name) and _generation(path) > 0:
            return path
    return None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if line:
                yield lineno, parse_json_object(line, f"{path}:{lineno}")


# -- logs from earlier versions ----------------------------------------------------------
def _migrate_legacy(folder: Path) -> None:
    """Replay an unframed ``updates.jsonl`` onto ``items.jsonl`` into snapshot 1, once.

    Under the old file's lock (what the old version locked, and what every process of a
    group starting together waits on). A torn last line is dropped with a warning; a
    line another record was glued onto (the old version's failure after a torn write)
    keeps the record that was glued on when it parses, and the damage is reported."""
    legacy = folder / LEGACY_UPDATES_FILE
    if not legacy.exists():
        return
    with _locked(legacy) as fh:
        if fh is None:
            return  # another process migrated it while this one waited
        newest = _newest_snapshot(folder)
        if newest > 0 or _logs_hold_updates(folder):
            if newest == 1 and not _logs_hold_updates(folder):
                _retire_legacy(legacy)  # a migration that stopped before its last step
                return
            raise CatalogInUse(
                f"{legacy}: an update log from an earlier version beside newer "
                f"generations ({newest}); move one of them away"
            )
        items = _read_snapshot(folder, 0)
        applied = _apply(items, _legacy_ops(fh.read(), legacy))
        _create_log(log_file(folder, 1))
        Catalog(items.values())._write_snapshot(snapshot_file(folder, 1))
        _retire_legacy(legacy)
        log.warning("catalog_log_migrated", file=str(legacy), operations=applied, generation=1)


def _logs_hold_updates(folder: Path) -> bool:
    return any(
        _LOG.match(p.name) and p.stat().st_size > len(HEADER) for p in _generation_files(folder)
    )


def _retire_legacy(legacy: Path) -> None:
    os.replace(legacy, legacy.with_name(LEGACY_UPDATES_FILE + ".migrated"))
    fsync_dir(legacy.parent)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        yield None
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield fh if path.exists() else None


def _legacy_ops(data: bytes, path: Path) -> Iterator[Op]:
    at = 0
    for line in data.splitlines(keepends=True):
        where = f"{path} at byte {at}"
        start, at = at, at + len(line)
        if not line.endswith(b"\n"):
            log.warning("update_log_tail_cut", file=str(path), offset=start, dropped=len(line))
            return
        if not line.strip():
            continue
        try:
            yield _op(parse_json_object(line, where), where)
            continue
        except ValueError:
            pass
        glued = line.rfind(b'{"op"')
        try:
            if glued <= 0:
                raise ValueError(where)
            yield _op(parse_json_object(line[glued:], where), where)
            log.error("update_log_corrupt", file=str(path), offset=start, skipped=glued)
        except ValueError:
            log.error("update_log_corrupt", file=str(path), offset=start, skipped=len(line))

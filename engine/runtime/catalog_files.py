"""The catalogue on disk: the item record format, generations of snapshots and update
logs (their names, reading, creating, retiring), and the one-time migration of the
unframed ``updates.jsonl`` of earlier versions. The layout and the protocol that keeps
writers and followers safe through compactions are described in
:mod:`recall_engine.runtime.catalog`, which owns the state in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.catalog_columns import (
    ColumnItems,
    ColumnsError,
    OverlayItems,
    columns_file,
    write_columns,
)
from recall_engine.runtime.files import atomic_open, fsync_dir, parse_json_object
from recall_engine.runtime.shared_log import HEADER
from recall_engine.sdk.types import ItemRecord

log = get_logger(__name__)

ITEMS_FILE = "items.jsonl"
LEGACY_UPDATES_FILE = "updates.jsonl"
VECTORS_DIR = "vectors"
SNAPSHOT_NAME = re.compile(r"^items(?:\.(\d+))?\.jsonl$")
LOG_NAME = re.compile(r"^updates\.(\d+)\.log$")
#: a snapshot's columns file (runtime/catalog_columns.py): items.cols, items.<g>.cols
COLUMNS_NAME = re.compile(r"^items(?:\.(\d+))?\.cols$")


class CatalogInUse(RuntimeError):
    """The folder holds a live catalogue's online updates, which a new build there would
    throw away. The message names the file."""


def snapshot_file(folder: Path, generation: int) -> Path:
    return folder / (ITEMS_FILE if generation == 0 else f"items.{generation}.jsonl")


def log_file(folder: Path, generation: int) -> Path:
    return folder / f"updates.{generation}.log"


def record_from_json(obj: dict, where: str) -> ItemRecord:
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


def record_to_json(item: ItemRecord) -> dict:
    return {
        "item_id": item.item_id,
        "title": item.title,
        "text": item.text,
        "categories": list(item.categories),
    }


Op = tuple[str, "ItemRecord | str"]


def apply_ops(items: MutableMapping[str, ItemRecord], ops: Iterable[Op]) -> int:
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


def parse_op(row: dict, where: str) -> Op:
    if row.get("op") == "delete":
        return ("delete", sys.intern(str(row.get("item_id"))))
    if row.get("op") == "upsert":
        return ("upsert", record_from_json(row, where))
    raise ValueError(f"{where}: unknown op {row.get('op')!r}")


def generation_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [
        p
        for p in folder.iterdir()
        if SNAPSHOT_NAME.match(p.name) or LOG_NAME.match(p.name) or COLUMNS_NAME.match(p.name)
    ]


def generation_of(path: Path) -> int:
    match = SNAPSHOT_NAME.match(path.name) or LOG_NAME.match(path.name)
    match = match or COLUMNS_NAME.match(path.name)
    assert match is not None
    return int(match.group(1) or 0)


def newest_snapshot(folder: Path) -> int:
    gens = [generation_of(p) for p in generation_files(folder) if SNAPSHOT_NAME.match(p.name)]
    return max(gens, default=0)


def read_snapshot_items(folder: Path, generation: int) -> MutableMapping[str, ItemRecord]:
    """Snapshot ``generation``: its columns file mapped read-only when there is a sound
    one (shared by every process of the host), else the JSON lines read into a dict
    (catalogues from older builds; a damaged columns file is reported and skipped)."""
    cols = columns_file(snapshot_file(folder, generation))
    if cols.exists():
        try:
            return OverlayItems(ColumnItems(cols))
        except ColumnsError as exc:
            log.error("catalog_columns_refused", file=str(cols), error=str(exc))
            return read_snapshot(folder, generation)
    items = read_snapshot(folder, generation)
    if not items:
        return items
    # a catalogue from before columns: write them once, so this process and the next
    # map them (a read-only folder keeps the dict)
    try:
        write_columns(cols, items.values())
        mapped = OverlayItems(ColumnItems(cols))
    except (OSError, ColumnsError) as exc:
        log.warning("catalog_columns_not_written", file=str(cols), error=str(exc))
        return items
    log.info("catalog_columns_written", file=str(cols), items=len(items))
    return mapped


def write_snapshot_columns(folder: Path, generation: int, items: Iterable[ItemRecord]) -> None:
    """The columns file of snapshot ``generation`` (before the snapshot itself: its
    rename is the commit). Items that have no column form are logged and left to the
    JSON lines."""
    try:
        write_columns(columns_file(snapshot_file(folder, generation)), items)
    except ColumnsError as exc:
        log.warning("catalog_columns_skipped", error=str(exc))


def read_snapshot(folder: Path, generation: int) -> dict[str, ItemRecord]:
    path = snapshot_file(folder, generation)
    items: dict[str, ItemRecord] = {}
    if generation == 0 and not path.exists():
        return items  # a catalogue that started empty: everything is in the log
    for lineno, obj in _read_jsonl(path):
        it = record_from_json(obj, f"{path}:{lineno}")
        items[it.item_id] = it
    return items


def create_log(path: Path) -> None:
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


def remove_generations_before(folder: Path, keep_from: int) -> None:
    """Delete snapshots and logs older than ``keep_from`` (one generation back is kept
    for followers that have not read all of it yet). Logs go first: a snapshot newer
    than a log is what tells a writer holding that log that it is closed."""
    old = [p for p in generation_files(folder) if generation_of(p) < keep_from]
    for path in sorted(old, key=lambda p: (SNAPSHOT_NAME.match(p.name) is not None, p.name)):
        path.unlink(missing_ok=True)


def online_updates(folder: Path) -> Path | None:
    """The first file in ``folder`` that holds online updates (a log with records, a
    compacted snapshot, an unmigrated legacy log), or None."""
    legacy = folder / LEGACY_UPDATES_FILE
    if legacy.exists() and legacy.stat().st_size > 0:
        return legacy
    for path in sorted(generation_files(folder)):
        if LOG_NAME.match(path.name) and path.stat().st_size > len(HEADER):
            return path
        if SNAPSHOT_NAME.match(path.name) and generation_of(path) > 0:
            return path
    return None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if line:
                yield lineno, parse_json_object(line, f"{path}:{lineno}")


# -- logs from earlier versions ----------------------------------------------------------
def migrate_legacy(folder: Path) -> None:
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
        newest = newest_snapshot(folder)
        if newest > 0 or _logs_hold_updates(folder):
            if newest == 1 and not _logs_hold_updates(folder):
                _retire_legacy(legacy)  # a migration that stopped before its last step
                return
            raise CatalogInUse(
                f"{legacy}: an update log from an earlier version beside newer "
                f"generations ({newest}); move one of them away"
            )
        items = read_snapshot(folder, 0)
        applied = apply_ops(items, _legacy_ops(fh.read(), legacy))
        create_log(log_file(folder, 1))
        write_snapshot(snapshot_file(folder, 1), items.values())
        _retire_legacy(legacy)
        log.warning("catalog_log_migrated", file=str(legacy), operations=applied, generation=1)


def _logs_hold_updates(folder: Path) -> bool:
    return any(
        LOG_NAME.match(p.name) and p.stat().st_size > len(HEADER) for p in generation_files(folder)
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
            yield parse_op(parse_json_object(line, where), where)
            continue
        except ValueError:
            pass
        glued = line.rfind(b'{"op"')
        try:
            if glued <= 0:
                raise ValueError(where)
            yield parse_op(parse_json_object(line[glued:], where), where)
            log.error("update_log_corrupt", file=str(path), offset=start, skipped=glued)
        except ValueError:
            log.error("update_log_corrupt", file=str(path), offset=start, skipped=len(line))


def write_snapshot(path: Path, items: Iterable[ItemRecord]) -> None:
    """``items`` as a snapshot file, atomically (the rename is a compaction's commit)."""
    with atomic_open(path, "w") as fh:
        for it in items:
            fh.write(json.dumps(record_to_json(it), ensure_ascii=False) + "\n")

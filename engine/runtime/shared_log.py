"""An append-only log of framed records that several processes write and follow.

``serve --processes N`` runs N copies of the engine, and an admin call reaches one of
them. Whatever it changes that the others must change too is appended here; every
process reads what the others appended since it last looked and applies it in file
order. The catalogue's update log (item upserts and deletes,
:mod:`recall_engine.runtime.catalog`) and the process group's control log (artifact and
config reloads, :mod:`recall_engine.serving.process_group`) are both such files.

Format. The file starts with :data:`HEADER`; then one frame per :meth:`SharedLog.append`
call: ``b"RLG1"``, the payload's length (u32, little-endian), the crc32 of the length
and payload (u32), and the payload, a UTF-8 JSON array of row objects. One frame per
call makes a call all-or-nothing, and the checksum makes a frame that a crash, a full
disk or a bad sector cut short or changed detectable, so it can never be mistaken for
data or have the next record glued onto it.

What is done with a bad frame (:func:`scan`):

* a **torn tail** (the file ends in something that is not a whole valid frame: a
  writer died or its write failed mid-frame) is not read. The next append, or
  :meth:`SharedLog.recover` at start-up, cuts it off (``update_log_tail_cut``: file,
  byte offset, bytes dropped) before writing, so the log stays valid; a failed append
  cuts its own partial frame at once.
* **corruption in the middle** (a bad frame with valid frames after it: the disk changed
  bytes that were once written and acknowledged) is skipped, never cut, and reported by
  every process that reads past it (``update_log_corrupt``: file, byte offset, bytes
  skipped). The records around it are applied.

Appends take an exclusive ``flock`` and are fsynced; readers take a shared one, so a
reader never sees a write in progress. Each :class:`SharedLog` remembers how far into the
file its process has applied (``offset``): its own append moves the offset past the new
frame only when nobody else wrote since it last read, otherwise it reads its own frame
again after the others' (so every process ends in the file's order; callers whose
operations are not idempotent tag their rows and skip their own).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recall_engine.observability.logs import get_logger

log = get_logger(__name__)

HEADER = b"recall-engine log 1\n"
MAGIC = b"RLG1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32(length + payload)
#: A length field above this is corruption, not a record (an admin call is far smaller).
MAX_RECORD = 1 << 30


class LogError(ValueError):
    """The file is not a log this version can use (its header is wrong, or it got
    shorter than what was already applied). The message names the file."""


class LogClosed(Exception):
    """The log was closed by a compaction (its successor exists): append to the next
    one."""


class LogWriteError(OSError):
    """An append failed (``errno`` says why: ``ENOSPC``, ``EIO`` ...) and was cut back:
    nothing of it is in the log."""


@dataclass(slots=True, frozen=True)
class Span:
    """Bytes ``[start, end)`` of a log file."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Scan:
    """What :func:`scan` found: ``records`` as ``(offset, payload)``; ``end``, the
    offset just past the last whole valid frame (or skipped corrupt span); ``torn``,
    bytes after ``end`` that are not a whole valid frame; ``corrupt``, skipped spans
    with valid frames after them."""

    records: list[tuple[int, bytes]] = field(default_factory=list)
    end: int = 0
    torn: int = 0
    corrupt: list[Span] = field(default_factory=list)


def encode_frame(payload: bytes) -> bytes:
    """One framed record holding ``payload``."""
    if len(payload) > MAX_RECORD:
        raise ValueError(f"log record of {len(payload)} bytes exceeds {MAX_RECORD}")
    length = len(payload).to_bytes(4, "little")
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    """The frame :meth:`SharedLog.append` writes for ``rows``."""
    return encode_frame(json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode())


def _frame_at(data: bytes | memoryview, pos: int) -> int:
    """End of the whole valid frame at ``pos``, or -1."""
    head = pos + _FRAME.size
    if head > len(data):
        return -1
    magic, length, crc = _FRAME.unpack_from(data, pos)
    end = head + length
    if magic != MAGIC or length > MAX_RECORD or end > len(data):
        return -1
    if zlib.crc32(data[head:end], zlib.crc32(length.to_bytes(4, "little"))) != crc:
        return -1
    return end


def scan(data: bytes, base: int) -> Scan:
    """Frames in ``data``, which starts at file offset ``base`` on a frame boundary.

    A bad frame followed somewhere by a valid one is a corrupt span (skipped); a bad
    frame with no valid frame after it is the torn tail (not read)."""
    out = Scan()
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        end = _frame_at(view, pos)
        if end >= 0:
            out.records.append((base + pos, bytes(view[pos + _FRAME.size : end])))
            pos = end
            continue
        resume = _next_frame(view, data, pos + 1)
        if resume < 0:
            break
        out.corrupt.append(Span(base + pos, base + resume))
        pos = resume
    out.end = base + pos
    out.torn = len(data) - pos
    return out


def _next_frame(view: memoryview, data: bytes, start: int) -> int:
    at = data.find(MAGIC, start)
    while at >= 0:
        if _frame_at(view, at) >= 0:
            return at
        at = data.find(MAGIC, at + 1)
    return -1


class SharedLog:
    """One log file, appended to and followed by this process.

    ``closed``: says whether a compaction closed this log (appends then raise
    :class:`LogClosed`; asked under the exclusive lock, after which nobody can close it
    until the lock is released). A log whose file was deleted is closed too. ``create``:
    whether an append may create the file (a compacted log must not come back by
    accident).
    """

    def __init__(
        self, path: Path, *, closed: Callable[[], bool] | None = None, create: bool = True
    ) -> None:
        self.path = path
        self.closed = closed
        self.create = create
        self.offset = 0  # bytes of the file that this process has applied
        self.records = 0  # rows this process applied from this file (compaction trigger)
        self._reported: set[int] = set()  # corrupt spans already reported, by offset

    # -- writing ---------------------------------------------------------------------
    def append(self, rows: list[dict[str, Any]], *, advance: bool = True) -> None:
        """Append ``rows`` as one frame, fsynced before this returns.

        A torn tail left by a crash is cut off first. A failed write is cut back and
        raised as :class:`LogWriteError` (nothing of it stays in the log). ``advance``:
        whether this process's read position may move past its own frame (only when it
        has read everything before it; see the module docstring)."""
        if not rows:
            return
        frame = encode_rows(rows)
        with self.hold() as fd:
            size = os.fstat(fd).st_size
            if size < len(HEADER):  # a new file, or one whose header a crash cut short
                self._check_header(fd, size)
                if size:
                    self._cut(fd, 0, size)
                end, data = 0, HEADER + frame
            else:
                self._check_header(fd, size)
                end, data = self._valid_end(fd, size), frame
            try:
                _write_all(fd, data, end)
                os.fsync(fd)
            except OSError as exc:
                self._undo(fd, end)
                raise LogWriteError(
                    exc.errno,
                    f"{self.path}: append failed ({os.strerror(exc.errno or errno.EIO)}); "
                    "nothing was written",
                ) from exc
            if advance and end == max(self.offset, len(HEADER) if end else 0):
                self.offset = end + len(data)
                self.records += len(rows)

    @contextlib.contextmanager
    def hold(self) -> Iterator[int]:
        """The file open read-write under the exclusive lock (its fd): no other process
        appends meanwhile. Raises :class:`LogClosed` if the log was closed, and
        ``FileNotFoundError`` if it does not exist and ``create`` is off."""
        flags = os.O_RDWR | (os.O_CREAT if self.create else 0)
        fd = os.open(self.path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the fd closes
            # deleted while this process waited for the lock: what is written to it now
            # would be lost with the inode
            if os.fstat(fd).st_nlink == 0 or (self.closed is not None and self.closed()):
                raise LogClosed(f"{self.path}: closed by a compaction")
            yield fd
        finally:
            os.close(fd)

    def recover(self) -> Scan:
        """Check the whole file under the exclusive lock (start-up): cut a torn tail and
        report corrupt spans. Returns what was found (``end``: the valid length)."""
        with self.hold() as fd:
            size = os.fstat(fd).st_size
            self._check_header(fd, size)
            if size < len(HEADER):
                if size:
                    self._cut(fd, 0, size)
                return Scan()
            found = scan(os.pread(fd, size - len(HEADER), len(HEADER)), len(HEADER))
            self._report(found)
            if found.torn:
                self._cut(fd, found.end, size)
            return found

    def _valid_end(self, fd: int, size: int) -> int:
        """Where the next frame goes: the end of the last whole frame (a torn tail after
        it is cut off). Only the bytes this process has not read yet are scanned."""
        start = max(self.offset, len(HEADER))
        if size < start:
            raise self._rewritten(size)
        if size == start:
            return size
        found = scan(os.pread(fd, size - start, start), start)
        self._report(found)
        if found.torn:
            self._cut(fd, found.end, size)
        return found.end

    def _cut(self, fd: int, end: int, size: int) -> None:
        os.ftruncate(fd, end)
        os.fsync(fd)
        log.warning("update_log_tail_cut", file=str(self.path), offset=end, dropped=size - end)

    def _undo(self, fd: int, end: int) -> None:
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        except OSError as exc:  # the next append or start-up cuts it instead
            log.error("update_log_cut_failed", file=str(self.path), offset=end, error=str(exc))

    # -- reading ---------------------------------------------------------------------
    def read_new(self) -> list[tuple[str, dict[str, Any]]]:
        """The rows of the whole valid frames appended since ``offset``, as ``(where,
        row)`` pairs in file order (``where`` names the file and the frame's byte offset
        for error messages); moves ``offset`` past them. A torn tail is left for the next
        writer to cut; corrupt spans are skipped and reported. A missing file has no rows
        (``FileNotFoundError`` when ``create`` is off). Raises :class:`LogError` for a
        file that is not a log or got shorter than what was applied, and ``ValueError``
        for a valid frame that does not hold a list of JSON objects."""
        try:
            if os.stat(self.path).st_size == self.offset:
                return []
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            if self.create:
                return []
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            size = os.fstat(fd).st_size
            self._check_header(fd, size)
            start = max(self.offset, len(HEADER))
            if size < start:
                if size < len(HEADER) and self.offset == 0:
                    return []  # a header still being written
                raise self._rewritten(size)
            data = os.pread(fd, size - start, start)
        finally:
            os.close(fd)
        found = scan(data, start)
        self._report(found)
        rows: list[tuple[str, dict[str, Any]]] = []
        for at, payload in found.records:
            where = f"{self.path} at byte {at}"
            rows.extend((where, row) for row in _rows(payload, where))
        self.offset = found.end
        self.records += len(rows)
        return rows

    # -- checks ----------------------------------------------------------------------
    def _check_header(self, fd: int, size: int) -> None:
        got = os.pread(fd, len(HEADER), 0)
        # a file shorter than the header may be one whose creation a crash cut short
        ok = HEADER.startswith(got) if size < len(HEADER) else got == HEADER
        if not ok:
            raise LogError(
                f"{self.path}: not a recall-engine log (starts with {got[:20]!r}, "
                f"expected {HEADER!r}); move it away"
            )

    def _rewritten(self, size: int) -> LogError:
        return LogError(
            f"{self.path}: {size} bytes, shorter than the {self.offset} bytes already "
            "applied; something else rewrote it (restart to reload it)"
        )

    def _report(self, found: Scan) -> None:
        for span in found.corrupt:
            if span.start not in self._reported:
                self._reported.add(span.start)
                log.error(
                    "update_log_corrupt",
                    file=str(self.path),
                    offset=span.start,
                    skipped=span.size,
                    note="records after the damage are applied; what the damaged bytes "
                    "held is lost",
                )


def _rows(payload: bytes, where: str) -> list[dict[str, Any]]:
    try:
        rows = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: record is not valid JSON ({exc})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{where}: expected a JSON object")
    return rows


def _write_all(fd: int, data: bytes, at: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n

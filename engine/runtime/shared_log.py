"""An append-only JSON-lines file that several processes write and follow.

``serve --processes N`` runs N copies of the engine, and an admin call reaches one of
them. Whatever it changes that the others must change too is appended here; every
process reads what the others appended since it last looked and applies it in file
order. The catalogue's ``updates.jsonl`` (item upserts and deletes) and the process
group's control log (artifact and config reloads, :mod:`recall_engine.serving.process_group`)
are both such files.

Appends take an exclusive ``flock`` and are fsynced; readers take a shared one and only
count whole lines. Each :class:`SharedLog` remembers how far into the file its process
has applied (``offset``): its own append moves the offset past the new line only when
nobody else wrote since it last read, otherwise it reads its own line again after the
others' (so every process ends in the file's order; callers whose operations are not
idempotent tag their rows and skip their own).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


class SharedLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes of the file that this process has applied

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        with open(self.path, "ab") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            end = fh.seek(0, os.SEEK_END)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            if end == self.offset:  # nobody else wrote since we last read
                self.offset = end + len(data)

    def read_new(self) -> list[tuple[str, dict]]:
        """The whole lines appended since ``offset``, as ``(where, object)`` pairs in
        file order (``where`` names the file and byte offset for error messages); moves
        ``offset`` past them. Raises ``ValueError`` for a line that is not a JSON object,
        or when the file got shorter than what was already applied (rewritten)."""
        try:
            if self.path.stat().st_size == self.offset:
                return []
            with open(self.path, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)
                start = self.offset
                if fh.seek(0, os.SEEK_END) < start:
                    raise ValueError(
                        f"{self.path}: shorter than the {start} bytes already "
                        "applied; it was rewritten (restart to reload it)"
                    )
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return []
        data = data[: data.rfind(b"\n") + 1]
        rows: list[tuple[str, dict]] = []
        at = start
        for line in data.splitlines(keepends=True):
            where = f"{self.path} at byte {at}"
            at += len(line)
            if line.strip():
                rows.append((where, json_object(line, where)))
        self.offset = start + len(data)
        return rows


def json_object(line: str | bytes, where: str) -> dict:
    """``line`` parsed as a JSON object; ``ValueError`` naming ``where`` otherwise."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return obj

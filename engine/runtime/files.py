"""File helpers every layer shares: atomic writes, streamed sha256, JSON objects.

A crash must never leave a reader with half a file, and a bad file must be reported by
name. So every file the engine or the exporters write goes through :func:`atomic_path`
(or its shorthands :func:`atomic_write` / :func:`atomic_open`): the bytes go to a
temporary file in the same folder, the file is fsynced, renamed over the target with
``os.replace`` and the folder is fsynced, so after a crash the target holds the old
bytes or the new ones, and once the call returns the new ones survive a power loss.

Standard library only: the exporters, the runtime and the offline build import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Bytes read per step when hashing: large enough that hashing runs at memory speed,
#: small enough that a multi-GB index is never held in memory.
HASH_CHUNK = 1 << 20


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX needs the folder's own
    fsync for that; the file's fsync alone does not cover its name)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique per process and thread, for a file being
    written (same folder, so ``os.replace`` onto ``path`` is a rename, never a copy)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def replace_file(written: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Make ``written`` (a finished file in ``target``'s folder) durable and rename it
    onto ``target``; then make the rename durable."""
    fd = os.open(written, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(written, target)
    fsync_dir(Path(target).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path for the caller to write (by any means: a library's
    ``save(path)`` included); when the block ends without an exception the file is
    fsynced and renamed onto ``path`` and the folder fsynced. On an exception the
    temporary file is removed and ``path`` is left as it was."""
    target = Path(path)
    tmp = temp_name(target)
    try:
        yield tmp
        replace_file(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """``open`` for writing, but the file appears at ``path`` only, and whole, when the
    block ends without an exception (see :func:`atomic_path`). ``mode``: ``"w"`` or
    ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically and durably."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def sha256_file(path: str | os.PathLike[str], *, chunk: int = HASH_CHUNK) -> str:
    """Hex sha256 of a file's bytes, streamed ``chunk`` bytes at a time into one reused
    buffer (the hash releases the GIL on large blocks, so several files can be hashed
    on several threads)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def parse_json_object(
    text: str | bytes, where: str, *, error: type[Exception] = ValueError
) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ``error`` naming ``where`` otherwise."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_json_object(
    path: str | os.PathLike[str], where: str | None = None, *, error: type[Exception] = ValueError
) -> dict[str, Any]:
    """The JSON object in ``path``. Errors start with ``where`` (default: the path): a
    missing file raises ``FileNotFoundError("<where>: missing")``, anything else wrong
    (unreadable, not JSON, not an object) raises ``error``."""
    where = where if where is not None else os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: missing") from None
    except OSError as exc:
        raise error(f"{where}: unreadable ({exc})") from exc
    return parse_json_object(data, where, error=error)

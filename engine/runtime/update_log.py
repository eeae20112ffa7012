"""The update log, as the catalogue and the process group see it: a log that several
processes (or replicas on several hosts) append to and follow, in one order.

Two backends, chosen by ``[cluster] log`` in the config:

* ``"file"`` (the default, one host): :class:`~recall_engine.runtime.shared_log.SharedLog`
  files beside the catalogue and in the process group's folder
  (:mod:`recall_engine.runtime.catalog`, :mod:`recall_engine.serving.process_group`).
* ``"nats"`` (replicas): one NATS JetStream stream, compacted through snapshots in a
  JetStream object store (:mod:`recall_engine.runtime.update_log_nats`).

Both keep the same promise, write-ahead: :meth:`UpdateLog.append` returns only once the
rows are stored (fsynced to the file; acknowledged by JetStream, which for a replicated
stream means stored by a quorum), and raises otherwise, so a caller that applies a change
only after ``append`` returned never holds in memory what the log lacks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

Row = dict[str, Any]


@runtime_checkable
class UpdateLog(Protocol):
    """What a follower of the log needs (the process group's control log)."""

    def append(self, rows: list[Row]) -> None:
        """Store ``rows`` as one record, all or nothing; return once stored. Raises
        ``OSError`` (:class:`LogUnavailable` for a log that cannot be reached) or
        ``ValueError`` (:class:`RecordTooLarge`) when nothing was stored."""
        ...

    def read_new(self) -> list[tuple[str, Row]]:
        """The rows appended since this process last read, in log order, as ``(where,
        row)`` (``where`` names the record for error messages). A process's own append
        is not returned again when nothing unread came before it in the log; otherwise it
        is, after the others', so every process ends in log order."""
        ...


@runtime_checkable
class SnapshotLog(UpdateLog, Protocol):
    """An :class:`UpdateLog` that also holds the catalogue's snapshots, so that it alone
    is the catalogue's history (the NATS stream; the file backend keeps its snapshots
    beside its logs, in :class:`~recall_engine.runtime.catalog.Catalog`)."""

    @property
    def records(self) -> int:
        """Rows in the log after the newest snapshot this process knows of (compaction
        trigger)."""
        ...

    @property
    def size(self) -> int:
        """Bytes of those rows."""
        ...

    def snapshot(self) -> list[Row] | None:
        """The item rows of the snapshot this process started from, or None when the log
        had none (the catalogue then starts from its local build). Read once, at load."""
        ...

    def take_resync(self) -> list[Row] | None:
        """After :meth:`read_new`: the item rows of a newer snapshot this process must
        jump to because a compaction removed records it had not read (the caller applies
        the difference to what it holds), or None."""
        ...

    def write_snapshot(self, rows: Iterable[Row]) -> bool:
        """Store ``rows`` (the whole catalogue as this process holds it, having applied
        everything :meth:`read_new` returned) as the newest snapshot, and drop the
        records it covers. False when another process's newer snapshot won."""
        ...


class LogUnavailable(OSError):
    """The log could not be reached or did not confirm the write in time: nothing was
    applied. The message names the log and the reason."""


class RecordTooLarge(ValueError):
    """One call's rows are larger than a record of the log may be."""

"""Online item updates on the serving side: write ahead, say why a write failed, compact.

The engine writes every admin upsert or delete to the catalogue's update log before it
changes anything in memory (DESIGN decision 13). A write that fails (a full disk, an I/O
error, a log this version cannot use, an update stream that cannot be reached or did not
acknowledge in time) therefore changes nothing, and the client is told why with a status
it can act on: ``RESOURCE_EXHAUSTED`` when the disk or quota is full, ``INVALID_ARGUMENT``
for a call larger than one record of the log may be, ``UNAVAILABLE`` otherwise; never
``INTERNAL``. :func:`write_ahead` does the same for the process group's announcements
(``what`` names the log).

Restart time stays bounded on both of its costs. Replaying the log: compaction
(:meth:`Catalog.compact`) runs after an update once the log is past its thresholds.
Encoding upserted items again: channels that encode items online
(:class:`SavesOnlineVectors`) save those vectors before each compaction and whenever
:data:`SAVE_VECTORS_EVERY` encodings are not saved yet, so a restart encodes at most
that many per channel (about 8 s for the llm channel on CPU) instead of every upsert
ever made.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.shared_log import LogError
from recall_engine.runtime.update_log import RecordTooLarge
from recall_engine.serving.errors import (
    InvalidArgument,
    RecallError,
    ResourceExhausted,
    Unavailable,
)

log = get_logger(__name__)

#: Environment overrides of the compaction thresholds (until the config schema has a
#: ``[catalog]`` table for them): rows and bytes of update log per generation.

#: Save a channel's online vectors once this many of its encodings are not saved yet.
SAVE_VECTORS_EVERY = 256

#: errnos that mean "no room": the client should wait for space, not retry at once.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@runtime_checkable
class SavesOnlineVectors(Protocol):
    """A channel that keeps what it encoded for online upserts beside the catalogue
    (``VectorChannel``)."""

    @property
    def unsaved_online_vectors(self) -> int: ...

    def save_online_vectors(self) -> int: ...


def write_ahead(write: Callable[[], None], what: str = "catalogue update log") -> None:
    """Run ``write`` (a write to ``what``); turn its failure into the status the client
    gets, naming the reason. Nothing has been applied when this raises."""
    try:
        write()
    except OSError as exc:
        raise write_failure(exc, what) from exc
    except RecordTooLarge as exc:
        raise InvalidArgument("items", f"nothing was changed: {exc}") from exc
    except LogError as exc:
        raise Unavailable(f"{what} unusable, nothing was changed: {exc}") from exc


def write_failure(exc: OSError, what: str = "catalogue update log") -> RecallError:
    """The status for a failed log write."""
    reason = f"{what} write failed, nothing was changed: {exc}"
    log.error("catalog_update_not_logged", log=what, errno=exc.errno, error=str(exc))
    if exc.errno in NO_SPACE:
        return ResourceExhausted(reason)
    return Unavailable(reason)


def compact_if_due(
    catalog: Catalog, channels: Iterable[object], *, save_every: int = SAVE_VECTORS_EVERY
) -> bool:
    """Save the online vectors of channels with ``save_every`` unsaved encodings, and
    compact the catalogue when its log has grown past the thresholds (after every
    channel saved). Returns whether it compacted. A failure is logged and left for the
    next update to retry: everything is still in the log."""
    compact = catalog.needs_compaction()
    try:
        for channel in channels:
            if isinstance(channel, SavesOnlineVectors) and (
                compact or channel.unsaved_online_vectors >= save_every
            ):
                channel.save_online_vectors()
        return compact and catalog.compact()
    except (OSError, LogError) as exc:
        log.error("catalog_compaction_failed", error=str(exc))
        return False

"""Vectors a channel encoded while serving (online upserts), kept beside the catalogue.

Bundles are immutable, so an item upserted after the build exists only in the
catalogue's update log and in memory. Without these files a restart would run the
encoder again for every such item (about 30 ms each for the llm channel: 31–46 s after
1,200 upserts). The engine saves them before each catalogue compaction; at load a
channel reuses the vector of every item whose metadata digest still matches, and
encodes only what changed since.

One ``.npz`` per channel and bundle version: ``ids`` (str), ``digests`` (uint64, the
metadata digest each vector was encoded from), ``vectors`` (float32 ``[n, dim]``). It
is a cache: a missing, unreadable or mismatched file is logged and ignored, never a
reason to refuse a load. Saving one prunes the channel's files of older versions, keeping
the :data:`KEEP` newest (a process still serving a recent version after a reload, or a
rollback, finds its file; versions long gone do not pile up on disk).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recall_engine.observability.logs import get_logger
from recall_engine.runtime.files import atomic_open
from recall_engine.runtime.npz_map import save_npz

log = get_logger(__name__)

#: Files kept per channel: the one just saved and the newest others.
KEEP = 3


def save_online_vectors(
    path: Path, ids: list[str], digests: list[int], vectors: np.ndarray
) -> None:
    """Write (atomically) the vectors of ``ids`` and the digests they were encoded from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        save_npz(
            fh,
            ids=np.asarray(ids, dtype=str),
            digests=np.asarray(digests, dtype=np.uint64),
            vectors=np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1),
        )
    prune_online_vectors(path)


def prune_online_vectors(path: Path, keep: int = KEEP) -> list[Path]:
    """Remove the files of ``path``'s channel (``<channel>.<version>.npz`` beside it)
    beyond the ``keep`` most recently written, never ``path`` itself; returns the
    removed ones. Best effort: a file another process removed first is skipped."""
    channel = path.name[: -len(".npz")].rsplit(".", 1)[0]
    siblings = []
    for other in path.parent.glob(f"{channel}.*.npz"):
        if other == path or other.name[len(channel) + 1 : -len(".npz")].count("."):
            continue  # this file, or another channel whose name starts with this one's
        try:
            siblings.append((other.stat().st_mtime, other))
        except FileNotFoundError:
            continue
    siblings.sort(reverse=True)
    removed = []
    for _, old in siblings[max(0, keep - 1) :]:
        try:
            old.unlink()
        except FileNotFoundError:
            continue
        removed.append(old)
    if removed:
        log.info("online_vectors_pruned", channel=channel, files=[p.name for p in removed])
    return removed


def read_online_vectors(path: Path | None, dim: int) -> dict[str, tuple[int, np.ndarray]]:
    """``item id -> (digest, vector)`` from ``path``; empty when there is nothing
    usable (the reason is logged)."""
    if path is None or not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, digests, vectors = z["ids"].tolist(), z["digests"].tolist(), z["vectors"]
        if vectors.ndim != 2 or vectors.shape != (len(ids), dim) or len(digests) != len(ids):
            raise ValueError(f"shape {vectors.shape} for {len(ids)} ids of dim {dim}")
    except (OSError, KeyError, ValueError) as exc:
        log.warning("online_vectors_ignored", file=str(path), error=str(exc))
        return {}
    return {i: (d, v) for i, d, v in zip(ids, digests, vectors, strict=True)}

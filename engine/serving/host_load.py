"""How many requests the serving processes of one host have in flight, together.

A process of ``serve --processes N`` sees only its own requests, but its channel calls
compete for the host's cores with every process's. The engine fans a request's calls out
to a thread each only while the host has cores to spare for it (serving/engine.py,
``fan_out_pays``), so each process publishes its count of requests (admitted, or waiting
in the admission's line) in a slot of a small file the parent makes in the group's
folder (:func:`create_slots`), and reads the sum of the slots. Each process writes only
its own slot (an aligned 8-byte store, from the admission's lock), so no lock spans
processes; a reader may see a count one change old. A worker that is restarted zeroes
its slot when it starts; until then a dead worker's last count makes the host look
busier than it is, which only means fewer fan-outs. A process outside a group (one
process, ``Engine`` in a script) counts its own requests only.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from recall_engine.serving.workers import GROUP_DIR_ENV, INDEX_ENV

__all__ = ["SLOTS_FILE", "HostLoad", "create_slots"]

#: The file of ``serve --processes N``'s group folder holding one int64 per process.
SLOTS_FILE = "in_flight.slots"


def create_slots(group_dir: str | os.PathLike[str], processes: int) -> Path:
    """In the parent, before the workers start: a slot per process, every one 0."""
    path = Path(group_dir) / SLOTS_FILE
    path.write_bytes(bytes(8 * max(1, processes)))
    return path


class HostLoad:
    """This process's count of requests in flight (:meth:`publish`) and the host's
    (:meth:`total`)."""

    __slots__ = ("_slots", "_index", "_mapping", "_own")

    def __init__(self, path: str | os.PathLike[str] | None = None, index: int = 0) -> None:
        self._slots: np.ndarray | None = None
        self._mapping: mmap.mmap | None = None
        self._index = index
        self._own = 0
        if path is None:
            return
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8 * (index + 1):
                raise ValueError(f"{path}: {size} bytes hold no slot for process {index}")
            self._mapping = mmap.mmap(f.fileno(), size - size % 8)
        self._slots = np.frombuffer(self._mapping, dtype=np.int64)
        self._slots[index] = 0  # a restarted worker starts afresh

    @classmethod
    def of_process(cls) -> HostLoad:
        """The group's slots when this process is a worker of ``serve --processes N`` whose
        parent made them, else a count of this process's own requests."""
        folder, index = os.environ.get(GROUP_DIR_ENV), os.environ.get(INDEX_ENV)
        if folder and index is not None:
            path = Path(folder) / SLOTS_FILE
            try:
                return cls(path, int(index))
            except (OSError, ValueError):
                pass  # a parent of an older release, or the folder is gone: count alone
        return cls()

    @property
    def shared(self) -> bool:
        """Whether the counts of the group's other processes are seen."""
        return self._slots is not None

    def publish(self, in_flight: int) -> None:
        """This process now has ``in_flight`` requests (admitted or in line)."""
        self._own = in_flight
        if self._slots is not None:
            self._slots[self._index] = in_flight

    def total(self) -> int:
        """Requests in flight on the host: every process's, this one's included."""
        if self._slots is None:
            return self._own
        return int(self._slots.sum())

"""How many requests the serving processes of one host have in flight, together.

A process of ``serve --processes N`` sees only its own requests, but its channel calls
compete for the host's cores with every process's. The engine fans a request's calls out
to a thread each only while the host has cores to spare for it (serving/engine.py,
``fan_out_pays``), so each process publishes its count of requests (admitted, or waiting
in the admission's line) in a slot of a small file the parent makes in the group's
folder (:func:`create_slots`), and reads the sum of the slots. Each process writes only
its own slot (from the admission's lock), so no lock spans processes; a reader may see a
slot one change old, or half written, which costs one request's choice at worst. A
worker that is restarted zeroes its slot when it starts; until then a dead worker's last
count makes the host look busier than it is, which only means fewer fan-outs. A process
outside a group (one process, ``Engine`` in a script) counts its own requests only.

Besides the count, each slot holds the process's count averaged over the last
:data:`WINDOW_S` or so (exponentially decayed, with the instant it was last brought up to
date), so a reader sees how busy the host has been, not only what it holds this
instant: two closed-loop clients leave a process empty for the millisecond between one
answer and the next request, and a fan-out decided in that gap would compete with the
request about to arrive.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from pathlib import Path

import numpy as np

from recall_engine.serving.workers import group_member

__all__ = ["SLOTS_FILE", "HostLoad", "create_slots"]

#: The file of ``serve --processes N``'s group folder holding a slot per process.
SLOTS_FILE = "in_flight.slots"
#: The time constant of the slots' averages, in seconds (a few requests at 1M items).
WINDOW_S = 0.05
# a slot: the count now, its average, and the time.monotonic() instant of that average
# (CLOCK_MONOTONIC, one clock for every process of the host), as float64
_FIELDS = 3
_SLOT_BYTES = 8 * _FIELDS


def create_slots(group_dir: str | os.PathLike[str], processes: int) -> Path:
    """In the parent, before the workers start: a slot per process, every one 0."""
    path = Path(group_dir) / SLOTS_FILE
    path.write_bytes(bytes(_SLOT_BYTES * max(1, processes)))
    return path


class HostLoad:
    """This process's count of requests in flight (:meth:`publish`) and the host's
    (:meth:`total`)."""

    __slots__ = ("_slots", "_index", "shared")

    def __init__(self, path: str | os.PathLike[str] | None = None, index: int = 0) -> None:
        #: whether the counts of the group's other processes are seen (a slots file)
        self.shared = path is not None
        self._index = index if self.shared else 0
        if path is None:  # alone: one slot of its own
            self._slots = np.zeros((1, _FIELDS))
        else:
            with open(path, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if size < _SLOT_BYTES * (index + 1):
                    raise ValueError(f"{path}: {size} bytes hold no slot for process {index}")
                mapping = mmap.mmap(f.fileno(), size - size % _SLOT_BYTES)
            # the array keeps the mapping open for as long as it lives
            self._slots = np.frombuffer(mapping, dtype=np.float64).reshape(-1, _FIELDS)
        self._slots[self._index] = (0.0, 0.0, time.monotonic())  # a restarted worker: afresh

    @classmethod
    def of_process(cls) -> HostLoad:
        """The group's slots when this process is a worker of ``serve --processes N`` whose
        parent made them, else a count of this process's own requests."""
        member = group_member()
        if member is not None:
            folder, index = member
            try:
                return cls(folder / SLOTS_FILE, index)
            except (OSError, ValueError):
                pass  # a parent of an older release, or the folder is gone: count alone
        return cls()

    def publish(self, in_flight: int) -> None:
        """This process now has ``in_flight`` requests (admitted or in line)."""
        slot = self._slots[self._index]
        count, average, since = slot.tolist()
        now = time.monotonic()
        keep = math.exp(-max(0.0, now - since) / WINDOW_S)
        slot[:] = (in_flight, average * keep + count * (1.0 - keep), now)

    def total(self) -> int:
        """Requests in flight on the host: every process's, this one's included."""
        return int(self._slots[:, 0].sum())

    def average(self) -> float:
        """The host's requests in flight averaged over about the last :data:`WINDOW_S`
        (every process's slot brought up to now)."""
        slots = self._slots
        keep = np.exp(-np.maximum(0.0, time.monotonic() - slots[:, 2]) / WINDOW_S)
        return float(np.sum(slots[:, 1] * keep + slots[:, 0] * (1.0 - keep)))

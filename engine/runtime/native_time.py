"""Seconds each thread spends in native calls that run without the GIL.

usearch searches and ONNX Runtime sessions release the GIL while they work, so calls
made of them can overlap on several cores; Python code between them cannot. The runtime
adds the wall time of each such call to its thread's total here (:func:`add`), and the
engine reads the total before and after a channel call (:func:`spent`): the call's
*native* seconds. An idle host then knows which of a request's calls would gain from a
thread each (serving/engine.py, ``fan_out_pays``). Two ``perf_counter`` reads per native
call; a thread that made none reads 0.
"""

from __future__ import annotations

import threading

__all__ = ["add", "spent"]

_local = threading.local()


def spent() -> float:
    """The seconds this thread has spent in native calls so far."""
    seconds: float = getattr(_local, "seconds", 0.0)
    return seconds


def add(seconds: float) -> None:
    """Count ``seconds`` of a native call on this thread."""
    _local.seconds = getattr(_local, "seconds", 0.0) + seconds

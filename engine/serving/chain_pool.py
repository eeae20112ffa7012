"""The engine's threads for chains: a request's quick channel calls, run one after
another (serving/engine.py, ``Engine._fan_out``).

Few threads, taking chains in arrival order. A chain is mostly Python, which runs one
thread at a time under the GIL, so a thread per chain ran no more of them at once: it
only made them take turns, each turn a GIL hand-over and a context switch. One thread
instead of one per admitted request: 5 to 11 % less server CPU at 1M items and 8
clients, 0.5 to 4 % on the demo, up to a quarter fewer context switches
(docs/reports/2026-12-05-issue-14-speed-per-core.md, "Chains on one thread").

A chain that runs for longer than ``stall_s`` (a channel call that hangs) no longer
counts against ``threads``: the next chain gets a new thread, up to ``limit`` in all,
and threads beyond ``threads`` end once they are done and not stuck. Chains queued
behind one that hangs are not stuck with it: the event loop moves the calls of a chain
not started in time to threads of their own (``_RESCUE`` in serving/engine.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from recall_engine.observability.logs import get_logger
from recall_engine.serving.bulkhead import Workers

log = get_logger(__name__)

__all__ = ["ChainPool"]

_STOP = None  # as Workers.close() puts it


class ChainPool(Workers):
    """Up to ``threads`` threads running submitted chains in order (more while some are
    stuck in one chain for over ``stall_s``; never more than ``limit``).

    Invariant (under ``_lock``): ``_threads`` == threads started and not ended ==
    ``_idle`` (waiting for work) + ``len(_busy)`` (running a chain, keyed by thread, with
    when it started) + threads between the two; ``_queued`` == chains submitted and not
    yet taken."""

    __slots__ = (
        "threads",
        "limit",
        "stall_s",
        "_idle",
        "_queued",
        "_busy",
    )

    def __init__(self, threads: int, limit: int, stall_s: float) -> None:
        if threads < 1 or limit < threads:
            raise ValueError(f"chain pool: need 1 <= threads <= limit, got {threads}, {limit}")
        if not stall_s > 0:
            raise ValueError(f"chain pool: stall_s must be > 0, got {stall_s!r}")
        super().__init__()
        self.threads, self.limit, self.stall_s = threads, limit, stall_s
        self._idle = 0
        self._queued = 0
        self._busy: dict[int, float] = {}

    @property
    def started(self) -> int:
        """Threads alive now."""
        return self._threads

    def _stuck(self, now: float) -> int:
        return sum(1 for since in self._busy.values() if now - since > self.stall_s)

    def try_submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn(*args)`` for the next free thread, starting one when fewer than
        ``threads`` are free or working (stuck ones do not count) and none is idle;
        False when closed, or when every thread is stuck and ``limit`` are started (the
        caller then runs the chain's calls some other way). ``fn`` must not raise."""
        with self._lock:
            if self._closed:
                return False
            spawn = False
            if self._queued >= self._idle:  # no idle thread is left for this chain
                working = self._threads - self._stuck(time.perf_counter())
                if working < self.threads:
                    if self._threads >= self.limit:
                        return False
                    spawn = True
                    self._threads += 1
            self._queued += 1
        if spawn:
            try:
                threading.Thread(target=self._worker, name="channel-chains", daemon=True).start()
            except RuntimeError:  # can't start new thread: refuse this chain
                with self._lock:
                    self._threads -= 1
                    self._queued -= 1
                log.exception("chain_thread_start_failed")
                return False
        self._work.put((fn, args))
        return True

    def _worker(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                self._idle += 1
            item = self._work.get()
            with self._lock:
                self._idle -= 1
                if item is _STOP:
                    self._threads -= 1
                    return
                self._queued -= 1
                self._busy[me] = time.perf_counter()
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - a worker must outlive any chain
                log.exception("chain_failed")
            with self._lock:
                del self._busy[me]
                # one more than asked for (started while another was stuck): end
                if self._threads - self._stuck(time.perf_counter()) > self.threads:
                    self._threads -= 1
                    return

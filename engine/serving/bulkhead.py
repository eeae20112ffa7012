"""A bulkhead: one channel's own threads and bound on calls in flight.

Every channel gets its own, so a channel that hangs or slows down holds at most its own
``limit`` threads and cannot take capacity from the others (DESIGN decision 12). There is
no queue: a call either starts on a free thread now or is refused at once, so a channel's
timeout is never spent waiting behind its other calls. Threads are daemons (a hung
plugin call must not keep the process from exiting) and are started on demand.

A call may also take its room without a thread (:meth:`Bulkhead.try_reserve`): the
engine runs a request's quick calls one after another on one thread of its own pool
(serving/engine.py, "chains"), and each still counts against its channel's bound, so a
channel that hangs inside a chain fills its own bulkhead, not another's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from recall_engine.observability import metrics
from recall_engine.observability.logs import get_logger

log = get_logger(__name__)

__all__ = ["Bulkhead", "Workers"]

_STOP = None


class Workers:
    """What a bulkhead and the engine's chain pool (serving/chain_pool.py) share: worker
    threads that take work from ``_work`` until they are told to stop."""

    __slots__ = ("_lock", "_work", "_threads", "_closed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = 0
        self._closed = False

    def close(self) -> None:
        """Refuse new work; threads end once the call or chain they run returns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._work.put(_STOP)


class Bulkhead(Workers):
    """At most ``limit`` calls of channel ``name`` in flight, each on its own thread.

    Invariant (under ``_lock``): threads == calls running on them + idle, in_flight ==
    those calls + calls reserved to run elsewhere, in_flight <= limit (so threads <=
    limit); a call is handed to an idle thread or to a new one, never queued behind
    another call.
    """

    __slots__ = (
        "name",
        "limit",
        "_in_flight",
        "_idle",
        "_gauge",
        "_current",
    )

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"bulkhead {name!r}: limit must be >= 1, got {limit}")
        super().__init__()
        self.name, self.limit = name, limit
        self._in_flight = 0
        self._idle = 0
        self._gauge = metrics.CHANNEL_IN_FLIGHT.labels(name)
        self._current = threading.local()  # per worker: has its call given back its room?

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Start ``fn(*args)`` on a thread of this bulkhead and return True, or return
        False at once when ``limit`` calls are already in flight (or it is closed).
        ``fn`` must not raise (it is the caller's job to catch and report)."""
        return self.try_reserve() and self.submit_reserved(fn, *args)

    def try_reserve(self) -> bool:
        """Count one call in flight without starting it (False, nothing counted, when
        ``limit`` are in flight or the bulkhead is closed). The caller then either
        runs it on a thread of this bulkhead (:meth:`submit_reserved`) or elsewhere and
        gives the room back with :meth:`unreserve`."""
        with self._lock:
            if self._closed or self._in_flight >= self.limit:
                return False
            self._in_flight += 1
        self._gauge.inc()
        return True

    def unreserve(self) -> None:
        """Give back a room taken by :meth:`try_reserve` whose call did not run here."""
        with self._lock:
            self._in_flight -= 1
        self._gauge.dec()

    def submit_reserved(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Start the reserved call ``fn(*args)`` on a thread of this bulkhead (its room
        is given back when it returns, or by :meth:`release_current`). False when no
        thread could be started; the room is then given back."""
        with self._lock:
            closed = self._closed
            spawn = not closed and self._idle == 0
            if spawn:
                self._threads += 1
            elif not closed:
                self._idle -= 1
        if closed:
            self.unreserve()
            return False
        if spawn:
            try:
                threading.Thread(
                    target=self._worker, name=f"channel-{self.name}", daemon=True
                ).start()
            except RuntimeError:  # can't start new thread: refuse this call, count nothing
                with self._lock:
                    self._threads -= 1
                self.unreserve()
                log.exception("bulkhead_thread_start_failed", channel=self.name)
                return False
        self._work.put((fn, args))
        return True

    def release_current(self) -> None:
        """Called by the running call, on its worker thread, just before it publishes
        its result: give back its room now. Whoever waits for that result (the request)
        may submit the next call at once, and must then find the room free; counted
        after ``fn`` returned, a request that came straight back could find its
        channel full for the few microseconds in between (reported OVERLOADED) although
        no call was in flight. Idempotent; the worker gives the room back itself when
        the call did not."""
        if getattr(self._current, "released", True):
            return
        self._current.released = True
        with self._lock:
            self._in_flight -= 1
            self._idle += 1
        self._gauge.dec()

    def _worker(self) -> None:
        while (item := self._work.get()) is not _STOP:
            fn, args = item
            self._current.released = False
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - a worker must outlive any call
                log.exception("bulkhead_call_failed", channel=self.name)
            finally:
                self.release_current()

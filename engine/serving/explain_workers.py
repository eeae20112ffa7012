"""The threads that gather ``RecallRequest.explain`` evidence, apart from the event
loop's default worker threads.

Any caller may ask for an explanation, and a channel's ``explain`` is plugin code that
can be slow or hang. Run on the loop's default executor (``asyncio.to_thread``), a few
hung explains would hold every default worker, and the admin calls, catalogue syncs and
config reloads that run there would queue behind them. So evidence has workers of its
own, a fixed few, and a bound on the jobs waiting for them: past it a request is told
at once that the workers are busy, and gets its candidates and the fusion arithmetic
without evidence, instead of queueing work for a worker that may never come. The
threads are daemons: a hung explain never holds up the process's exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from recall_engine.observability.logs import get_logger

log = get_logger(__name__)

#: Threads that run channels' ``explain``: evidence is a debugging aid, asked for by a
#: few requests, and must not take the cores the served path needs.
EXPLAIN_WORKERS = 2
#: Jobs running or waiting, at most; a request past it gets no evidence (busy). Enough
#: for a BatchRecall's items to wait their turn (each explain takes about a millisecond),
#: few enough that a hung ``explain`` turns requests away within a handful.
EXPLAIN_PENDING = 16


class ExplainWorkers:
    """``workers`` daemon threads taking jobs from one queue, at most ``limit`` jobs
    submitted and not yet finished. Threads start with the first job."""

    def __init__(self, workers: int = EXPLAIN_WORKERS, limit: int = EXPLAIN_PENDING) -> None:
        if workers < 1 or limit < workers:
            raise ValueError(f"need workers >= 1 and limit >= workers, got {workers}, {limit}")
        self._workers = workers
        self._limit = limit
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._started = False

    def pending(self) -> int:
        """Jobs submitted and not finished (running or waiting)."""
        with self._lock:
            return self._pending

    def try_submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (and nothing queued) when ``limit`` jobs are pending."""
        with self._lock:
            if self._pending >= self._limit:
                return False
            self._pending += 1
            if not self._started:
                self._started = True
                for n in range(self._workers):
                    name = f"recall-explain-{n}"
                    threading.Thread(target=self._run, name=name, daemon=True).start()
        self._jobs.put(job)
        return True

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:  # noqa: BLE001 - the worker outlives a job's bug
                log.exception("explain_job_failed")
            finally:
                with self._lock:
                    self._pending -= 1


#: The process's explain workers (every engine in it shares them).
WORKERS = ExplainWorkers()

"""Admission control: a bound on requests in flight in the engine, and the settings of
the engine's overload protection (DESIGN decision 12).

Past the bound a request is shed at once with :class:`Overloaded` (``RESOURCE_EXHAUSTED``
plus a retry hint), before any work is done for it: shedding early costs microseconds,
while admitting work the machine cannot finish makes every request late (congestion
collapse). The retry hint adapts so that clients that obey it come back about when a
slot frees, instead of hammering the server with requests it will shed again.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from recall_engine.config import OverloadConfig
from recall_engine.observability import metrics
from recall_engine.observability.logs import get_logger
from recall_engine.serving.errors import Overloaded
from recall_engine.serving.host_load import HostLoad

log = get_logger(__name__)

__all__ = ["Admission", "LoopLag", "OverloadSettings", "machine_in_flight"]


_TABLE = OverloadConfig()


def machine_in_flight(cpus: int | None = None) -> int:
    """The default bound on requests in the engine: 4 per CPU core (at least 4).

    A request spends part of its life off the CPU (waiting for the event loop, the GIL,
    an encoder batch), so a few per core can keep every core busy; many more only queue
    inside the process where no deadline can see them. This is the ceiling: the bound in
    force adapts below it (:class:`Admission`)."""
    return max(4, 4 * (cpus if cpus is not None else (os.cpu_count() or 1)))


@dataclass(slots=True, frozen=True)
class OverloadSettings:
    """The engine's overload knobs (defaults sized from this machine).

    ``max_in_flight``: requests admitted into the engine at once (0: no bound); past it
    a request is shed with ``RESOURCE_EXHAUSTED``. ``min_in_flight``: the floor the
    bound never adapts below (default 1: with the GIL, one Python request at a time can
    already keep a core busy, and on the demo a bound of 1 or 2 answered as many
    requests as 8, in a quarter of the time; docs/reliability.md).
    ``latency_tolerance``: the bound shrinks while admitted requests take more than
    this many times their time alone, and grows while they take under half as much
    more (None: no latency signal, the loop's lag only).
    ``channel_max_in_flight``: calls in flight per channel, its bulkhead (0: the same as
    ``max_in_flight``, so a healthy channel never refuses an admitted request and a hung
    one holds at most this many threads); ``channel_limits`` overrides it per channel
    name. ``fallback``: the channel that answers every admitted request (run even when
    the plan gives it weight 0, its list then used only when no other channel answered);
    its bulkhead is ``fallback_max_in_flight`` (0: ``max_in_flight`` plus the channel
    bound, a reserve the other channels cannot use). ``batch_parallelism``: BatchRecall
    items in flight at once per batch (0: a quarter of ``max_in_flight``).
    ``retry_after_ms_min``/``max`` bound the retry hint sent with a shed.
    ``retry_share``: while nearly every client the retry hints bring back is refused
    again, the hints schedule them at this share of the rate requests finish
    (:class:`Admission`; 1: always at that rate).
    ``queue_s``: how long a Recall that finds the bound reached may expect to wait in
    line for a slot instead of being shed (None: shed at once; :meth:`Admission.wait`).
    ``target_loop_lag_ms``: the serving event loop's lag above which the bound on
    requests in flight shrinks (None: a fixed bound). ``switch_interval_s``: the
    interpreter's GIL switch interval set when the engine loads (None: left alone); the
    default 5 ms lets a channel thread keep the event loop waiting that long at every
    hand-over, 1 ms keeps the loop, and so shedding, prompt. ``check_output``: check
    every channel answer (finite scores, lengths, unique string ids) before fusion.
    ``chain_calls_under_s``: a request's calls expected to take less than this run one
    after another on one thread (serving/engine.py, "chains"; None: a thread each).
    ``chain_threads``: the threads that run chains, in arrival order (0: a thread per
    chain; serving/chain_pool.py). ``fan_out_when_idle``: while the host has two cores
    or more per request in flight, quick calls that would overlap (their time mostly
    native work without the GIL) run on a thread each instead of in a chain
    (serving/engine.py, ``fan_out_pays``).
    """

    max_in_flight: int = field(default_factory=machine_in_flight)
    min_in_flight: int = 1
    latency_tolerance: float | None = _TABLE.latency_tolerance or None
    channel_max_in_flight: int = 0
    channel_limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # the rest default to what an empty [overload] table says (one source of defaults)
    fallback: str | None = _TABLE.fallback or None
    fallback_max_in_flight: int = _TABLE.fallback_max_in_flight
    batch_parallelism: int = _TABLE.batch_parallelism
    retry_after_ms_min: int = _TABLE.retry_after_ms_min
    retry_after_ms_max: int = _TABLE.retry_after_ms_max
    retry_share: float = _TABLE.retry_share
    queue_s: float | None = _TABLE.queue_ms / 1000 or None
    target_loop_lag_ms: float | None = _TABLE.target_loop_lag_ms or None
    switch_interval_s: float | None = (
        _TABLE.switch_interval_ms / 1000 if _TABLE.switch_interval_ms else None
    )
    check_output: bool = _TABLE.check_output
    chain_calls_under_s: float | None = _TABLE.chain_calls_under_ms / 1000 or None
    chain_threads: int = _TABLE.chain_threads
    fan_out_when_idle: bool = _TABLE.fan_out_when_idle

    def __post_init__(self) -> None:
        if isinstance(self.min_in_flight, bool) or not isinstance(self.min_in_flight, int):
            raise ValueError(f"min_in_flight: must be an integer >= 1, got {self.min_in_flight!r}")
        if self.min_in_flight < 1:
            raise ValueError(f"min_in_flight: must be an integer >= 1, got {self.min_in_flight!r}")
        for name in (
            "max_in_flight",
            "channel_max_in_flight",
            "fallback_max_in_flight",
            "batch_parallelism",
            "chain_threads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        for channel, value in self.channel_limits.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"channel_limits.{channel}: must be an integer >= 1, got {value!r}"
                )
        if self.target_loop_lag_ms is not None and not self.target_loop_lag_ms > 0:
            raise ValueError(
                f"target_loop_lag_ms: must be > 0 or None, got {self.target_loop_lag_ms!r}"
            )
        if self.latency_tolerance is not None and not self.latency_tolerance > 1:
            raise ValueError(
                f"latency_tolerance: must be > 1 or None, got {self.latency_tolerance!r}"
            )
        if self.switch_interval_s is not None and not self.switch_interval_s > 0:
            raise ValueError(
                f"switch_interval_s: must be > 0 or None, got {self.switch_interval_s!r}"
            )
        if self.queue_s is not None and not self.queue_s > 0:
            raise ValueError(f"queue_s: must be > 0 or None, got {self.queue_s!r}")
        if self.chain_calls_under_s is not None and not self.chain_calls_under_s > 0:
            raise ValueError(
                f"chain_calls_under_s: must be > 0 or None, got {self.chain_calls_under_s!r}"
            )
        _check_share(self.retry_share)
        if not 1 <= self.retry_after_ms_min <= self.retry_after_ms_max:
            raise ValueError(
                "retry_after_ms_min/max: need 1 <= min <= max, got "
                f"{self.retry_after_ms_min}, {self.retry_after_ms_max}"
            )

    @classmethod
    def from_config(cls, cfg: OverloadConfig) -> OverloadSettings:
        """The settings the ``[overload]`` table asks for (zeros sized from the machine)."""
        return cls(
            max_in_flight=cfg.max_in_flight or machine_in_flight(),
            min_in_flight=cfg.min_in_flight or 1,
            latency_tolerance=cfg.latency_tolerance or None,
            channel_max_in_flight=cfg.channel_max_in_flight,
            channel_limits=MappingProxyType(dict(cfg.channel_limits)),
            fallback=cfg.fallback or None,
            fallback_max_in_flight=cfg.fallback_max_in_flight,
            batch_parallelism=cfg.batch_parallelism,
            retry_after_ms_min=cfg.retry_after_ms_min,
            retry_after_ms_max=cfg.retry_after_ms_max,
            retry_share=cfg.retry_share,
            queue_s=cfg.queue_ms / 1000 or None,
            target_loop_lag_ms=cfg.target_loop_lag_ms or None,
            switch_interval_s=cfg.switch_interval_ms / 1000 if cfg.switch_interval_ms else None,
            check_output=cfg.check_output,
            chain_calls_under_s=cfg.chain_calls_under_ms / 1000 or None,
            chain_threads=cfg.chain_threads,
            fan_out_when_idle=cfg.fan_out_when_idle,
        )

    def channel_limit(self, channel: str) -> int:
        """The bulkhead size of ``channel``."""
        if channel in self.channel_limits:
            return self.channel_limits[channel]
        default = self.channel_max_in_flight or self.max_in_flight or machine_in_flight()
        if channel == self.fallback:
            return self.fallback_max_in_flight or (default + (self.max_in_flight or default))
        return default

    def batch_width(self, items: int) -> int:
        """How many items of a BatchRecall of ``items`` may run at once."""
        width = self.batch_parallelism or max(1, (self.max_in_flight or machine_in_flight()) // 4)
        return max(1, min(items, width))


class LoopLag:
    """How late the event loop runs a timer: the queueing delay every callback on it,
    a new request's included, is seeing right now (an EWMA over ticks every 5 ms).

    The serving process has one event loop; when it is saturated, a request waits in
    front of it before any code of ours can even shed it. Its lag is the signal that
    admission adapts to."""

    INTERVAL_S = 0.005

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lag_s = 0.0
        self._due = 0.0
        self._stopped = False

    def start(self) -> None:
        self._due = self.loop.time() + self.INTERVAL_S
        self.loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        self._stopped = True  # the next tick does not come back (any thread may stop it)

    def _tick(self) -> None:
        if self._stopped:
            return
        now = self.loop.time()
        self.lag_s += 0.2 * (max(0.0, now - self._due) - self.lag_s)
        self._due = now + self.INTERVAL_S
        self.loop.call_at(self._due, self._tick)


#: Sheds per client the retry schedule brings back above which the hints space refused
#: clients at ``retry_share`` of the pace, and below which they go back to the pace
#: (:meth:`Admission._adapt`): a band, so that the spacing, which lowers the sheds it is
#: measured by, does not switch back and forth.
_SPREAD_ABOVE, _SPREAD_BELOW = 0.75, 0.5


class Admission:
    """A counter of requests in flight with a bound, thread-safe.

    :meth:`enter` admits or raises :class:`Overloaded`; :meth:`leave` records how long the
    request took. The bound adapts (AIMD, every 50 ms) between ``min_limit`` and ``limit``,
    down by a quarter while either signal says requests queue, up by one while neither
    does and the bound is what holds requests back:

    * the serving event loop lags more than ``target_lag_ms``: requests queue in front
      of it, where no deadline is checked and nothing can be shed;
    * admitted requests take more than ``latency_tolerance`` times a request's time
      alone (the mean over the window against :attr:`solo_ms`, a moving average of the
      requests that entered an empty engine and left it before any other entered): they
      queue inside the process, for the GIL and the threads, so admitting more only makes
      each one slower. It grows back while they take under ``(1 + tolerance) / 2`` times.
      Latency that does not grow with the load (a remote store's) leaves the ratio near
      1 and the bound alone. Until a solo time is known this signal is silent.

    The retry hint paces the shed clients: each one is given the next free instant of a
    schedule that advances by 1 / throughput per shed (throughput: the rate requests
    finished over the last few windows; before any, the bound over the mean request
    time), never sooner than the loop's current lag, so clients that obey it come back
    spread out at the rate the engine finishes requests instead of all together. While
    the engine stays full that rate is too fast: the requests that just finished are
    followed at once by their clients' next ones, which take the freed room, and a
    client brought back for every request finished is refused again nearly every time,
    one refusal per answer, each a round trip for both sides. So when the sheds per
    client the schedule brings back pass 0.75 (an average over about 20 windows), the schedule
    advances by 1 / (``retry_share`` x throughput) instead, a quarter of the rate by
    default (a retry budget, as Envoy's default of 20 % of active requests), and goes
    back to the rate when they fall under 0.5. On one process at 64 and 256 closed-loop
    clients that took goodput from 82-90 % of the peak to 92-100 % with a third of the
    sheds (docs/reliability.md, "Restored"); at a modest overload, where brought-back
    clients mostly find room, a fixed quarter lost up to a fifth of the answers in some
    runs, which is why it is not applied all the time.

    The line (:meth:`wait`, ``queue_s``): a request that finds the bound reached waits,
    oldest first, when the line's expected wait (its place in it times 1 / throughput)
    is under ``queue_s`` and under half its own remaining deadline; a slot freed by
    :meth:`leave` goes to the head of the line directly. A shed costs the client a
    round trip and a sleep on the hint, and the server the call; at a modest overload
    (a few clients more than the bound) those round trips were most of the calls and
    left the cores idle between retries (docs/reports/2026-12-05-issue-14-speed-per-core.md,
    "A line before the bound"). Past ``queue_s`` the line is full and requests are shed
    as before, so a request never queues longer than the engine can serve it.
    """

    _WINDOW_S = 0.05

    def __init__(
        self,
        limit: int,
        retry_min_ms: int = 1,
        retry_max_ms: int = 5000,
        *,
        retry_share: float = _TABLE.retry_share,
        target_lag_ms: float | None = 2.0,
        min_limit: int = 1,
        latency_tolerance: float | None = None,
        queue_s: float | None = None,
        host: HostLoad | None = None,
    ) -> None:
        self.max_limit = limit
        # where this process's count is published for the host's other processes
        self.host = host if host is not None else HostLoad()
        self.min_limit = max(1, min(min_limit, limit)) if limit else 1
        self.limit = limit  # the adaptive bound in force (0: none)
        self.in_flight = 0
        self.shed = 0
        self._lock = threading.Lock()
        self._retry_min, self._retry_max = retry_min_ms, retry_max_ms
        self._retry_share = _check_share(retry_share)
        self._spread = 1.0  # the retry schedule's step in units of the pace: 1 or 1 / share
        self._shed_ratio = 0.0  # sheds per request finished (EWMA over windows)
        self._window_shed = 0
        self._target_lag = None if target_lag_ms is None else target_lag_ms / 1000
        self._lag: LoopLag | None = None
        self._mean_s = 0.005
        self._retry_cursor = 0.0  # perf_counter instant handed to the last shed client
        self._window_start = time.perf_counter()
        self._window_peak = 0
        self._window_done = 0
        self._rate = 0.0  # requests finished per second (EWMA over windows); 0: unknown
        self._tolerance = latency_tolerance
        self._entries = 0  # requests admitted so far
        self._solo_entry = -1  # _entries when a request entered an empty engine
        self._solo_s: float | None = None  # moving average of solo requests' time
        self._window_sum_s = 0.0
        self._window_timed = 0
        self._logged_at = 0.0
        self._logged_shed = 0
        self._shed_counter = metrics.REQUESTS_SHED.labels("max_in_flight")
        metrics.ADMISSION_LIMIT.set(limit)
        self.queue_s = queue_s
        # requests waiting for a slot, oldest first: a future each, set to True when
        # :meth:`leave` hands it a slot (already counted in ``in_flight``), False
        # when its patience ran out
        self._line: collections.deque[asyncio.Future[bool]] = collections.deque()

    @property
    def solo_ms(self) -> float | None:
        """What a request takes alone in the engine (None: not seen yet)."""
        return None if self._solo_s is None else 1000 * self._solo_s

    @property
    def loop_lag_ms(self) -> float:
        return 1000 * self._lag.lag_s if self._lag is not None else 0.0

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Measure ``loop``'s lag: the loop serving requests. Cheap when it is already
        watched; moves to ``loop`` when the watched one has stopped."""
        lag = self._lag
        if (lag is not None and lag.loop is loop) or self._target_lag is None or not self.max_limit:
            return
        with self._lock:
            old = self._lag
            if old is not None and (old.loop is loop or old.loop.is_running()):
                return
            if old is not None:
                old.stop()
            self._lag = LoopLag(loop)
            self._lag.start()
            lag = self._lag  # read at each scrape
            metrics.LOOP_LAG.set_function(lambda: lag.lag_s)

    def close(self) -> None:
        if self._lag is not None:
            self._lag.stop()

    def enter(self, n: int = 1, *, at_least: int | None = None) -> int:
        """Admit ``n`` requests, or as many as there is room for but ``at_least``; return
        how many were admitted. Raises :class:`Overloaded` when not even ``at_least``
        (default ``n``) fit."""
        want_min = n if at_least is None else at_least
        now = time.perf_counter()
        with self._lock:
            if now - self._window_start >= self._WINDOW_S:
                self._adapt(now)
            room = n if not self.limit else min(n, self.limit - self.in_flight)
            if self._line:  # those in line come first
                room = 0
            if room >= want_min and room > 0:
                self._count_in(room)
                return room
        raise self._refusal(now)

    def _count_in(self, n: int) -> None:
        """Under ``_lock``: ``n`` more requests in flight."""
        self.in_flight += n
        self._entries += n
        if self.in_flight == 1:
            self._solo_entry = self._entries
        self._window_peak = max(self._window_peak, self.in_flight)
        metrics.REQUESTS_IN_FLIGHT.set(self.in_flight)
        self._publish()

    def _publish(self) -> None:
        """Under ``_lock``: this process's requests, admitted or in line, for the host's
        count (serving/host_load.py): one waiting in line will want the cores too."""
        self.host.publish(self.in_flight + len(self._line))

    async def wait(self, remaining_s: float | None = None) -> None:
        """Admit one request, waiting in line for a slot when the bound is reached and
        the line's expected wait allows it (class docstring); raises
        :class:`Overloaded` when it does not, or when the wait outlasts half of
        ``remaining_s`` (the request's deadline; None: ``4 * queue_s``). A request
        cancelled while it waits (its client went away) takes no slot."""
        now = time.perf_counter()
        loop = asyncio.get_running_loop()
        with self._lock:
            if now - self._window_start >= self._WINDOW_S:
                self._adapt(now)
            if not self.limit or (self.in_flight < self.limit and not self._line):
                self._count_in(1)
                return
            patience = 4 * self.queue_s if self.queue_s else 0.0
            if remaining_s is not None:
                patience = min(patience, remaining_s / 2)
            fut: asyncio.Future[bool] | None = None
            if self.queue_s and self._line_wait_s() <= min(self.queue_s, patience):
                fut = loop.create_future()
                self._line.append(fut)
                metrics.ADMISSION_QUEUE.set(len(self._line))
                self._publish()
        if fut is None:
            raise self._refusal(now)
        timer = loop.call_later(patience, _expire, fut)
        try:
            granted = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self._release(1)  # handed a slot as the request went away: pass it on
            raise
        finally:
            timer.cancel()
            with self._lock:
                try:
                    self._line.remove(fut)
                except ValueError:
                    pass
                metrics.ADMISSION_QUEUE.set(len(self._line))
                self._publish()
        if not granted:
            raise self._refusal(time.perf_counter())

    @property
    def full(self) -> bool:
        """Whether a request arriving now would be shed (read without the lock: a hint
        for refusing before any work, :meth:`enter` and :meth:`wait` decide): the bound
        is reached and the line, if any, is too long to join."""
        if not self.limit or self.in_flight < self.limit:
            return False
        return not self.queue_s or self._line_wait_s() > self.queue_s

    def _line_wait_s(self) -> float:
        """The wait a request joining the line now can expect: its place in it times
        the time between two requests finishing."""
        return (len(self._line) + 1) * self._pace_s()

    def refuse(self) -> Overloaded:
        """Count a request shed without :meth:`enter` (it found the bound :attr:`full`
        before anything was parsed) and return its error, retry hint included."""
        return self._refusal(time.perf_counter())

    def _refusal(self, now: float) -> Overloaded:
        with self._lock:
            self.shed += 1
            self._window_shed += 1
            retry = self._next_retry_ms(now)
            in_flight, limit = self.in_flight, self.limit
        self._shed_counter.inc()
        self._log_shed()
        return Overloaded(
            f"overloaded: {in_flight} requests in flight, the limit is {limit} now; "
            f"retry after {retry} ms",
            retry,
        )

    def leave(self, n: int = 1, seconds: float | None = None) -> None:
        """``n`` admitted requests finished; ``seconds``: how long one took."""
        with self._lock:
            if seconds is not None:
                self._mean_s += 0.05 * (seconds - self._mean_s)
                self._window_sum_s += seconds
                self._window_timed += 1
                # alone from entry to exit: no other request entered meanwhile
                if n == 1 and self.in_flight == 1 and self._solo_entry == self._entries:
                    solo = self._solo_s
                    self._solo_s = seconds if solo is None else solo + 0.1 * (seconds - solo)
            self._window_done += n
            handed = self._free(n)
        self._hand(handed)

    def _release(self, n: int) -> None:
        """``n`` slots given back without a request finishing (a waiter that stopped
        waiting after one was counted for it): on to the line, as :meth:`leave` does."""
        with self._lock:
            handed = self._free(n)
        self._hand(handed)

    def _free(self, n: int) -> list[asyncio.Future[bool]]:
        """Under ``_lock``: ``n`` slots free, each to the head of the line (counted in
        flight for it at once, so no newcomer takes it first), the rest given back;
        returns the waiters handed one."""
        handed: list[asyncio.Future[bool]] = []
        self.in_flight -= n
        while self._line and (not self.limit or self.in_flight < self.limit):
            fut = self._line.popleft()
            if fut.done():  # its patience ran out, or its request went away
                continue
            self._count_in(1)
            handed.append(fut)
        metrics.REQUESTS_IN_FLIGHT.set(self.in_flight)
        self._publish()
        return handed

    def _hand(self, handed: list[asyncio.Future[bool]]) -> None:
        """Wake the waiters :meth:`_free` handed a slot, each on its own loop."""
        for fut in handed:
            try:
                fut.get_loop().call_soon_threadsafe(self._grant, fut)
            except RuntimeError:  # its loop is closed: nobody waits on it
                self._release(1)

    def _grant(self, fut: asyncio.Future[bool]) -> None:
        """On the waiter's loop: hand it the slot counted for it, or, when it stopped
        waiting meanwhile, pass the slot on."""
        if fut.done():
            self._release(1)
        else:
            fut.set_result(True)

    @property
    def retry_after_ms(self) -> int:
        """The hint a request shed now would get (without taking its place)."""
        with self._lock:
            now = time.perf_counter()
            return self._clamp_ms(max(self._retry_cursor, now) + self._retry_step_s() - now)

    def _adapt(self, now: float) -> None:
        """Under ``_lock``, once a window: the bound in force."""
        lag, target, tolerance, solo = self._lag, self._target_lag, self._tolerance, self._solo_s
        lag_on = lag is not None and target is not None
        lagging = lag is not None and target is not None and lag.lag_s > target
        lag_low = lag is None or target is None or lag.lag_s < target / 2
        latency_on = tolerance is not None and solo is not None
        queued = keeping_up = False
        if tolerance is not None and solo is not None:
            if self._window_timed >= 3:
                ratio = self._window_sum_s / self._window_timed / solo
                queued = ratio > tolerance
                keeping_up = ratio < (1 + tolerance) / 2
        else:
            keeping_up = True
        if self.max_limit and (lag_on or latency_on):
            if lagging or queued:
                self.limit = max(self.min_limit, (self.limit * 3) // 4)
            elif lag_low and keeping_up and self._window_peak >= self.limit:
                self.limit = min(self.max_limit, self.limit + 1)
            metrics.ADMISSION_LIMIT.set(self.limit)
        if self._window_done:
            rate = self._window_done / (now - self._window_start)
            self._rate = rate if not self._rate else self._rate + 0.3 * (rate - self._rate)
        if self._window_done or self._window_shed:
            ratio = self._window_shed / max(self._window_done, 1)
            self._shed_ratio += 0.05 * (ratio - self._shed_ratio)
            # sheds per client the schedule brings back: near 1, nearly every one is
            # refused again (the engine stays full), so space them out; well under,
            # they find room, so bring them back at the pace
            refused = self._shed_ratio * self._spread
            if refused > _SPREAD_ABOVE:
                self._spread = 1 / self._retry_share
            elif refused < _SPREAD_BELOW:
                self._spread = 1.0
        self._window_shed = 0
        self._window_start = now
        self._window_peak = self.in_flight
        self._window_done = 0
        self._window_sum_s = 0.0
        self._window_timed = 0

    def _pace_s(self) -> float:
        """Under ``_lock``: seconds between two requests finishing at full load."""
        if self._rate:
            return 1.0 / self._rate
        return self._mean_s / max(self.limit or self.in_flight, 1)  # Little's law

    def _next_retry_ms(self, now: float) -> int:
        """Under ``_lock``: the next instant of the retry schedule, as a hint."""
        earliest = now + (self._lag.lag_s if self._lag is not None else 0.0)
        horizon = now + self._retry_max / 1000
        self._retry_cursor = min(max(self._retry_cursor, earliest) + self._retry_step_s(), horizon)
        return self._clamp_ms(self._retry_cursor - now)

    def _retry_step_s(self) -> float:
        """Under ``_lock``: how far the retry schedule advances per shed client."""
        return self._pace_s() * self._spread

    def _clamp_ms(self, seconds: float) -> int:
        return int(min(self._retry_max, max(self._retry_min, math.ceil(seconds * 1000))))

    def _log_shed(self) -> None:
        """At most one log line a second while shedding: a line per shed request would
        add the most work exactly when there is the least room for it."""
        now = time.monotonic()
        if now - self._logged_at < 1.0:
            return
        with self._lock:
            if now - self._logged_at < 1.0:
                return
            shed, self._logged_shed = self.shed - self._logged_shed, self.shed
            self._logged_at = now
            in_flight, limit = self.in_flight, self.limit
        log.warning(
            "load_shed",
            shed=shed,
            in_flight=in_flight,
            limit=limit,
            max_limit=self.max_limit,
            loop_lag_ms=round(self.loop_lag_ms, 2),
        )


def _check_share(share: float) -> float:
    """``share`` when it can be a ``retry_share`` (> 0 and <= 1), else ``ValueError``."""
    if isinstance(share, bool) or not 0 < share <= 1:
        raise ValueError(f"retry_share: must be > 0 and <= 1, got {share!r}")
    return share


def _expire(fut: asyncio.Future[bool]) -> None:
    """A waiter's patience ran out (a slot handed to it meanwhile is passed on by
    :meth:`Admission._grant`)."""
    if not fut.done():
        fut.set_result(False)

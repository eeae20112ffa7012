"""The engine: loads channels, fans a request out to them, fuses their lists.

No gRPC here: the servicers translate protos to :class:`RecallInput` and back.
State that reloads (config, assigner, loaded channels) lives in one immutable
:class:`_State` swapped atomically, so a request sees one consistent generation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import IntEnum

import numpy as np

from recall_engine.config.schema import ChannelConfig, Config
from recall_engine.observability import metrics
from recall_engine.observability.logs import get_logger
from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.channel import (
    Candidates,
    Channel,
    ChannelContext,
    ChannelInfo,
    ItemRecord,
    Query,
)
from recall_engine.serving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from recall_engine.serving.experiments import Assigner, Assignment
from recall_engine.serving.fusion import Fused, RankedList, fuse
from recall_engine.serving.registry import PluginError, discover, instantiate, load_factory, resolve
from recall_engine.serving.requests import RecallInput

log = get_logger(__name__)


class Status(IntEnum):
    """Mirrors recall_engine.v1.ChannelStatus."""

    OK = 1
    TIMEOUT = 2
    ERROR = 3
    SKIPPED = 4


@dataclass(slots=True, frozen=True)
class ChannelReport:
    channel: str
    status: Status
    weight: float
    latency_ms: float = 0.0
    returned: int = 0
    error: str = ""


@dataclass(slots=True, frozen=True)
class RecallOutput:
    fused: Fused
    reports: tuple[ChannelReport, ...]
    assignment: Assignment
    request_id: str


class _Slot:
    """A loaded channel plus an in-flight counter, so a retired channel is closed only
    after its last call returned."""

    __slots__ = (
        "config",
        "channel",
        "plugin",
        "latency_ok",
        "candidates",
        "_inflight",
        "_retired",
        "_lock",
    )

    def __init__(self, config: ChannelConfig, channel: Channel, plugin: str) -> None:
        self.config, self.channel, self.plugin = config, channel, plugin
        # labelled metric children, looked up once instead of per request
        self.latency_ok = metrics.CHANNEL_LATENCY.labels(config.name, "ok")
        self.candidates = metrics.CHANNEL_CANDIDATES.labels(config.name)
        self._inflight = 0
        self._retired = False
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._inflight += 1

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self._close()

    def _close(self) -> None:
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001
            log.exception("channel_close_failed", channel=self.config.name)


@dataclass(slots=True, frozen=True)
class _State:
    config: Config
    assigner: Assigner
    slots: Mapping[str, _Slot]
    generation: int
    failed: Mapping[str, str] = field(default_factory=dict)  # optional channels not loaded


class Engine:
    """Owns the channels and answers recall requests.

    Lifecycle: ``Engine(config)`` → ``load()`` (blocking: imports plugins, loads and
    warms every enabled channel) → ``recall()`` many times → ``close()``.
    """

    def __init__(
        self, config: Config, *, catalog: Catalog | None = None, blocked_plugins: Sequence[str] = ()
    ) -> None:
        self._config = config
        self._blocked = tuple(blocked_plugins)
        self.catalog = catalog if catalog is not None else _open_catalog(config)
        self._pool = ThreadPoolExecutor(
            max_workers=config.server.workers, thread_name_prefix="channel"
        )
        self._state: _State | None = None
        self._admin_lock = threading.Lock()  # serialises loads, reloads and updates

    # -- lifecycle -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._state is not None

    @property
    def config(self) -> Config:
        return self._state.config if self._state else self._config

    def load(self) -> None:
        """Load and warm every enabled channel. Raises :class:`PluginError` when a
        required channel fails; optional failures are logged and skipped."""
        with self._admin_lock:
            slots, failed = self._load_channels(self._config, self._config.channels.keys(), {})
            self._state = _State(self._config, Assigner(self._config), slots, 1, failed)
            metrics.CONFIG_GENERATION.set(1)

    def close(self) -> None:
        state, self._state = self._state, None
        if state:
            for slot in state.slots.values():
                slot.retire()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _load_channels(
        self, config: Config, names, version: Mapping[str, str | None]
    ) -> tuple[dict[str, _Slot], dict[str, str]]:
        plugins = discover(blocked=self._blocked)
        slots: dict[str, _Slot] = {}
        failed: dict[str, str] = {}
        for name in names:
            cc = config.channels[name]
            if not cc.enabled:
                continue
            try:
                slots[name] = self._make_slot(cc, plugins, version.get(name, cc.version))
            except PluginError as e:
                if cc.required:
                    for s in slots.values():
                        s.retire()
                    raise
                failed[name] = str(e)
                log.error("optional_channel_skipped", channel=name, error=str(e))
        return slots, failed

    def _make_slot(self, cc: ChannelConfig, plugins, version: str | None) -> _Slot:
        factory = load_factory(resolve(plugins, cc.plugin))
        ctx = ChannelContext(
            name=cc.name,
            plugin=cc.plugin,
            params=cc.params,
            artifacts=cc.artifacts,
            catalog=self.catalog,
            version=version,
        )
        t0 = time.perf_counter()
        channel = instantiate(cc.plugin, factory, ctx)
        info = _safe_info(channel)
        metrics.CHANNEL_ITEMS.labels(cc.name).set(info.item_count)
        log.info(
            "channel_loaded",
            channel=cc.name,
            plugin=cc.plugin,
            version=info.version,
            items=info.item_count,
            seconds=round(time.perf_counter() - t0, 3),
        )
        return _Slot(cc, channel, cc.plugin)

    # -- admin -----------------------------------------------------------------
    def reload_config(self, new: Config) -> int:
        """Swap in a new config. Channels whose config changed or that are new are
        loaded beside the old ones first; on any failure the old state keeps serving."""
        with self._admin_lock:
            old = self._require_state()
            changed = [
                n
                for n, cc in new.channels.items()
                if cc.enabled and (n not in old.slots or old.slots[n].config != cc)
            ]
            fresh, failed = self._load_channels(new, changed, {})
            slots = {
                n: fresh.get(n) or old.slots[n]
                for n, cc in new.channels.items()
                if cc.enabled and (n in fresh or n in old.slots)
            }
            self._state = _State(new, Assigner(new), slots, old.generation + 1, failed)
            for n, slot in old.slots.items():
                if slots.get(n) is not slot:
                    slot.retire()
            metrics.CONFIG_GENERATION.set(self._state.generation)
            log.info("config_reloaded", generation=self._state.generation, reloaded=changed)
            return self._state.generation

    def reload_channels(self, names: Sequence[str], version: str | None) -> dict[str, str]:
        """Load a new artifact version of ``names`` (all when empty) beside the old,
        warm it, swap atomically. If any fails, nothing is swapped."""
        with self._admin_lock:
            state = self._require_state()
            names = list(names) or list(state.slots)
            for n in names:
                if n not in state.slots:
                    raise InvalidArgument(
                        "channels",
                        f"channel {n!r} is not loaded (loaded: {', '.join(state.slots)})",
                    )
            plugins = discover(blocked=self._blocked)
            fresh: dict[str, _Slot] = {}
            try:
                for n in names:
                    fresh[n] = self._make_slot(state.config.channels[n], plugins, version)
            except PluginError as e:
                for s in fresh.values():
                    s.retire()
                log.error("channel_reload_failed", error=str(e))
                raise FailedPrecondition(f"reload failed, old version keeps serving: {e}") from e
            self._state = replace(state, slots={**state.slots, **fresh})
            for n in names:
                state.slots[n].retire()
            return {n: _safe_info(s.channel).version for n, s in fresh.items()}

    def upsert_items(self, items: Sequence[ItemRecord]) -> dict[str, int]:
        with self._admin_lock:
            return self._upsert(self._require_state(), items, log=True)

    def delete_items(self, item_ids: Sequence[str]) -> dict[str, int]:
        with self._admin_lock:
            return self._delete(self._require_state(), item_ids, log=True)

    def _upsert(self, state: _State, items: Sequence[ItemRecord], *, log: bool) -> dict[str, int]:
        """The catalogue first, then the channels: a channel's index never holds an item
        the catalogue lacks (vector_channel.py relies on it)."""
        self.catalog.upsert(items, log=log)
        return {n: s.channel.upsert_items(items) for n, s in state.slots.items()}

    def _delete(self, state: _State, item_ids: Sequence[str], *, log: bool) -> dict[str, int]:
        """The channels first, then the catalogue (the same invariant as ``_upsert``)."""
        removed = {n: s.channel.delete_items(item_ids) for n, s in state.slots.items()}
        self.catalog.delete(item_ids, log=log)
        return removed

    def sync_catalog(self) -> int:
        """Apply what other server processes appended to the catalogue's update log
        (``serve --processes N``: an admin call reaches one process), to the catalogue
        and every channel, in log order. Returns how many operations were applied."""
        with self._admin_lock:
            state = self._state
            if state is None:
                return 0
            ops = self.catalog.read_new_updates()
            start = 0
            while start < len(ops):  # runs of the same op, in order
                op = ops[start][0]
                end = start
                while end < len(ops) and ops[end][0] == op:
                    end += 1
                batch = [what for _, what in ops[start:end]]
                apply = self._upsert if op == "upsert" else self._delete
                apply(state, batch, log=False)  # type: ignore[arg-type]
                start = end
            return len(ops)

    def channel_infos(self) -> list[tuple[ChannelConfig, ChannelInfo]]:
        state = self._require_state()
        return [(s.config, _safe_info(s.channel)) for s in state.slots.values()]

    @property
    def generation(self) -> int:
        return self._state.generation if self._state else 0

    def _require_state(self) -> _State:
        if self._state is None:
            raise Unavailable("engine is loading channels; retry shortly")
        return self._state

    # -- serving ---------------------------------------------------------------
    async def recall(self, inp: RecallInput, timeout_s: float | None = None) -> RecallOutput:
        """Fan ``inp`` out to the plan's channels, each under its own timeout inside
        the request deadline, and fuse what came back in time."""
        state = self._require_state()
        t_end = time.perf_counter() + (
            timeout_s if timeout_s is not None else state.config.server.request_timeout_ms / 1000
        )
        assignment = state.assigner.assign(inp.query.user_id)
        plan = assignment.plan
        weights = dict(plan.weights)
        if inp.weight_override:
            weights.update(inp.weight_override)
        calls: list[_Call] = []
        reports: dict[str, ChannelReport] = {}
        for name in state.config.channels:
            w = weights.get(name, 0.0)
            slot = state.slots.get(name)
            if slot is None:
                if name in weights and w > 0:
                    reports[name] = ChannelReport(
                        name, Status.SKIPPED, w, error=state.failed.get(name, "not loaded")
                    )
                continue
            if w <= 0 or not slot.channel.accepts(inp.query):
                reports[name] = ChannelReport(name, Status.SKIPPED, w)
                continue
            k_c = plan.channel_k.get(name, slot.config.k)
            timeout = min(slot.config.timeout_ms / 1000, max(t_end - time.perf_counter(), 0))
            calls.append(_Call(name, slot, k_c, w, timeout))
        lists: list[RankedList] = []
        if calls:
            await self._fan_out(calls, inp.query)
            for call in calls:
                report, cands = self._report(call)
                reports[call.name] = report
                if cands is not None and len(cands):
                    lists.append(RankedList(call.name, cands.item_ids, cands.scores))
            if all(reports[c.name].status == Status.TIMEOUT for c in calls):
                raise DeadlineExceeded(
                    "no channel answered within the deadline: " + ", ".join(c.name for c in calls)
                )
        fused = fuse(
            plan.fusion,
            lists,
            weights,
            inp.k,
            priority=tuple(state.config.channels),
            params=plan.fusion_params,
        )
        ordered = tuple(reports[n] for n in state.config.channels if n in reports)
        metrics.VARIANT_REQUESTS.labels(assignment.experiment, assignment.variant).inc()
        return RecallOutput(fused, ordered, assignment, inp.request_id)

    async def _fan_out(self, calls: Sequence[_Call], query: Query) -> None:
        """Run ``calls`` on the worker pool, all at once, and return when each one has
        finished or passed its timeout (late ones are marked ``timed_out``; their result
        is dropped when it comes). One event-loop wake-up per request (the last call to
        finish) and one timer per distinct deadline, instead of a task, a future chain
        and a timer per channel: the fan-out is on every request's path."""
        loop = asyncio.get_running_loop()
        fan = _FanOut(loop, len(calls))
        for call in calls:
            call.started = time.perf_counter()
            call.slot.acquire()
            try:
                self._pool.submit(_run_call, call, self.catalog, query, fan)
            except BaseException:
                call.slot.release()
                raise
        try:
            while fan.pending:
                now = time.perf_counter()
                due = fan.time_out(calls, now)
                if due is None:
                    break
                fan.waiter = loop.create_future()
                timer = loop.call_later(due - now, _resolve, fan.waiter)
                try:
                    await fan.waiter
                finally:
                    timer.cancel()
                    fan.waiter = None
        except asyncio.CancelledError:
            fan.time_out(calls, float("inf"))  # the request is gone: drop late results
            raise

    @staticmethod
    def _report(call: _Call) -> tuple[ChannelReport, Candidates | None]:
        """The finished (or timed-out) ``call`` as a report, with metrics and logs."""
        name, slot = call.name, call.slot
        ms = (call.ended - call.started) * 1000
        if call.timed_out:
            metrics.CHANNEL_TIMEOUTS.labels(name).inc()
            metrics.CHANNEL_LATENCY.labels(name, "timeout").observe(ms / 1000)
            log.warning("channel_timeout", channel=name, timeout_ms=round(call.timeout * 1000, 1))
            return ChannelReport(
                name,
                Status.TIMEOUT,
                call.weight,
                ms,
                error=f"no answer within {call.timeout * 1000:.0f} ms",
            ), None
        e = call.error
        if e is not None:
            if not isinstance(e, Exception):
                raise e
            metrics.CHANNEL_ERRORS.labels(name).inc()
            metrics.CHANNEL_LATENCY.labels(name, "error").observe(ms / 1000)
            log.warning("channel_error", channel=name, error=f"{type(e).__name__}: {e}")
            return ChannelReport(
                name, Status.ERROR, call.weight, ms, error=f"{type(e).__name__}: {e}"
            ), None
        cands = call.result
        assert cands is not None
        slot.latency_ok.observe(ms / 1000)
        slot.candidates.observe(len(cands))
        return ChannelReport(name, Status.OK, call.weight, ms, len(cands)), cands


@dataclass(slots=True, eq=False)
class _Call:
    """One channel call of one request. The worker thread fills ``result`` or
    ``error`` and ``ended``; the event loop may mark it ``timed_out`` first."""

    name: str
    slot: _Slot
    k: int
    weight: float
    timeout: float
    started: float = 0.0
    ended: float = 0.0
    result: Candidates | None = None
    error: BaseException | None = None
    finished: bool = False
    timed_out: bool = False


class _FanOut:
    """Bookkeeping of one request's calls in flight, shared by the event loop and the
    worker threads: ``pending`` counts calls neither finished nor timed out (under
    ``lock``); the call that brings it to zero wakes the loop once."""

    __slots__ = ("loop", "lock", "pending", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, calls: int) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.pending = calls
        self.waiter: asyncio.Future | None = None

    def finish(self, call: _Call, result: Candidates | None, error: BaseException | None) -> None:
        """Worker thread: record the outcome unless the call already timed out."""
        ended = time.perf_counter()
        with self.lock:
            if call.timed_out:
                return
            call.result, call.error, call.ended, call.finished = result, error, ended, True
            self.pending -= 1
            last = self.pending == 0
        if last:
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def time_out(self, calls: Sequence[_Call], now: float) -> float | None:
        """Event loop: mark the unfinished calls whose deadline is ``now`` or earlier as
        timed out; return the next deadline, or None when nothing is pending."""
        due = None
        with self.lock:
            for call in calls:
                if call.finished or call.timed_out:
                    continue
                deadline = call.started + call.timeout
                if deadline <= now:
                    call.timed_out, call.ended = True, min(now, time.perf_counter())
                    self.pending -= 1
                elif due is None or deadline < due:
                    due = deadline
        return due


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _run_call(call: _Call, catalog: Catalog, query: Query, fan: _FanOut) -> None:
    """The worker-thread side of a channel call."""
    try:
        cands = _guarded(call.slot, catalog, query, call.k)
    except BaseException as e:  # noqa: BLE001 - reported by the event loop
        fan.finish(call, None, e)
    else:
        fan.finish(call, cands, None)


def _guarded(slot: _Slot, catalog: Catalog, query: Query, k: int) -> Candidates:
    """Run the channel, enforce the contract (known, allowed, unique ids, at most k) as
    a safety net unless the channel vouches for its output (``trusted_output``), release
    the slot."""
    channel = slot.channel
    try:
        cands = channel.recall(query, k)
    finally:
        slot.release()
    if channel.trusted_output:
        return cands
    ids = list(cands.item_ids)
    mask = catalog.filter_mask(ids, query)
    if len(ids) <= k and all(mask) and len(set(ids)) == len(ids):
        return cands
    seen: set[str] = set()
    keep = []
    for i, (item, ok) in enumerate(zip(ids, mask, strict=True)):
        if ok and item not in seen:
            seen.add(item)
            keep.append(i)
            if len(keep) == k:
                break
    scores = np.asarray(cands.scores, dtype=np.float32)
    return Candidates([ids[i] for i in keep], scores[keep])


def _safe_info(channel: Channel) -> ChannelInfo:
    try:
        return channel.info()
    except Exception:  # noqa: BLE001
        log.exception("channel_info_failed", channel=channel.ctx.name)
        return ChannelInfo()


def _open_catalog(config: Config) -> Catalog:
    folder = config.artifacts_root / "catalog"
    if (folder / "items.jsonl").exists():
        return Catalog.load(folder)
    log.warning("catalog_missing", folder=str(folder))
    return Catalog(folder=folder)

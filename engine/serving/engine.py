"""The engine: loads channels, fans a request out to them, fuses their lists.

No gRPC here: the servicers translate protos to :class:`RecallInput` and back.
State that reloads (config, assigner, loaded channels) lives in one immutable
:class:`_State` swapped atomically, so a request sees one consistent generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from typing import Any

import numpy as np

from recall_engine.config import ChannelConfig, Config, TracingConfig
from recall_engine.observability import metrics, tracing
from recall_engine.observability.logs import get_logger
from recall_engine.runtime import native_time
from recall_engine.runtime.artifacts import ArtifactError
from recall_engine.runtime.catalog import Catalog
from recall_engine.runtime.encoders import CALL_DEADLINE
from recall_engine.runtime.learned_weights import BUNDLE as LEARNED_BUNDLE
from recall_engine.runtime.learned_weights import LearnedWeights, load_learned_weights
from recall_engine.runtime.process_memory import release_free_memory
from recall_engine.sdk.capabilities import RecallsColdItems, SupportsOnlineUpdates
from recall_engine.sdk.channel import (
    Candidates,
    Channel,
    ChannelContext,
    ChannelInfo,
    ItemRecord,
    Query,
)
from recall_engine.sdk.types import ColdItems
from recall_engine.serving.admission import Admission, OverloadSettings, machine_in_flight
from recall_engine.serving.bulkhead import Bulkhead
from recall_engine.serving.catalog_updates import compact_if_due, write_ahead
from recall_engine.serving.chain_pool import ChainPool
from recall_engine.serving.cores import usable_cores
from recall_engine.serving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Overloaded,
    Unavailable,
)
from recall_engine.serving.experiments import Assigner, Assignment
from recall_engine.serving.explain import Explanation, channel_evidence, explain
from recall_engine.serving.fusion import Fused, RankedList, fuse
from recall_engine.serving.host_load import HostLoad
from recall_engine.serving.output_check import BadOutput, check_answer
from recall_engine.serving.registry import PluginError, PreparedChannel, instantiate, prepare
from recall_engine.serving.requests import RecallInput
from recall_engine.serving.segment_weights import describe, plan_scouts, request_weights

log = get_logger(__name__)

#: Most cold items whose set the engine keeps for fusion alone (about 110 bytes each:
#: 27 MiB per process at the cap); a catalogue with more searches its first-seen record
#: per candidate instead. Scouts (learned weights) keep theirs whatever its size.
COLD_SET_LIMIT = 250_000


class Status(IntEnum):
    """Mirrors recall_engine.v1.ChannelStatus."""

    OK = 1
    TIMEOUT = 2
    ERROR = 3
    SKIPPED = 4
    OVERLOADED = 5


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
    explanation: Explanation | None = None  # RecallRequest.explain only


class _Slot:
    """A loaded channel, its bulkhead, and an in-flight counter, so that a retired
    channel is closed only after its last call returned, exactly once, and no call
    starts on it after it was retired (:meth:`acquire` fails; the request then uses the
    current generation's slot). It also remembers how long its calls take, per kind of
    call (:meth:`expected`), and how much of that they wait off the CPU
    (:meth:`waits`), so that quick ones can share a thread (chains)."""

    __slots__ = (
        "config",
        "channel",
        "plugin",
        "bulkhead",
        "latency_ok",
        "candidates",
        "_took",
        "_waited",
        "_native",
        "_inflight",
        "_retired",
        "_closed",
        "_lock",
    )

    def __init__(self, config: ChannelConfig, channel: Channel, plugin: str, limit: int) -> None:
        self.config, self.channel, self.plugin = config, channel, plugin
        self.bulkhead = Bulkhead(config.name, limit)
        # every series of the channel at 0 before its first call (a first timeout or
        # error must be a change to increase()/rate()); the hot ones looked up once here
        metrics.channel_series(config.name)
        self.latency_ok = metrics.CHANNEL_LATENCY.labels(config.name, "ok")
        self.candidates = metrics.CHANNEL_CANDIDATES.labels(config.name)
        self._took: dict[tuple[bool, bool], float] = {}
        self._waited: dict[tuple[bool, bool], float] = {}
        self._native: dict[tuple[bool, bool], float] = {}
        self._inflight = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()

    def expected(self, kind: tuple[bool, bool]) -> float:
        """What a call of ``kind`` (with text, as a scout) takes when nothing else
        competes for the CPU, in seconds: the fastest of its calls since it was last
        seen slow (:meth:`slow`), inf before the first. A minimum, because contention
        slows every call at once: the typical call of a loaded server says how busy
        the server is, its fastest what the call itself costs."""
        return self._took.get(kind, math.inf)

    def waits(self, kind: tuple[bool, bool]) -> float:
        """Of the call :meth:`expected` is, the seconds its thread spent off the CPU
        (on the network, an encoder batch, other threads' work, the GIL), inf before
        the first: what running it in a chain would add to the others' wait for
        nothing."""
        return self._waited.get(kind, math.inf)

    def native(self, kind: tuple[bool, bool]) -> float:
        """Of the call :meth:`expected` is, the seconds spent in native calls that run
        without the GIL (usearch, ONNX Runtime: runtime/native_time.py), 0 before the
        first: what could overlap with other calls on another core."""
        return self._native.get(kind, 0.0)

    def took(
        self,
        kind: tuple[bool, bool],
        seconds: float,
        cpu_seconds: float,
        native_seconds: float = 0.0,
    ) -> None:
        """Record a finished call of ``kind`` that took ``seconds``, ``cpu_seconds`` of
        them on its thread's CPU and ``native_seconds`` in native calls without the GIL.
        Races between threads lose an update at worst."""
        before = self._took.get(kind)
        if before is None or seconds < before:
            self._took[kind] = seconds
            self._waited[kind] = max(0.0, seconds - cpu_seconds)
            self._native[kind] = min(seconds, native_seconds)

    def slow(self, kind: tuple[bool, bool], seconds: float) -> None:
        """A call of ``kind`` timed out, or held up its chain, after ``seconds``: what
        it is expected to take from now on, until a faster call is seen."""
        self._took[kind] = seconds

    def acquire(self) -> bool:
        """Count one more call in flight; False (and nothing counted) once retired."""
        with self._lock:
            if self._retired:
                return False
            self._inflight += 1
            return True

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

    @property
    def closed(self) -> bool:
        return self._closed

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.bulkhead.close()
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
    learned: LearnedWeights | None = None  # the build's per-segment fusion weights


class Engine:
    """Owns the channels and answers recall requests.

    Lifecycle: ``Engine(config)`` → ``load()`` (blocking: imports plugins, loads and
    warms every enabled channel) → ``recall()`` many times → ``close()``.
    """

    def __init__(
        self,
        config: Config,
        *,
        catalog: Catalog | None = None,
        blocked_plugins: Sequence[str] = (),
        overload: OverloadSettings | None = None,
    ) -> None:
        self._config = config
        self._blocked = tuple(blocked_plugins)
        self.catalog = catalog if catalog is not None else _open_catalog(config)
        self.overload = (
            overload if overload is not None else OverloadSettings.from_config(config.overload)
        )
        self.admission = Admission(
            self.overload.max_in_flight,
            self.overload.retry_after_ms_min,
            self.overload.retry_after_ms_max,
            retry_share=self.overload.retry_share,
            target_lag_ms=self.overload.target_loop_lag_ms,
            min_limit=self.overload.min_in_flight,
            latency_tolerance=self.overload.latency_tolerance,
            queue_s=self.overload.queue_s,
            host=HostLoad.of_process(),
        )
        self._cores = usable_cores()  # what fan_out_pays shares among requests in flight
        self._state: _State | None = None
        self._admin_lock = threading.Lock()  # serialises loads, reloads and updates
        # threads that run a request's quick calls one after another (_fan_out,
        # serving/chain_pool.py): chain_threads of them, more while some are stuck in a
        # hung call, up to one chain per admitted request and as many again; when every
        # thread is stuck, calls get a thread each as before
        bound = self.overload.max_in_flight or machine_in_flight()
        limit = max(2 * bound, self.overload.chain_threads)
        under = self.overload.chain_calls_under_s or 0.002  # None: chains off, pool unused
        self._chains = ChainPool(self.overload.chain_threads or limit, limit, 10 * under)

    # -- lifecycle -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._state is not None

    @property
    def learned_weights(self) -> LearnedWeights | None:
        """The build's per-segment fusion weights in use (None: none in the artifacts)."""
        return self._state.learned if self._state else None

    @property
    def config(self) -> Config:
        return self._state.config if self._state else self._config

    def load(self) -> None:
        """Load and warm every enabled channel. Raises :class:`PluginError` when a
        required channel fails; optional failures are logged and skipped. Sets the GIL
        switch interval of the settings (see :class:`OverloadSettings`)."""
        if self.overload.switch_interval_s is not None:
            sys.setswitchinterval(self.overload.switch_interval_s)
        with self._admin_lock:
            slots, failed = self._load_channels(self._config, self._config.channels.keys(), {})
            learned = _read_learned(self._config, None)
            self._read_cold_sets(self._config, learned)
            self._state = _State(self._config, _assigner(self._config), slots, 1, failed, learned)
            metrics.CONFIG_GENERATION.set(1)
        release_free_memory()  # what loading freed is not kept as this process's own

    def scout(self, name: str, query: Query, k: int, cold: ColdItems) -> Candidates:
        """What channel ``name`` (at depth ``k``) answers ``query`` as a scout
        (:func:`scout_answer`, checked as ``recall`` checks it; empty when the channel is
        not loaded or does not accept the query): offline evaluation fuses with it to
        match what ``recall`` serves."""
        state = self._require_state()
        slot = self._acquire(state, name)
        if slot is None:
            return Candidates.empty()
        if not slot.channel.accepts(query):
            slot.release()
            return Candidates.empty()
        return _guarded(slot, self.catalog, query, k, self.overload.check_output, cold)

    def _read_cold_sets(self, config: Config, learned: LearnedWeights | None) -> None:
        """Read the catalogue's cold items for every plan with cold slots now, so that
        no request pays for it (0.4-0.6 s at a million items). The scouts search them
        (serving/segment_weights.py, with learned weights), and fusion tells a pool's
        cold items by them: a set look-up per candidate, where the catalogue's
        first-seen record costs a hashed search (150 against 55 us for 400 ids at a
        million items). Without ``learned`` (no scouts) a set is kept only up to
        :data:`COLD_SET_LIMIT` ids; fusion searches the record past it."""
        limit = None if learned is not None else COLD_SET_LIMIT
        plans = [config.plan, *(v.plan for e in config.experiments for v in e.variants)]
        for plan in plans:
            if plan.cold_quota > 0:
                self.catalog.cold_items(plan.cold_max_age_days, limit)

    def close(self) -> None:
        """Stop serving; each channel is closed once its in-flight calls returned.
        Idempotent."""
        state, self._state = self._state, None
        self.admission.close()
        self._chains.close()
        if state:
            for slot in state.slots.values():
                slot.retire()

    def _load_channels(
        self, config: Config, names, version: Mapping[str, str | None]
    ) -> tuple[dict[str, _Slot], dict[str, str]]:
        # Every plugin imported and every channel's params checked before any artifact
        # is read (a typo in a params table stops start-up at once, naming the key).
        plugins, failed = prepare(config, names, blocked=self._blocked)
        slots: dict[str, _Slot] = {}
        for name in plugins:
            cc = config.channels[name]
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

    def _make_slot(
        self, cc: ChannelConfig, plugins: Mapping[str, PreparedChannel], version: str | None
    ) -> _Slot:
        prepared = plugins[cc.name]
        factory = prepared.factory
        ctx = ChannelContext(
            name=cc.name,
            plugin=cc.plugin,
            params=cc.params,
            artifacts=cc.artifacts,
            catalog=self.catalog,
            version=version,
            typed_params=prepared.params,
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
        return _Slot(cc, channel, cc.plugin, self.overload.channel_limit(cc.name))

    # -- admin -----------------------------------------------------------------
    def reload_config(self, new: Config, announce: Callable[[], None] | None = None) -> int:
        """Swap in a new config. Channels whose config changed or that are new are
        loaded beside the old ones first; on any failure the old state keeps serving.
        ``announce`` runs after they loaded, before the swap (the process group's log,
        write-ahead): when it raises, nothing is swapped."""
        with self._admin_lock, metrics.reload_outcome("config"):
            old = self._require_state()
            changed = [
                n
                for n, cc in new.channels.items()
                if cc.enabled and (n not in old.slots or old.slots[n].config != cc)
            ]
            fresh, failed = self._load_channels(new, changed, {})
            _announce_or_retire(announce, fresh.values())
            slots = {
                n: fresh.get(n) or old.slots[n]
                for n, cc in new.channels.items()
                if cc.enabled and (n in fresh or n in old.slots)
            }
            learned = _read_learned(new, old.learned)
            self._read_cold_sets(new, learned)
            self._state = _State(new, _assigner(new), slots, old.generation + 1, failed, learned)
            for n, slot in old.slots.items():
                if slots.get(n) is not slot:
                    slot.retire()
            metrics.CONFIG_GENERATION.set(self._state.generation)
            log.info("config_reloaded", generation=self._state.generation, reloaded=changed)
            _warn_tracing_change(self._config.tracing, new.tracing)
            return self._state.generation

    def reload_channels(
        self,
        names: Sequence[str],
        version: str | None,
        announce: Callable[[dict[str, str]], None] | None = None,
    ) -> dict[str, str]:
        """Load a new artifact version of ``names`` (all when empty) beside the old,
        warm it, swap atomically. If any fails, nothing is swapped. ``announce`` gets the
        loaded versions before the swap (like :meth:`reload_config`'s)."""
        with self._admin_lock, metrics.reload_outcome("artifacts"):
            state = self._require_state()
            names = list(names) or list(state.slots)
            for n in names:
                if n not in state.slots:
                    raise InvalidArgument(
                        "channels",
                        f"channel {n!r} is not loaded (loaded: {', '.join(state.slots)})",
                    )
            fresh: dict[str, _Slot] = {}
            try:
                plugins, _ = prepare(
                    state.config, names, blocked=self._blocked, skip_optional=False
                )
                for n in names:
                    fresh[n] = self._make_slot(state.config.channels[n], plugins, version)
            except PluginError as e:
                for s in fresh.values():
                    s.retire()
                log.error("channel_reload_failed", error=str(e))
                raise FailedPrecondition(f"reload failed, old version keeps serving: {e}") from e
            versions = {n: _safe_info(s.channel).version for n, s in fresh.items()}
            _announce_or_retire(announce and (lambda: announce(versions)), fresh.values())
            learned = _read_learned(state.config, state.learned)
            self._state = replace(state, slots={**state.slots, **fresh}, learned=learned)
            for n in names:
                state.slots[n].retire()
            return versions

    def reload_learned_weights(self, version: str | None = None) -> str | None:
        """Read the ``fusion.learned`` bundle under the artifacts root again, the current
        one or ``version`` (an ``s3://`` root's watcher pulled it, or another process
        announced it), and serve it; returns the version now served (None: none). A
        bundle that fails its checks is refused with an error log and the weights served
        before go on; when it was the ``version`` asked for, this raises
        :class:`ArtifactError` too."""
        with self._admin_lock, metrics.reload_outcome("artifacts"):
            state = self._require_state()
            learned = _read_learned(state.config, state.learned, version)
            self._read_cold_sets(state.config, learned)
            self._state = replace(state, learned=learned)
            served = learned.version if learned is not None else None
        if version is not None and served != version:
            raise ArtifactError(
                f"{LEARNED_BUNDLE}/{version}: not served (see learned_weights_refused)"
            )
        return served

    def upsert_items(self, items: Sequence[ItemRecord]) -> dict[str, int]:
        """Log, then apply (see ``_upsert``). A failed log write raises
        ``ResourceExhausted`` or ``Unavailable`` with the reason and changes nothing."""
        with self._admin_lock:
            state = self._require_state()
            done = self._upsert(state, items, log=True)
            compact_if_due(self.catalog, (s.channel for s in state.slots.values()))
            return done

    def delete_items(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Log, then apply, like :meth:`upsert_items`."""
        with self._admin_lock:
            state = self._require_state()
            done = self._delete(state, item_ids, log=True)
            compact_if_due(self.catalog, (s.channel for s in state.slots.values()))
            return done

    def _upsert(self, state: _State, items: Sequence[ItemRecord], *, log: bool) -> dict[str, int]:
        """The update log first (``log=True``; a failed write changes nothing), then
        the catalogue, then the channels: a channel's index never holds an item the
        catalogue lacks (vector_channel.py relies on it)."""
        if log:
            write_ahead(lambda: self.catalog.log_upserts(items))
        self.catalog.upsert(items, log=False)
        return {
            n: s.channel.upsert_items(items) if isinstance(s.channel, SupportsOnlineUpdates) else 0
            for n, s in state.slots.items()
        }

    def _delete(self, state: _State, item_ids: Sequence[str], *, log: bool) -> dict[str, int]:
        """The update log first, then the channels, then the catalogue (the same
        invariant as ``_upsert``)."""
        if log:
            write_ahead(lambda: self.catalog.log_deletes(item_ids))
        removed = {
            n: s.channel.delete_items(item_ids)
            if isinstance(s.channel, SupportsOnlineUpdates)
            else 0
            for n, s in state.slots.items()
        }
        self.catalog.delete(item_ids, log=False)
        return removed

    def sync_catalog(self) -> int:
        """Apply what other server processes appended to the catalogue's update log
        (``serve --processes N``: an admin call reaches one process), to the catalogue
        and every channel, in log order. Returns how many operations were applied."""
        with self._admin_lock, metrics.catalog_sync_round():
            state = self._state
            if state is None:
                return 0
            ops = self.catalog.read_new_updates()
            metrics.CATALOG_SYNC_OPERATIONS.inc(len(ops))
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
            compact_if_due(self.catalog, (s.channel for s in state.slots.values()))
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
    @contextlib.asynccontextmanager
    async def admit_in_line(self, remaining_s: float | None = None) -> AsyncIterator[None]:
        """Admit one request, waiting in line for a slot while the engine is at its bound
        and the line is short enough (``[overload] queue_ms``, :meth:`Admission.wait`),
        or raise :class:`Overloaded`: what the Recall servicer calls first, before it
        parses anything. ``remaining_s``: the request's deadline (it waits at most half
        of it). Pass ``admitted=True`` to :meth:`recall` inside."""
        self._watch_loop()
        await self.admission.wait(remaining_s)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.admission.leave(1, time.perf_counter() - t0)

    @contextlib.contextmanager
    def admitted(self, items: int) -> Iterator[int]:
        """Admit a BatchRecall of ``items`` requests as one: yields how many of its
        items may run at once (at least 1, at most the settings' batch width, as many as
        there is room for); pass ``admitted=True`` to :meth:`recall` for each item.
        Raises :class:`Overloaded` when there is no room at all."""
        self._watch_loop()
        width = self.admission.enter(self.overload.batch_width(items), at_least=1)
        try:
            yield width
        finally:
            self.admission.leave(width)

    def _watch_loop(self) -> None:
        """Admission adapts to the lag of the loop serving requests (when there is one)."""
        try:
            self.admission.watch(asyncio.get_running_loop())
        except RuntimeError:  # no running loop: nothing to watch
            pass

    async def recall(
        self, inp: RecallInput, timeout_s: float | None = None, *, admitted: bool = False
    ) -> RecallOutput:
        """Fan ``inp`` out to the plan's channels, each under its own timeout (counted
        from when that channel's call starts) inside the request deadline, and fuse what
        came back in time.

        Raises :class:`Overloaded` when the engine is at its bound on requests in flight
        and its line is too long to join, or the wait in it outlasts half the deadline
        (unless ``admitted``: a BatchRecall admitted as a whole), and
        :class:`DeadlineExceeded` without starting anything when ``timeout_s`` is
        already spent."""
        state = self._require_state()
        budget = (
            timeout_s if timeout_s is not None else state.config.server.request_timeout_ms / 1000
        )
        if budget <= 0:
            raise DeadlineExceeded("the deadline passed before the request started")
        run = self._traced_recall if tracing.ENABLED else self._recall
        if admitted:
            return await run(state, inp, budget)
        async with self.admit_in_line(budget):
            return await run(state, inp, budget)

    async def _traced_recall(self, state: _State, inp: RecallInput, budget: float) -> RecallOutput:
        """:meth:`_recall` in a ``recall.request`` span (each BatchRecall item gets its
        own under the RPC's span; docs/observability.md lists the spans)."""
        attributes = {"recall.request_id": inp.request_id, "recall.k": inp.k}
        with tracing.child_span("recall.request", attributes) as span:
            out = await self._recall(state, inp, budget)
            span.set_attributes(
                {
                    "recall.experiment": out.assignment.experiment,
                    "recall.variant": out.assignment.variant,
                    "recall.returned": len(out.fused.item_ids),
                }
            )
            return out

    async def _recall(self, state: _State, inp: RecallInput, budget: float) -> RecallOutput:
        t_end = time.perf_counter() + budget
        assignment = state.assigner.assign(inp.query.user_id)
        plan = assignment.plan
        weights, scouts, cold_quota = request_weights(
            plan, state.learned, inp.query, self.overload.fallback, self.catalog.item_ages_days
        )
        if inp.weight_override:
            weights.update(inp.weight_override)
            scouts = scouts.difference(inp.weight_override)
        # read at load for every plan with cold slots (_read_cold_sets)
        cold = (
            self.catalog.cold_items(plan.cold_max_age_days, None if scouts else COLD_SET_LIMIT)
            if scouts or cold_quota
            else None
        )
        # scouts asked for their new items only (serving/segment_weights.py)
        weights, scouts = plan_scouts(
            plan, weights, scouts, inp.k, None if cold is None else len(cold), cold_quota
        )
        calls, reports = self._plan_calls(
            state, inp.query, plan.channel_k, weights, t_end, scouts, cold
        )
        lists: list[RankedList] = []
        if calls:
            await self._fan_out(calls, inp.query)
            lists = self._collect(calls, reports, weights)
        fused = fuse(
            plan.fusion,
            lists,
            weights,
            inp.k,
            priority=tuple(state.config.channels),
            params=plan.fusion_params,
            cold_quota=cold_quota,
            # the plan's cold set when there is one: a set look-up per candidate, where
            # the catalogue searches its record (the two agree on catalogue items, and
            # only those reach fusion)
            cold=cold.mask
            if cold is not None
            else lambda ids: self.catalog.cold_mask(ids, plan.cold_max_age_days),
        )
        ordered = tuple(reports[n] for n in state.config.channels if n in reports)
        metrics.VARIANT_REQUESTS.labels(assignment.experiment, assignment.variant).inc()
        why = None
        if inp.explain:
            why = await self._explain(
                state, inp, assignment, lists, weights, cold_quota, fused, t_end
            )
        return RecallOutput(fused, ordered, assignment, inp.request_id, why)

    def _plan_calls(
        self,
        state: _State,
        query: Query,
        channel_k: Mapping[str, int],
        weights: Mapping[str, float],
        t_end: float,
        scouts: frozenset[str] = frozenset(),
        cold: ColdItems | None = None,
    ) -> tuple[list[_Call], dict[str, ChannelReport]]:
        """The channel calls of one request, each on an acquired slot, and the reports
        of the channels not called (skipped, not loaded, ``accepts`` raised).
        ``scouts``: channels asked for their items of ``cold`` only."""
        fallback = self.overload.fallback
        calls: list[_Call] = []
        reports: dict[str, ChannelReport] = {}
        for name in state.config.channels:
            w = weights.get(name, 0.0)
            if name not in state.slots:
                if name in weights and w > 0:
                    reports[name] = ChannelReport(
                        name, Status.SKIPPED, w, error=state.failed.get(name, "not loaded")
                    )
                continue
            reserve = w <= 0 and name == fallback
            if w <= 0 and not reserve:
                reports[name] = ChannelReport(name, Status.SKIPPED, w)
                continue
            slot = self._acquire(state, name)
            if slot is None:
                reports[name] = ChannelReport(name, Status.SKIPPED, w, error="not loaded")
                continue
            try:
                accepted = slot.channel.accepts(query)
            except Exception as e:  # noqa: BLE001 - the channel's fault, its report
                slot.release()
                reports[name] = _error_report(name, w, 0.0, e, "accepts")
                continue
            if not accepted:
                slot.release()
                reports[name] = ChannelReport(name, Status.SKIPPED, w)
                continue
            k_c = channel_k.get(name, slot.config.k)
            call = _Call(name, slot, k_c, w, slot.config.timeout_ms / 1000, t_end, reserve)
            if name in scouts:
                call.cold = cold
            calls.append(call)
        return calls, reports

    def _acquire(self, state: _State, name: str) -> _Slot | None:
        """``name``'s slot of ``state``, acquired; when a reload retired it since the
        request read ``state``, the current generation's (None: no longer loaded)."""
        slot: _Slot | None = state.slots.get(name)
        for _ in range(8):  # each failure means a reload swapped this channel meanwhile
            if slot is None or slot.acquire():
                return slot
            current = self._state
            slot = current.slots.get(name) if current is not None else None
        return None

    def _collect(
        self, calls: Sequence[_Call], reports: dict[str, ChannelReport], weights: dict[str, float]
    ) -> list[RankedList]:
        """Reports and lists of the finished calls. The fallback held in reserve (weight
        0 in the plan) is fused only when no other channel brought a candidate."""
        lists: list[RankedList] = []
        reserve: tuple[_Call, ChannelReport, Candidates | None] | None = None
        for call in calls:
            report, cands = self._report(call)
            if call.reserve:
                reserve = (call, report, cands)
                continue
            reports[call.name] = report
            if cands is not None and len(cands):
                lists.append(RankedList(call.name, cands.item_ids, cands.scores, cands.ranks))
        if reserve is not None:
            call, report, cands = reserve
            if call.held:
                reports[call.name] = report
            elif not lists and report.status == Status.OK:
                weights[call.name] = 1.0
                reports[call.name] = replace(report, weight=1.0)
                if cands is not None and len(cands):
                    lists.append(RankedList(call.name, cands.item_ids, cands.scores, cands.ranks))
            elif report.status == Status.OK:
                reports[call.name] = replace(
                    report,
                    status=Status.SKIPPED,
                    error=_HELD,
                )
            else:
                reports[call.name] = report
        if tracing.ENABLED:
            _end_call_spans(calls, reports)
        if not lists:
            self._raise_if_nothing_answered(calls, reports)
        return lists

    def _raise_if_nothing_answered(
        self, calls: Sequence[_Call], reports: Mapping[str, ChannelReport]
    ) -> None:
        """No channel answered: DEADLINE_EXCEEDED when every call ran out of time,
        RESOURCE_EXHAUSTED when some were refused by a full bulkhead; a request where a
        channel answered (even empty) or failed on its own is answered (fail-open)."""
        statuses = [reports[c.name].status for c in calls if c.name in reports]
        if not statuses or any(st not in (Status.TIMEOUT, Status.OVERLOADED) for st in statuses):
            return
        names = ", ".join(c.name for c in calls)
        if any(c.rejected for c in calls):
            raise Overloaded(
                f"overloaded: no channel had room for the request ({names})",
                self.admission.retry_after_ms,
            )
        raise DeadlineExceeded("no channel answered within the deadline: " + names)

    async def _fan_out(self, calls: Sequence[_Call], query: Query) -> None:
        """Start ``calls``, each on its channel's bulkhead (a call that finds it full is
        marked ``rejected`` at once), and return when each one has finished or passed its
        deadline (late ones are marked ``timed_out``: a call not started by then never
        starts, one running is abandoned and its result dropped). One event-loop
        wake-up per request (the last call to finish) and one timer per distinct
        deadline: the fan-out is on every request's path.

        The fallback held in reserve (weight 0) starts only when it may be needed: once
        the other calls are over with no candidate, or when half the others' shortest
        timeout has passed, or when the request has no more than the fallback's own
        timeout left (at once for a short deadline). When the others brought candidates
        first it never runs (``held``): its list would be dropped anyway, and most
        requests then cost one channel call less.

        Chains: the calls expected to take under ``chain_calls_under_s`` (by their
        channel's past calls of the same kind, :meth:`_Slot.expected`), when there are
        two or more, run one after another, quickest first, on one thread of the
        engine's chain pool, each still counted on its own bulkhead. Python code holds
        the GIL, so calls on threads of their own mostly take turns anyway, at the cost
        of a hand-off and of GIL contention each (a history request on the demo: 33
        context switches in process, against 8 with one thread); calls that wait
        off their thread's CPU for ``_CHAIN_WAIT_S`` or more (an encoder batch, the
        network, :meth:`_Slot.waits`) keep a thread each, so their waits overlap, as do
        calls of a kind not seen yet. A chained call not started a quarter of the way into
        its channel's timeout (the one before it is slow, or hung) is moved to a thread
        of its own then, so a hung channel delays the others of its chain by that much
        and no more. While the host has two cores or more per request in flight, quick
        calls whose time is mostly native work without the GIL (a search on a large
        index, an encoder) run on a thread each instead, when :func:`fan_out_pays`
        expects that to take at most three quarters of the chain's time: an idle host
        answers sooner, a busy one keeps the chains' lower CPU (``[overload]
        fan_out_when_idle``)."""
        loop = asyncio.get_running_loop()
        check = self.overload.check_output
        held = [c for c in calls if c.reserve]
        running = [c for c in calls if not c.reserve]
        text = bool(query.text.strip())
        for call in calls:
            call.kind = (text, call.cold is not None)
        now = time.perf_counter()
        # the latest start that leaves the fallback its own timeout, and no later than
        # half the others' shortest timeout: a slow channel that then times out finds
        # the fallback's answer ready instead of waiting for it after its timeout
        hedge = min((c.t_end - c.limit for c in held), default=0.0)
        if running:
            hedge = min(hedge, now + 0.5 * min(c.limit for c in running))
        if not running or hedge <= now:
            running, held = list(calls), []
        fan = _FanOut(loop, len(calls), len(held))
        chained: list[_Call] = []  # chained calls the event loop may still move
        rescue_at = math.inf

        def submit(batch: Sequence[_Call]) -> None:
            nonlocal chained, rescue_at
            chain, full = self._chain(batch)
            for call in full:
                fan.reject(call)
                call.slot.release()
            for call in chain:
                call.queued = time.perf_counter()
            if len(chain) > 1 and self._chains.try_submit(
                _run_chain, chain, self.catalog, query, fan, check
            ):
                chained += chain
                rescue_at = min(rescue_at, chain[0].queued + _RESCUE * min(c.limit for c in chain))
            else:
                for call in chain:  # no chain thread free: each on its own
                    if not call.slot.bulkhead.submit_reserved(
                        _run_call, call, self.catalog, query, fan, check
                    ):
                        fan.reject(call)
                        call.slot.release()
            for call in batch:
                if call in chain or call in full:
                    continue
                call.queued = time.perf_counter()
                if not call.slot.bulkhead.try_submit(
                    _run_call, call, self.catalog, query, fan, check
                ):
                    fan.reject(call)
                    call.slot.release()

        def rescue(late: bool = True) -> None:
            """Chained calls not started yet: each on a thread of its own now (those
            timed out: their rooms given back). ``late``: the chain is behind, and
            the call it is running is seen as slow."""
            nonlocal chained, rescue_at
            now = time.perf_counter()
            for call in chained:
                if not fan.claim(call):
                    if late and call.started and not call.finished:  # holds the chain up
                        call.slot.slow(call.kind, now - call.started)
                    continue  # running or done on the chain
                if call.timed_out:  # never runs: give its room back
                    call.slot.bulkhead.unreserve()
                    call.slot.release()
                elif not call.slot.bulkhead.submit_reserved(
                    _run_call, call, self.catalog, query, fan, check
                ):
                    fan.reject(call)
                    call.slot.release()
            chained, rescue_at = [], math.inf

        try:
            submit(running)
            while fan.pending:
                now = time.perf_counter()
                due = fan.time_out(running, now)
                if chained and now >= rescue_at:
                    rescue()
                    continue
                if held and (due is None or now >= hedge):
                    if due is None and _answered(running):
                        fan.hold(held)  # never runs: the others answered
                        for call in held:
                            call.slot.release()
                        break
                    fan.release_hold()
                    running += held
                    submit(held)
                    held = []
                    continue
                if due is None:
                    break
                if held:
                    due = min(due, hedge)
                due = min(due, rescue_at)
                fan.waiter = loop.create_future()
                timer = loop.call_later(due - now, _resolve, fan.waiter)
                try:
                    await fan.waiter
                finally:
                    timer.cancel()
                    fan.waiter = None
        except BaseException:
            if held:  # never submitted: nothing runs them, give their slots back
                fan.hold(held)
                for call in held:
                    call.slot.release()
            fan.time_out(running, float("inf"), cancelled=True)  # the request is gone
            if fan.trace is not None:
                for call in running:
                    if call.span is not None:
                        tracing.end_span(call.span, error="the request went away")
            raise
        finally:
            if chained:  # those the chain never reached (it hangs): their rooms back
                fan.time_out(chained, float("inf"), cancelled=True)
                rescue(late=False)

    def _chain(self, batch: Sequence[_Call]) -> tuple[list[_Call], list[_Call]]:
        """The calls of ``batch`` to run one after another on one thread (see
        :meth:`_fan_out`: quick, and waiting on little but their own CPU), quickest
        first, each with its room reserved on its own bulkhead, and those of them whose
        bulkhead was full (to be rejected); both empty when fewer than two are quick."""
        under = self.overload.chain_calls_under_s
        if under is None or len(batch) < 2:
            return [], []
        quick = [
            c
            for c in batch
            if c.slot.expected(c.kind) < under and c.slot.waits(c.kind) < _CHAIN_WAIT_S
        ]
        if len(quick) < 2 or self._fan_out_now(quick):
            return [], []
        chain, full = [], []
        for call in sorted(quick, key=lambda c: c.slot.expected(c.kind)):
            if call.slot.bulkhead.try_reserve():
                chain.append(call)
            else:
                full.append(call)
        return chain, full

    def _fan_out_now(self, quick: Sequence[_Call]) -> bool:
        """Whether ``quick`` calls run on a thread each rather than in a chain: the host
        has cores to spare for this request (its cores shared among the requests in
        flight on it, every serving process's: serving/host_load.py), and had lately
        (its average requests in flight at most half a request more than its cores
        allow: two closed-loop clients leave it empty between an answer and the next
        request, and a fan-out then competes with the request about to arrive), and
        :func:`fan_out_pays` says the calls would overlap enough."""
        if not self.overload.fan_out_when_idle:
            return False
        host = self.admission.host
        cores = self._cores // max(1, host.total())
        if cores < 2 or host.average() > self._cores / 2 + 0.5:
            return False
        calls = [(c.slot.expected(c.kind), c.slot.native(c.kind)) for c in quick]
        return fan_out_pays(calls, cores)

    @staticmethod
    def _report(call: _Call) -> tuple[ChannelReport, Candidates | None]:
        """The finished (or timed-out, or refused) ``call`` as a report, with metrics
        and logs."""
        name, slot = call.name, call.slot
        if call.held:
            return ChannelReport(name, Status.SKIPPED, call.weight, error=_HELD), None
        if call.rejected:
            metrics.CHANNEL_REJECTED.labels(name).inc()
            return ChannelReport(
                name,
                Status.OVERLOADED,
                call.weight,
                error=f"overloaded: {slot.bulkhead.limit} calls in flight (the channel's limit)",
            ), None
        ms = (call.ended - (call.started or call.queued)) * 1000
        if call.timed_out or _gave_up_at_deadline(call):
            if call.started:  # not quick any more: no chain waits on it next time
                slot.slow(call.kind, ms / 1000)
            metrics.CHANNEL_TIMEOUTS.labels(name).inc()
            metrics.CHANNEL_LATENCY.labels(name, "timeout").observe(ms / 1000)
            budget_ms = (call.deadline() - (call.started or call.queued)) * 1000
            log.warning(
                "channel_timeout",
                channel=name,
                timeout_ms=round(budget_ms, 1),
                started=bool(call.started),
            )
            return ChannelReport(
                name,
                Status.TIMEOUT,
                call.weight,
                ms,
                error=f"no answer within {budget_ms:.0f} ms"
                if call.started
                else f"not started within {budget_ms:.0f} ms",
            ), None
        if call.error is not None:
            return _error_report(name, call.weight, ms, call.error, "recall"), None
        cands = call.result
        assert cands is not None
        slot.latency_ok.observe(ms / 1000)
        slot.candidates.observe(len(cands))
        return ChannelReport(name, Status.OK, call.weight, ms, len(cands)), cands

    async def _explain(
        self,
        state: _State,
        inp: RecallInput,
        assignment: Assignment,
        lists: Sequence[RankedList],
        weights: Mapping[str, float],
        cold_quota: float,
        fused: Fused,
        t_end: float,
    ) -> Explanation:
        """``RecallRequest.explain``: the fusion arithmetic of ``fused`` and the
        evidence of the channels that returned its candidates (serving/explain.py), in
        what is left of the deadline, on slots held until the evidence is in."""
        plan = assignment.plan
        slots = [s for n in fused.provenance if (s := self._acquire(state, n)) is not None]
        evidence, errors = await channel_evidence(
            {s.config.name: s.channel for s in slots},
            inp.query,
            fused,
            t_end - time.perf_counter(),
            release=lambda: _release_all(slots),
        )
        return explain(
            plan.fusion,
            lists,
            weights,
            inp.k,
            fused,
            priority=tuple(state.config.channels),
            params=plan.fusion_params,
            cold_quota=cold_quota,
            cold=lambda ids: self.catalog.cold_mask(ids, plan.cold_max_age_days),
            evidence=evidence,
            channel_errors=errors,
        )


def _assigner(config: Config) -> Assigner:
    """The config's :class:`Assigner`, each variant it can assign counted from 0 on
    ``recall_variant_requests_total``."""
    assigner = Assigner(config)
    default = assigner.default
    metrics.variant_series(
        [(default.experiment, default.variant)]
        + [(e.name, v.name) for e in config.experiments if e.enabled for v in e.variants]
    )
    return assigner


def _warn_tracing_change(running: TracingConfig, reloaded: TracingConfig) -> None:
    """``[tracing]`` is read at start-up (server.start_tracing) and a reload does not
    apply it: say so, naming the keys that differ from the ones in force."""
    keys = [
        f.name for f in fields(running) if getattr(running, f.name) != getattr(reloaded, f.name)
    ]
    if keys:
        log.warning(
            "tracing_change_needs_restart",
            keys=keys,
            reason="[tracing] is read at start-up: the reloaded values apply after a restart",
        )


def _read_learned(
    config: Config, current: LearnedWeights | None, version: str | None = None
) -> LearnedWeights | None:
    """The fusion weights the build learned under ``config``'s artifacts (the current
    bundle, or ``version``; None: it wrote none). A bundle that fails its checks is
    refused with an error log, and ``current`` (what was served before: the plan's
    weights at start-up) goes on."""
    try:
        learned = load_learned_weights(config.artifacts_root, version)
    except (ArtifactError, ValueError) as e:
        log.error("learned_weights_refused", error=str(e), kept=current and current.version)
        return current
    if learned is None and config.plan.learned_weights:
        log.info(
            "learned_weights_absent",
            reason=f"no fusion weights learned by the build under {config.artifacts_root} "
            "(a build before they existed, or build --no-fusion-fit): the plan's weights serve",
        )
    elif learned is not None and (current is None or learned.version != current.version):
        log.info("learned_weights_loaded", **describe(learned))
    return learned


_HELD = "fallback held in reserve: other channels answered"


def _answered(calls: Sequence[_Call]) -> bool:
    """Whether one of the finished ``calls`` brought a candidate (before its output
    check failed it, a call's ``error`` is set instead of its result)."""
    return any(
        c.finished
        and not c.timed_out
        and c.error is None
        and c.result is not None
        and len(c.result)
        for c in calls
    )


def _release_all(slots: Iterable[_Slot]) -> None:
    for slot in slots:
        slot.release()


def _gave_up_at_deadline(call: _Call) -> bool:
    """A ``TimeoutError`` raised once the call's own deadline had passed: what code below
    the channel that honours ``CALL_DEADLINE`` (the encoders' micro-batcher) raises. The
    channel ran out of time, so it is TIMEOUT like any late call, not a channel error.
    (Up to 1 ms early: the waits it comes from round their timeout.)"""
    return isinstance(call.error, TimeoutError) and call.ended >= call.deadline() - 0.001


def _error_report(
    name: str, weight: float, ms: float, e: BaseException, hook: str
) -> ChannelReport:
    """A channel hook raised (or answered nonsense): that channel is ERROR for this
    request, never the request."""
    if isinstance(e, BadOutput):
        metrics.CHANNEL_BAD_OUTPUT.labels(name).inc()
        error = f"bad output: {e}"
    else:
        error = f"{hook} raised {type(e).__name__}: {e}"
    metrics.CHANNEL_ERRORS.labels(name).inc()
    metrics.CHANNEL_LATENCY.labels(name, "error").observe(ms / 1000)
    log.warning("channel_error", channel=name, error=error)
    return ChannelReport(name, Status.ERROR, weight, ms, error=error)


def _end_call_spans(calls: Sequence[_Call], reports: Mapping[str, ChannelReport]) -> None:
    """End each call's ``recall.channel`` span with its final report (a call that never
    started, refused or late, gets one now, from when it was handed over). Called on the
    event loop: a TIMEOUT call's span ends at the deadline even while its thread still
    runs the channel."""
    parent = None
    for call in calls:
        report = reports[call.name]
        span = call.span
        if span is None:
            parent = parent or tracing.parent_context()
            if parent is None:
                return  # this request is not sampled
            span = tracing.start_span(
                "recall.channel", parent, {"recall.channel": call.name}, call.queued
            )
        ok = report.status in (Status.OK, Status.SKIPPED)
        tracing.end_span(
            span,
            {
                "recall.channel.status": report.status.name,
                "recall.channel.latency_ms": report.latency_ms,
                "recall.channel.candidates": report.returned,
                "recall.channel.weight": report.weight,
                "recall.channel.k": call.k,
                "recall.channel.queue_ms": (call.started - call.queued) * 1000
                if call.started
                else 0.0,
            },
            error=None if ok else report.error or report.status.name,
            exception=None if ok else call.error,
        )


@dataclass(slots=True, eq=False)
class _Call:
    """One channel call of one request. The worker thread sets ``started`` and fills
    ``result`` or ``error`` and ``ended``; the event loop may mark it ``timed_out``
    first (or ``rejected`` when the bulkhead was full)."""

    name: str
    slot: _Slot
    k: int
    weight: float
    limit: float  # the channel's timeout, seconds, counted from ``started``
    t_end: float  # the request's deadline (perf_counter)
    reserve: bool = False  # the fallback, run at weight 0 in case nothing else answers
    # a scout: asked for its items of ``cold`` only, those its top ``k`` would hold
    cold: ColdItems | None = None
    queued: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    result: Candidates | None = None
    error: BaseException | None = None
    finished: bool = False
    timed_out: bool = False
    rejected: bool = False
    held: bool = False  # the fallback in reserve, never run: the others answered first
    hung: bool = False  # abandoned while running: still holds a bulkhead thread
    # chains: (with text, scout), what _Slot.expected is keyed by
    kind: tuple[bool, bool] = (False, False)
    # a chained call (run on a chain's thread, its room reserved on its own bulkhead):
    # ``claimed`` once the chain's thread, or the event loop (to run it on its own thread
    # after all, or to give its room back), took it over: exactly one of them does
    claimed: bool = False
    # tracing on: the call's span, started by its thread, ended by the event loop
    span: Any = None
    scope: object = None  # the token that made ``span`` current on the worker thread

    def deadline(self) -> float:
        """The channel's timeout from its start (from its hand-over while it has not
        started), within the request's deadline."""
        return min(self.t_end, (self.started or self.queued) + self.limit)


class _FanOut:
    """Bookkeeping of one request's calls in flight, shared by the event loop and the
    worker threads: ``pending`` counts calls neither finished nor timed out (under
    ``lock``); the call that brings it to zero wakes the loop once."""

    __slots__ = ("loop", "lock", "pending", "holding", "waiter", "trace")

    def __init__(self, loop: asyncio.AbstractEventLoop, calls: int, holding: int = 0) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.pending = calls
        self.holding = holding  # calls (the reserve) pending but not handed over yet
        self.waiter: asyncio.Future | None = None
        # the request's trace context, handed to the worker threads (which do not
        # inherit the loop's context); None: tracing off or this request not sampled
        self.trace = tracing.parent_context() if tracing.ENABLED else None

    def start(self, call: _Call) -> bool:
        """Worker thread: mark ``call`` started, or False when its deadline passed (or
        the request went away) before it could start: then it never runs."""
        now = time.perf_counter()
        with self.lock:
            if call.timed_out:
                return False
            call.started = now
            if self.trace is not None:  # set under the lock: the loop may end it early
                call.span = tracing.start_span(
                    "recall.channel", self.trace, {"recall.channel": call.name}, now
                )
        if call.span is not None:  # current on this thread while the channel runs
            call.scope = tracing.activate(call.span)
        return True

    def claim(self, call: _Call) -> bool:
        """A chained ``call``: True for the first to take it over (the chain's thread to
        run it, or the event loop), False for the other."""
        with self.lock:
            if call.claimed:
                return False
            call.claimed = True
            return True

    def hold(self, calls: Sequence[_Call]) -> None:
        """Event loop: ``calls`` (the fallback in reserve) will not run."""
        with self.lock:
            for call in calls:
                call.held, call.finished = True, True
                self.pending -= 1
            self.holding = 0

    def release_hold(self) -> None:
        """Event loop: the held calls are about to be handed over."""
        with self.lock:
            self.holding = 0

    def reject(self, call: _Call) -> None:
        """Event loop: the bulkhead was full; the call never runs."""
        with self.lock:
            call.rejected, call.finished = True, True
            self.pending -= 1

    def finish(self, call: _Call, result: Candidates | None, error: BaseException | None) -> None:
        """Worker thread: record the outcome unless the call already timed out."""
        ended = time.perf_counter()
        if call.scope is not None:
            tracing.deactivate(call.scope)
            call.scope = None
        with self.lock:
            if call.timed_out:
                late = call.hung
                call.hung = False
            else:
                late = False
                call.result, call.error, call.ended, call.finished = result, error, ended, True
                self.pending -= 1
                # the last call to finish wakes the loop; so does the last of the others
                # while the fallback is still held back (it then decides about it)
                last = self.pending == self.holding
        if call.timed_out:
            if late:
                metrics.CHANNEL_HUNG.labels(call.name).dec()
                log.warning(
                    "channel_call_finished_late",
                    channel=call.name,
                    ms=round((ended - call.started) * 1000, 1),
                    timeout_ms=round((call.deadline() - call.started) * 1000, 1),
                )
            return
        if last:
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def time_out(
        self, calls: Sequence[_Call], now: float, *, cancelled: bool = False
    ) -> float | None:
        """Event loop: mark the unfinished calls whose deadline is ``now`` or earlier as
        timed out (a running one is abandoned: counted as hung until it returns); return
        the next deadline, or None when nothing is pending."""
        due = None
        with self.lock:
            for call in calls:
                if call.finished or call.timed_out:
                    continue
                deadline = call.deadline()
                if deadline <= now:
                    call.timed_out, call.ended = True, min(now, time.perf_counter())
                    self.pending -= 1
                    if call.started and not cancelled:
                        call.hung = True
                        metrics.CHANNEL_ABANDONED.labels(call.name).inc()
                        metrics.CHANNEL_HUNG.labels(call.name).inc()
                elif due is None or deadline < due:
                    due = deadline
        return due


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def scout_answer(channel: Channel, query: Query, k: int, cold: ColdItems) -> Candidates:
    """A scout's answer (serving/segment_weights.py): items of ``cold`` with the rank
    each holds in the channel's full ranking (``Candidates.ranks``). From
    ``recall_cold`` when the channel has it (``RecallsColdItems``) and answers (the
    caller drops those ranked past ``k``: :func:`_within`), else the cold items of its
    ``recall`` at depth ``k``."""
    if isinstance(channel, RecallsColdItems):
        answer = channel.recall_cold(query, k, cold)
        if answer is not None:
            return answer
    answer = channel.recall(query, k)
    keep = [i for i, item in enumerate(answer.item_ids) if item in cold]
    scores = np.asarray(answer.scores)
    ranks = np.asarray(keep, dtype=np.int64) + 1  # where they stood in the full answer
    return Candidates([answer.item_ids[i] for i in keep], scores[keep], ranks)


#: A chained call not started this share of the way into its channel's timeout is
#: moved to a thread of its own (Engine._fan_out).
_RESCUE = 0.25
#: A call whose fastest run waited this long or more off its thread's CPU (the network,
#: an encoder batch, ONNX Runtime's own threads) keeps a thread of its own, however
#: quick: in a chain the calls behind it would wait with it, where on threads of their
#: own the waits overlap (Engine._chain).
_CHAIN_WAIT_S = 0.002
# fan_out_pays: what handing a call to a thread of its own costs in wall time (a wake-up
# and a GIL hand-over), and the share of the chain's time a fan-out must be expected to
# take at most (it costs more CPU: 1M items, one client, 7.8 -> 8.5 ms per request)
_HAND_OFF_S = 0.0001
_FAN_OUT_SHARE = 0.75


def fan_out_pays(calls: Sequence[tuple[float, float]], cores: int) -> bool:
    """Whether quick calls, given as (seconds, native seconds) each (:meth:`_Slot.expected`,
    :meth:`_Slot.native`), finish sooner on a thread each than one after another on
    ``cores`` cores. In a chain they take the sum of their times. On threads of their
    own, their Python parts still take turns on the GIL, their native parts overlap
    over the cores, and none ends before the longest call: the fan-out takes about the
    largest of those three, plus a hand-off per call. It pays when that is at most
    :data:`_FAN_OUT_SHARE` of the chain's time; never on one core, nor when the calls'
    time is nearly all Python (the demo's history requests), where a fan-out only adds
    hand-offs and GIL contention."""
    if cores < 2 or len(calls) < 2:
        return False
    chained = sum(t for t, _ in calls)
    if not math.isfinite(chained):
        return False
    python = sum(t - min(t, n) for t, n in calls)
    longest = max(t for t, _ in calls)
    fanned = max(longest, python, chained / cores) + _HAND_OFF_S * len(calls)
    return fanned <= _FAN_OUT_SHARE * chained


def _run_call(call: _Call, catalog: Catalog, query: Query, fan: _FanOut, check: bool) -> None:
    """The worker-thread side of a channel call: never started when its deadline passed
    first; the deadline is visible to the code below the channel (``CALL_DEADLINE``)."""
    if not fan.start(call):
        call.slot.release()
        return
    _run_started(call, catalog, query, fan, check, call.slot.bulkhead.release_current)


def _run_chain(
    calls: Sequence[_Call], catalog: Catalog, query: Query, fan: _FanOut, check: bool
) -> None:
    """A chain's thread: ``calls`` one after another, each unless the event loop took
    it over first (to run on its own thread, or because the request is over), or its
    deadline passed before its turn; each gives back the room reserved on its own
    bulkhead when it is done."""
    for call in calls:
        if not fan.claim(call):
            continue
        if not fan.start(call):
            call.slot.bulkhead.unreserve()
            call.slot.release()
            continue
        _run_started(call, catalog, query, fan, check, call.slot.bulkhead.unreserve)


def _run_started(
    call: _Call,
    catalog: Catalog,
    query: Query,
    fan: _FanOut,
    check: bool,
    give_back: Callable[[], None],
) -> None:
    """Run the started ``call``; ``give_back`` returns its bulkhead room before the
    request can see the outcome."""
    token = CALL_DEADLINE.set(call.deadline())
    cpu = time.thread_time()
    native = native_time.spent()
    try:
        cands = _guarded(call.slot, catalog, query, call.k, check, call.cold)
    except BaseException as e:  # noqa: BLE001 - reported by the event loop
        give_back()
        fan.finish(call, None, e)
    else:
        call.slot.took(
            call.kind,
            time.perf_counter() - call.started,
            time.thread_time() - cpu,
            native_time.spent() - native,
        )
        give_back()
        fan.finish(call, cands, None)
    finally:
        CALL_DEADLINE.reset(token)


def _guarded(
    slot: _Slot,
    catalog: Catalog,
    query: Query,
    k: int,
    check: bool,
    cold: ColdItems | None = None,
) -> Candidates:
    """Run the channel, release the slot, check the answer (:func:`check_answer`:
    finite scores, one per id, string ids, no duplicates from a channel that vouches
    for its output), then, unless the channel vouches for it (``trusted_output``),
    enforce the rest of the contract (known, allowed, unique ids, at most k) by repair.
    With ``cold``, the channel scouts: :func:`scout_answer`."""
    channel = slot.channel
    try:
        if cold is None:
            answer = channel.recall(query, k)
        else:
            answer = scout_answer(channel, query, k, cold)
    finally:
        slot.release()
    trusted = channel.trusted_output
    # an untrusted answer is cut to k after the repair below drops what is not allowed
    cands = check_answer(answer, k if trusted else None, unique=trusted) if check else answer
    if cold is not None:
        cands = _within(cands, k)
    if trusted:
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
    ranks = None if cands.ranks is None else np.asarray(cands.ranks)[keep]
    return Candidates([ids[i] for i in keep], scores[keep], ranks)


def _within(cands: Candidates, k: int) -> Candidates:
    """``cands`` without the items ranked past ``k`` (``Candidates.ranks`` increase)."""
    if cands.ranks is None:
        return cands
    n = int(np.searchsorted(cands.ranks, k, side="right"))
    if n == len(cands):
        return cands
    return Candidates(cands.item_ids[:n], np.asarray(cands.scores)[:n], cands.ranks[:n])


def _announce_or_retire(announce: Callable[[], None] | None, fresh: Iterable[_Slot]) -> None:
    """Run ``announce``; when it raises, close the freshly loaded slots (never swapped in)."""
    if announce is None:
        return
    try:
        announce()
    except BaseException:
        for slot in fresh:
            slot.retire()
        raise


def _safe_info(channel: Channel) -> ChannelInfo:
    try:
        return channel.info()
    except Exception:  # noqa: BLE001
        log.exception("channel_info_failed", channel=channel.ctx.name)
        return ChannelInfo()


def _open_catalog(config: Config) -> Catalog:
    folder = config.artifacts_root / "catalog"
    if Catalog.exists(folder):
        return Catalog.load(
            folder,
            compact_records=config.server.catalog_compact_records,
            compact_bytes=config.server.catalog_compact_bytes,
        )
    log.warning("catalog_missing", folder=str(folder))
    return Catalog(folder=folder)

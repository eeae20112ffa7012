"""A fault-injection channel plugin, registered as a REAL entry point (see
:func:`install`): it hangs, sleeps, raises in any hook, answers NaN or infinite scores,
duplicates, scores not parallel to its ids, ids that are not strings, or leaks threads.

Tests import this module as ``tests.fault_plugins`` and the entry points name the same
module, so a test and the channels the engine loads share :data:`CONTROL` (faults that
change at run time, events for deterministic interleavings) and :data:`INSTANCES`.

``params``: ``items`` (answered best first, scores 1/rank), ``fault`` (one of
:data:`FAULTS`, default ``none``), ``sleep_s`` (``sleep``), ``spin_s`` (``spin``),
``rows`` and ``searches`` (``search``), ``hook`` (where ``raise``
raises: ``accepts``, ``recall``, ``recall_batch``, or ``explain`` for ``fault_explain``).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from recall_engine.sdk.channel import Candidates, Channel, ChannelContext, ChannelInfo, Query
from recall_engine.sdk.types import ColdItems, Evidence

FAULTS = (
    "none",
    "hang",  # blocks until CONTROL.release is set (bounded: HANG_LIMIT_S)
    "sleep",  # sleeps params.sleep_s, then answers
    "spin",  # keeps its thread's CPU busy for params.spin_s, then answers
    "search",  # params.searches exact searches (usearch, without the GIL) of a real
    # VectorIndex of params.rows random vectors, then answers
    "raise",  # raises in params.hook
    "nan",
    "inf",
    "duplicates",
    "mismatch",  # more scores than ids
    "not_strings",  # integer ids
    "not_candidates",  # returns a plain list
    "leak",  # starts a thread per call that outlives it (bounded: HANG_LIMIT_S)
    "block_accepts",  # accepts() signals CONTROL.entered, waits for CONTROL.proceed
    "encoder_deadline",  # waits on a real MicroBatcher whose batch hangs, up to the
    # engine's call deadline (CALL_DEADLINE): the wait ends with TimeoutError
    "timeout_error",  # raises TimeoutError at once (a channel's own bug, not a deadline)
    "bad_ranks",  # fault_cold only: recall_cold's ranks decrease
    "explain_hang",  # fault_explain only: explain blocks until CONTROL.release (bounded)
)
HANG_LIMIT_S = 30.0  # no fault outlives a test run


@dataclass
class Control:
    """Run-time switches shared by the tests and the loaded channels."""

    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    proceed: threading.Event = field(default_factory=threading.Event)
    faults: dict[str, str] = field(default_factory=dict)  # channel name -> fault override
    leaked: list[threading.Thread] = field(default_factory=list)

    def reset(self) -> None:
        self.release.set()  # let whatever still hangs go
        self.proceed.set()
        for t in self.leaked:
            t.join(HANG_LIMIT_S)
        self.release, self.entered, self.proceed = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        self.faults.clear()
        self.leaked.clear()
        INSTANCES.clear()


CONTROL = Control()
INSTANCES: list[FaultChannel] = []
_serial = itertools.count(1)


class FaultChannel(Channel):
    """Vouches for its output (``trusted_output``), as the built-in channels do."""

    trusted_output = True

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.items = [str(i) for i in ctx.params.get("items", [])]
        self.serial = next(_serial)
        self.calls = 0
        self.threads: list[str] = []  # the thread each recall ran on, in call order
        self.idents: list[int] = []  # and its identity
        self.closes = 0
        self.calls_after_close = 0
        self._lock = threading.Lock()
        self._batcher = None
        self._search = None
        INSTANCES.append(self)

    @property
    def fault(self) -> str:
        return CONTROL.faults.get(self.ctx.name, str(self.ctx.params.get("fault", "none")))

    def warmup(self) -> None:
        if self.fault == "search":
            self._index()  # built at load, not inside a timed call

    def accepts(self, query: Query) -> bool:
        self._check_hook("accepts")
        if self.fault == "block_accepts":
            CONTROL.entered.set()
            CONTROL.proceed.wait(HANG_LIMIT_S)
        return True

    def recall(self, query: Query, k: int) -> Candidates:
        with self._lock:
            self.calls += 1
            self.threads.append(threading.current_thread().name)
            self.idents.append(threading.get_ident())
            if self.closes:
                self.calls_after_close += 1
        self._check_hook("recall")
        return self._answer(k)

    def recall_batch(self, queries, k: int) -> list[Candidates]:
        self._check_hook("recall_batch")
        return [self.recall(q, k) for q in queries]

    def info(self) -> ChannelInfo:
        return ChannelInfo(version=f"fault-{self.serial}", item_count=len(self.items))

    def close(self) -> None:
        with self._lock:
            self.closes += 1
            if self._batcher is not None:
                self._batcher.close()

    def _index(self):
        """The ``search`` fault's index (built at its first call) and query vector."""
        from recall_engine.runtime.index import VectorIndex

        with self._lock:
            if self._search is None:
                rows = int(self.ctx.params.get("rows", 20_000))
                rng = np.random.default_rng(self.serial)
                vectors = rng.standard_normal((rows, 64)).astype(np.float32)
                index = VectorIndex(64, exact_below=rows + 1, threads=1)
                index.add([f"v{n}" for n in range(rows)], vectors)
                self._search = (index, vectors[0])
            return self._search

    def _check_hook(self, hook: str) -> None:
        if self.fault == "raise" and self.ctx.params.get("hook", "recall") == hook:
            raise RuntimeError(f"injected fault in {hook}")

    def _answer(self, k: int) -> Candidates:
        fault = self.fault
        items = self.items[:k]
        scores = np.asarray([1.0 / (i + 1) for i in range(len(items))], np.float32)
        if fault == "hang":
            CONTROL.release.wait(HANG_LIMIT_S)
        elif fault == "sleep":
            time.sleep(float(self.ctx.params.get("sleep_s", 0.05)))
        elif fault == "spin":
            cpu_end = time.thread_time() + float(self.ctx.params.get("spin_s", 0.005))
            while time.thread_time() < cpu_end:
                pass
        elif fault == "search":
            index, query = self._index()
            for _ in range(int(self.ctx.params.get("searches", 1))):
                index.search(query, 10)
        elif fault == "nan":
            scores[len(scores) // 2] = np.nan
        elif fault == "inf":
            scores[0] = np.inf
        elif fault == "duplicates":
            items = items + items[:1]
            scores = np.append(scores, np.float32(0.0))
        elif fault == "mismatch":
            scores = np.append(scores, np.float32(0.0))
        elif fault == "not_strings":
            return Candidates(list(range(len(items))), scores)
        elif fault == "not_candidates":
            return list(zip(items, scores.tolist(), strict=True))  # type: ignore[return-value]
        elif fault == "encoder_deadline":
            from recall_engine.runtime.encoders import CALL_DEADLINE, MicroBatcher

            with self._lock:
                if self._batcher is None:
                    self._batcher = MicroBatcher(_hung_batch, max_batch=4, name=self.ctx.name)
            # give up just before the engine's own timer would (the race the engine must
            # classify either way): the batcher raises TimeoutError at the deadline
            deadline = CALL_DEADLINE.get()
            assert deadline is not None, "the engine sets CALL_DEADLINE for channel calls"
            self._batcher.submit(1, timeout=max(0.0, deadline - time.perf_counter() - 0.0005))
        elif fault == "timeout_error":
            raise TimeoutError("the channel's own socket timed out")
        elif fault == "leak":
            t = threading.Thread(target=CONTROL.release.wait, args=(HANG_LIMIT_S,), daemon=True)
            t.start()
            CONTROL.leaked.append(t)
        return Candidates(items, scores)


def _hung_batch(items: list[int]) -> list[int]:
    CONTROL.release.wait(HANG_LIMIT_S)
    return items


class ColdFaultChannel(FaultChannel):
    """The same, with ``recall_cold`` (``RecallsColdItems``): the cold items of
    ``items`` at their 1-based positions there; fault ``bad_ranks`` gives them in
    decreasing order."""

    def recall_cold(self, query: Query, k: int, cold: ColdItems) -> Candidates:
        found = [(n + 1, item) for n, item in enumerate(self.items) if item in cold][:k]
        ranks = np.asarray([r for r, _ in found], dtype=np.int64)
        if self.fault == "bad_ranks":
            ranks = ranks[::-1].copy()
        scores = np.asarray([1.0 / r for r, _ in found], np.float32)
        return Candidates([item for _, item in found], scores, ranks)


class ExplainingFaultChannel(FaultChannel):
    """The same, with ``explain`` (``Explainable``): each item's 1-based position in
    ``items`` as its popularity rank. Faults of its own: ``raise`` with ``hook =
    "explain"`` raises there; ``explain_hang`` blocks there until CONTROL.release
    (bounded). ``explained`` counts the calls that reached the channel."""

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.explained = 0

    def explain(self, query: Query, item_ids) -> dict[str, Evidence]:
        with self._lock:
            self.explained += 1
        self._check_hook("explain")
        if self.fault == "explain_hang":
            CONTROL.release.wait(HANG_LIMIT_S)
        position = {item: n + 1 for n, item in enumerate(self.items)}
        return {i: Evidence(popularity_rank=position[i]) for i in item_ids if i in position}


class UntrustedFaultChannel(FaultChannel):
    """The same, without ``trusted_output``: the engine repairs what it can."""

    trusted_output = False


ENTRY_POINTS = """\
[recall_engine.channels]
fault = tests.fault_plugins:FaultChannel
fault_untrusted = tests.fault_plugins:UntrustedFaultChannel
fault_cold = tests.fault_plugins:ColdFaultChannel
fault_explain = tests.fault_plugins:ExplainingFaultChannel
"""


def install(site: Path) -> Path:
    """Register the plugins as a real distribution: a ``.dist-info`` under ``site``,
    which the caller puts on ``sys.path``."""
    info = site / "recall_engine_fault_plugins-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: recall_engine_fault_plugins\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


# -- pytest fixtures (import them into a test module to use them) ---------------------


@pytest.fixture(scope="session")
def fault_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The fault plugins installed as a real distribution for the whole session."""
    site = install(tmp_path_factory.mktemp("fault_site"))
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))


@pytest.fixture()
def faults(fault_site: Path) -> Iterator[Control]:
    """:data:`CONTROL`, reset after the test (whatever hangs is released)."""
    yield CONTROL
    CONTROL.reset()

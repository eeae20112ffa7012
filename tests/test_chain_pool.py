"""The engine's chain pool (serving/chain_pool.py): chains run in arrival order on the
threads asked for, a thread stuck in one chain stops counting so the next chain is not
stuck behind it, the extra threads end once nothing is stuck, and the bound on threads
holds. Real threads; the engine-level behaviour with a hung channel is in
tests/test_chains.py, and the setting through a real gRPC server below."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from recall_engine._proto import recall_pb2
from recall_engine.config import ConfigError
from recall_engine.serving.chain_pool import ChainPool
from tests.fault_plugins import INSTANCES, fault_site, faults  # noqa: F401 - fixtures
from tests.harness import catalog_of, make_config, serve
from tests.helpers import wait_until


def test_chains_run_in_order_on_the_one_thread_asked_for():
    pool = ChainPool(1, 8, stall_s=10.0)
    ran: list[tuple[int, int]] = []
    done = threading.Event()

    def chain(n: int) -> None:
        time.sleep(0.001)  # lets the GIL go: a pool that starts threads would use them
        ran.append((n, threading.get_ident()))
        if n == 39:
            done.set()

    try:
        for n in range(40):
            assert pool.try_submit(chain, n)
        assert done.wait(10)
        assert [n for n, _ in ran] == list(range(40))
        assert len({ident for _, ident in ran}) == 1
        assert pool.started == 1
    finally:
        pool.close()


def test_a_second_chain_waits_for_a_busy_thread_that_is_not_stuck():
    pool = ChainPool(1, 8, stall_s=10.0)
    release, second = threading.Event(), threading.Event()
    idents: list[int] = []
    try:
        pool.try_submit(lambda: (idents.append(threading.get_ident()), release.wait(10)))
        assert wait_until(lambda: len(idents) == 1)
        pool.try_submit(lambda: (idents.append(threading.get_ident()), second.set()))
        assert not second.wait(0.2)  # queued behind the busy thread, no new one
        assert pool.started == 1
        release.set()
        assert second.wait(10)
        assert idents[0] == idents[1]
    finally:
        release.set()
        pool.close()


def test_a_thread_stuck_in_a_chain_stops_counting_and_ends_extra_threads_after():
    pool = ChainPool(1, 8, stall_s=0.05)
    hung, ran = threading.Event(), threading.Event()
    idents: list[int] = []
    try:
        pool.try_submit(lambda: (idents.append(threading.get_ident()), hung.wait(10)))
        assert wait_until(lambda: len(idents) == 1)
        time.sleep(0.1)  # past stall_s: the thread is stuck
        pool.try_submit(lambda: (idents.append(threading.get_ident()), ran.set()))
        assert ran.wait(5)  # did not wait for the hung chain
        assert idents[1] != idents[0]
        assert pool.started == 2
        hung.set()  # the stuck thread comes back: one more than asked for, it ends
        assert wait_until(lambda: pool.started == 1)
        again = threading.Event()
        pool.try_submit(again.set)
        assert again.wait(5)
        assert pool.started == 1
    finally:
        hung.set()
        pool.close()


def test_when_every_thread_is_stuck_and_the_limit_is_reached_a_chain_is_refused():
    pool = ChainPool(1, 2, stall_s=0.02)
    hung = threading.Event()
    started = threading.Semaphore(0)

    def stuck() -> None:
        started.release()
        hung.wait(10)

    try:
        assert pool.try_submit(stuck)
        assert started.acquire(timeout=5)
        time.sleep(0.05)
        assert pool.try_submit(stuck)  # a second thread, the limit
        assert started.acquire(timeout=5)
        time.sleep(0.05)
        assert not pool.try_submit(stuck)  # both stuck, no room for a third
        assert pool.started == 2
        hung.set()
        ok = threading.Event()
        assert wait_until(lambda: pool.try_submit(ok.set))
        assert ok.wait(5)
    finally:
        hung.set()
        pool.close()


def test_a_chain_that_raises_leaves_its_thread_serving_and_close_refuses_new_ones():
    pool = ChainPool(1, 4, stall_s=10.0)
    ok = threading.Event()

    def boom() -> None:
        raise RuntimeError("a chain's bug")

    pool.try_submit(boom)
    pool.try_submit(ok.set)
    assert ok.wait(5)
    assert pool.started == 1
    pool.close()
    assert not pool.try_submit(ok.set)
    assert wait_until(lambda: pool.started == 0)


def test_a_thread_that_cannot_start_refuses_the_chain_and_counts_nothing(monkeypatch):
    """The host is out of threads: the chain is refused (its calls then run some other
    way) and the pool's counts are as before, so the next chain starts a thread."""
    pool = ChainPool(1, 4, stall_s=10.0)
    start = threading.Thread.start

    def refuse(self):
        raise RuntimeError("can't start new thread")

    try:
        monkeypatch.setattr(threading.Thread, "start", refuse)
        assert not pool.try_submit(lambda: None)
        assert pool.started == 0
        monkeypatch.setattr(threading.Thread, "start", start)
        ran = threading.Event()
        assert pool.try_submit(ran.set)
        assert ran.wait(5) and pool.started == 1
    finally:
        pool.close()


@pytest.mark.parametrize("threads, limit, stall", [(0, 4, 1.0), (3, 2, 1.0), (1, 4, 0.0)])
def test_bad_pool_sizes_are_refused(threads, limit, stall):
    with pytest.raises(ValueError, match="chain pool"):
        ChainPool(threads, limit, stall)


def channel(name: str):
    return next(c for c in reversed(INSTANCES) if c.ctx.name == name)


def _config(tmp_path, chain_threads):
    sleepy = {"fault": "sleep", "sleep_s": 0.001}  # quick, and lets the GIL go
    # Deadlines far past anything the calls need: what is tested is which threads run
    # them. With the defaults (100 ms a call), a host that stalls the process for a few
    # hundred ms (seen once in a CI run) timed out calls that had not started yet.
    slow_ok = {"timeout_ms": 5000}
    tables = {
        "popular": {"plugin": "fault", **slow_ok, "params": {"items": ["i9", "i10"], **sleepy}},
        "a": {"plugin": "fault", **slow_ok, "params": {"items": ["i1"], **sleepy}},
        "b": {"plugin": "fault", **slow_ok, "params": {"items": ["i2"], **sleepy}},
    }
    data = {
        "server": {"request_timeout_ms": 10000},
        "channels": tables,
        "plan": {"weights": {"popular": 0.1, "a": 1.0, "b": 1.0}},
        "overload": {"chain_threads": chain_threads, "max_in_flight": 16, "min_in_flight": 16},
    }
    return make_config(data, tmp_path)


@pytest.mark.usefixtures("faults")
@pytest.mark.parametrize("chain_threads", [1, 0])
def test_the_engine_runs_chains_on_the_threads_the_config_asks_for(tmp_path, chain_threads):
    """16 requests at once, each with two quick calls chained: one thread for all of
    them by default; ``chain_threads = 0`` gives each chain a thread of its own."""
    with serve(_config(tmp_path, chain_threads), catalog_of([f"i{n}" for n in range(1, 13)])) as s:
        for n in range(5):  # learn that the calls are quick
            s.stub.Recall(recall_pb2.RecallRequest(user_id=f"w{n}", k=5), timeout=5)

        def call(n: int):
            return s.stub.Recall(recall_pb2.RecallRequest(user_id=f"u{n}", k=5), timeout=10)

        calls = {name: len(channel(name).idents) for name in ("a", "b")}
        with ThreadPoolExecutor(16) as ex:
            for _ in range(3):
                answers = list(ex.map(call, range(16)))
                assert all({"i1", "i2"} <= set(a.item_ids) for a in answers)
        chained = {
            ident
            for name in ("a", "b")
            for ident, thread in zip(
                channel(name).idents[calls[name] :],
                channel(name).threads[calls[name] :],
                strict=True,
            )
            if thread == "channel-chains"
        }
    assert len(chained) >= 1
    if chain_threads == 1:
        assert len(chained) == 1
    else:
        assert len(chained) > 1


def test_a_negative_chain_threads_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="overload.chain_threads"):
        _config(tmp_path, -1)

"""MicroBatcher lifecycle: it survives cancelled futures, never runs or waits past its
caller's deadline, and a dead batching thread is detected and restarted instead of
leaving callers hanging."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import REGISTRY

from recall_engine.runtime.encoders import CALL_DEADLINE, BatcherDied, EncoderStats, MicroBatcher


class Gated:
    """``fn`` for a batcher: records every batch; the first batch waits for ``open``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.entered.set()
            self.open.wait(10)
        return [i * 10 for i in items]


def wait_until(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_a_cancelled_future_is_dropped_and_the_batcher_keeps_serving():
    fn = Gated()
    with MicroBatcher(fn, max_batch=8, max_delay_ms=1, name="t_cancel") as mb:
        first = mb.submit_future(1)
        assert fn.entered.wait(10)  # the thread is busy with [1]
        cancelled = mb.submit_future(2)
        kept = mb.submit_future(3)
        assert cancelled.cancel()
        fn.open.set()
        assert first.result(10) == 10 and kept.result(10) == 30
        assert mb.submit(4, timeout=10) == 40  # still alive
        assert mb.alive
    assert [2] not in fn.batches and all(2 not in b for b in fn.batches)


def test_a_caller_that_times_out_withdraws_its_item_before_it_runs():
    fn = Gated()
    expired = REGISTRY.get_sample_value("recall_encoder_expired_total", {"encoder": "t_dl"}) or 0
    with MicroBatcher(fn, max_batch=8, max_delay_ms=1, name="t_dl") as mb:
        mb.submit_future(1)
        assert fn.entered.wait(10)
        with pytest.raises(TimeoutError):  # while the batch ahead is still running:
            mb.submit(2, timeout=0.05)  # the caller's deadline, not the batch's
        assert not fn.open.is_set()
        fn.open.set()
        assert mb.submit(3, timeout=10) == 30
    assert all(2 not in b for b in fn.batches)
    after = REGISTRY.get_sample_value("recall_encoder_expired_total", {"encoder": "t_dl"})
    assert after == expired + 1


def test_the_engines_call_deadline_bounds_a_submit_without_timeout():
    fn = Gated()
    with MicroBatcher(fn, max_batch=8, max_delay_ms=1, name="t_ctx") as mb:
        mb.submit_future(1)
        assert fn.entered.wait(10)
        token = CALL_DEADLINE.set(time.perf_counter() + 0.05)
        try:
            with pytest.raises(TimeoutError):
                mb.submit(2)
        finally:
            CALL_DEADLINE.reset(token)
        fn.open.set()
    assert all(2 not in b for b in fn.batches)


def test_an_item_whose_deadline_passed_in_the_queue_is_never_encoded():
    fn = Gated()
    with MicroBatcher(fn, max_batch=8, max_delay_ms=1, name="t_queue") as mb:
        mb.submit_future(1)
        assert fn.entered.wait(10)
        late = mb.submit_future(2, deadline=time.perf_counter() + 0.01)
        on_time = mb.submit_future(3, deadline=time.perf_counter() + 30)
        time.sleep(0.02)  # let the first deadline pass while the thread is busy
        fn.open.set()
        assert on_time.result(10) == 30
        assert late.cancelled()
    assert all(2 not in b for b in fn.batches)


def test_a_dead_batching_thread_is_detected_and_restarted():
    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            raise SystemExit("the thread ends here")
        return [i * 10 for i in items]

    restarts = REGISTRY.get_sample_value(
        "recall_encoder_batcher_restarts_total", {"encoder": "t_dead"}
    )
    with MicroBatcher(fn, max_batch=8, max_delay_ms=1, name="t_dead") as mb:
        with pytest.raises(BatcherDied, match="batching thread died"):
            mb.submit(0, timeout=10)
        wait_until(lambda: not mb.alive)
        assert mb.submit(5, timeout=10) == 50  # a new thread serves it
        assert mb.alive and mb.restarts == 1
    after = REGISTRY.get_sample_value(
        "recall_encoder_batcher_restarts_total", {"encoder": "t_dead"}
    )
    assert after == (restarts or 0) + 1


def test_a_caller_without_a_deadline_does_not_hang_when_the_thread_dies_under_it():
    gate = threading.Event()
    entered = threading.Event()

    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            entered.set()
            gate.wait(10)
            raise SystemExit("dies while another caller waits in the queue")
        return [i * 10 for i in items]

    got: dict[str, object] = {}
    with MicroBatcher(fn, max_batch=1, max_delay_ms=0, name="t_waiter") as mb:
        doomed = mb.submit_future(0)
        assert entered.wait(10)
        waiter = threading.Thread(target=lambda: got.update(value=mb.submit(7)))
        waiter.start()
        wait_until(lambda: len(mb._queue) == 1)  # noqa: SLF001 - 7 is queued behind [0]
        gate.set()
        waiter.join(10)
        assert not waiter.is_alive() and got["value"] == 70
        with pytest.raises(BatcherDied):
            doomed.result(10)
        assert mb.restarts == 1


BATCH_SERIES = (
    "recall_encoder_batch_size_count",
    "recall_encoder_batch_size_sum",
    "recall_encoder_queue_seconds_count",
    "recall_encoder_seconds_count",
)


def test_a_run_on_the_callers_thread_records_the_series_a_batch_of_the_batcher_does():
    """What a channel does with an encoder that takes one text per run (no micro-batcher):
    ``EncoderStats.run`` records the run in the series the batcher records a batch in
    (batch size, one queue time per item, 0 here, run time), under its ``encoder``
    label, also when the run raises."""

    def sample(series: str, name: str) -> float:
        return REGISTRY.get_sample_value(series, {"encoder": name}) or 0.0

    def fn(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return [len(i) for i in items]

    with MicroBatcher(fn, max_batch=8, max_delay_ms=1, name="t_batched") as mb:
        assert mb.submit("abc") == 3
    direct = EncoderStats("t_direct")
    assert direct.run(fn, ["abc"]) == [3]
    for series in BATCH_SERIES:
        assert sample(series, "t_direct") == sample(series, "t_batched") == 1, series
    assert (
        REGISTRY.get_sample_value("recall_encoder_queue_seconds_sum", {"encoder": "t_direct"}) == 0
    )
    with pytest.raises(RuntimeError, match="boom"):
        direct.run(fn, ["a", "boom"])
    assert sample("recall_encoder_batch_size_sum", "t_direct") == 3
    assert sample("recall_encoder_queue_seconds_count", "t_direct") == 3
    assert sample("recall_encoder_seconds_count", "t_direct") == 2

"""Overload and lifecycle: admission control sheds at once with a retry hint, work past
its deadline never starts, BatchRecall items get their own channel deadlines, a reload
never lets a request run on a closed channel, and closing is idempotent."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from recall_engine._proto import recall_pb2
from recall_engine.config import ConfigError
from recall_engine.sdk.types import Candidates, Query
from recall_engine.serving.admission import Admission, OverloadSettings, machine_in_flight
from recall_engine.serving.bulkhead import Bulkhead
from recall_engine.serving.engine import Engine, Status
from recall_engine.serving.errors import DeadlineExceeded, Overloaded
from recall_engine.serving.output_check import BadOutput, check_answer
from recall_engine.serving.requests import RecallInput
from tests.fault_plugins import CONTROL, INSTANCES, fault_site, faults  # noqa: F401 - fixtures
from tests.harness import catalog_of, make_config, serve

pytestmark = pytest.mark.usefixtures("faults")

ITEMS = [f"i{n}" for n in range(1, 10)]


def one_channel(tmp_path, fault: str = "none", timeout_ms: int = 2000, **params):
    return make_config(
        {
            "channels": {
                "a": {
                    "plugin": "fault",
                    "timeout_ms": timeout_ms,
                    "params": {"items": ["i1", "i2"], "fault": fault, **params},
                }
            }
        },
        tmp_path,
    )


def wait_until(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# -- admission ---------------------------------------------------------------------------


def test_over_the_limit_a_request_is_shed_at_once_with_a_retry_hint(tmp_path):
    limit = 2
    overload = OverloadSettings(max_in_flight=limit, queue_s=None)  # no line: shed at once
    with serve(one_channel(tmp_path, "hang"), catalog_of(ITEMS), overload=overload) as s:
        held = [
            s.stub.Recall.future(recall_pb2.RecallRequest(user_id=f"u{n}", k=2), timeout=10)
            for n in range(limit)
        ]
        wait_until(lambda: sum(c.calls for c in INSTANCES) == limit)  # both hang in "a"
        calls_before = sum(c.calls for c in INSTANCES)
        # the held calls hang until CONTROL.release: a request that queued for a slot
        # would end DEADLINE_EXCEEDED, so RESOURCE_EXHAUSTED here means it was not held
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Recall(recall_pb2.RecallRequest(user_id="over", k=2), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(e.value.trailing_metadata())
        assert int(trailers["grpc-retry-pushback-ms"]) >= 1
        assert trailers["retry-after-ms"] == trailers["grpc-retry-pushback-ms"]
        assert sum(c.calls for c in INSTANCES) == calls_before  # nothing was started
        CONTROL.release.set()
        for f in held:
            assert list(f.result().item_ids) == ["i1", "i2"]
        wait_until(lambda: s.engine.admission.in_flight == 0)
        assert list(s.stub.Recall(recall_pb2.RecallRequest(user_id="later", k=2)).item_ids)


def test_a_full_engine_refuses_a_recall_before_parsing_it_and_counts_the_shed(tmp_path):
    limit = 1
    overload = OverloadSettings(max_in_flight=limit, queue_s=None)  # no line: full at the bound
    with serve(one_channel(tmp_path, "hang"), catalog_of(ITEMS), overload=overload) as s:
        held = s.stub.Recall.future(recall_pb2.RecallRequest(user_id="u", k=2), timeout=10)
        wait_until(lambda: sum(c.calls for c in INSTANCES) == limit)
        shed_before = s.engine.admission.shed
        # bytes that do not parse: refused by the bound first (they would get
        # INVALID_ARGUMENT once parsed), so nothing was parsed or run for them
        garbage = s.channel.unary_unary("/recall_engine.v1.RecallService/Recall")
        with pytest.raises(grpc.RpcError) as e:
            garbage(b"\xff\xff\xff", timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(e.value.trailing_metadata())["grpc-retry-pushback-ms"]) >= 1
        assert s.engine.admission.shed == shed_before + 1
        CONTROL.release.set()
        assert list(held.result().item_ids) == ["i1", "i2"]
        wait_until(lambda: s.engine.admission.in_flight == 0)
        with pytest.raises(grpc.RpcError) as e:  # with room, the same bytes are parsed
            garbage(b"\xff\xff\xff", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def line(queue_s: float | None = 0.05, mean_s: float = 0.005) -> Admission:
    """A fixed bound of one request; a request takes ``mean_s`` (the line's pace)."""
    adm = Admission(1, target_lag_ms=None, queue_s=queue_s)
    adm._mean_s = mean_s  # noqa: SLF001 - no request finished yet: the pace comes from it
    return adm


def test_at_the_bound_requests_wait_in_line_and_take_freed_slots_oldest_first():
    async def main() -> list[int]:
        adm = line()
        await adm.wait()  # room: in at once
        order: list[int] = []

        async def waiter(n: int) -> None:
            await adm.wait(remaining_s=10.0)
            order.append(n)

        tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        assert adm.in_flight == 1 and len(adm._line) == 3 and order == []  # noqa: SLF001
        with pytest.raises(Overloaded):  # a newcomer without a line does not jump it
            adm.enter()
        for n in range(3):
            adm.leave(1, 0.005)  # the slot goes to the head of the line, still counted
            await asyncio.sleep(0.01)
            assert order == list(range(n + 1)) and adm.in_flight == 1
        adm.leave(1, 0.005)
        await asyncio.gather(*tasks)
        assert adm.in_flight == 0 and adm.shed == 1
        return order

    assert asyncio.run(main()) == [0, 1, 2]


def test_a_line_longer_than_queue_ms_sheds_at_once_with_the_retry_hint():
    async def main() -> None:
        adm = line(queue_s=0.05, mean_s=0.05)  # one request every 50 ms: room for one
        await adm.wait()
        first = asyncio.create_task(adm.wait(remaining_s=10.0))
        await asyncio.sleep(0.01)
        assert len(adm._line) == 1  # noqa: SLF001
        assert adm.full  # what the server's first interceptor reads: shed before parsing
        t0 = time.perf_counter()
        with pytest.raises(Overloaded) as e:
            await adm.wait(remaining_s=10.0)  # a second place would wait 100 ms
        assert time.perf_counter() - t0 < 0.04  # shed at once, not after waiting
        assert e.value.retry_after_ms >= 1 and adm.full
        adm.leave(1, 0.05)
        await first
        adm.leave(1, 0.05)
        assert adm.in_flight == 0

    asyncio.run(main())


def test_a_wait_longer_than_half_the_deadline_is_shed_and_takes_no_slot():
    async def main() -> None:
        adm = line(queue_s=0.05, mean_s=0.001)
        await adm.wait()  # held: nothing leaves while the next one waits
        t0 = time.perf_counter()
        with pytest.raises(Overloaded):
            await adm.wait(remaining_s=0.04)  # waits at most 20 ms
        waited = time.perf_counter() - t0
        assert 0.015 < waited < 1.0
        assert adm.in_flight == 1 and not adm._line  # noqa: SLF001
        adm.leave(1, 0.001)
        assert adm.in_flight == 0  # nobody in line took the freed slot

    asyncio.run(main())


def test_a_request_that_goes_away_while_in_line_passes_its_slot_on():
    async def main() -> None:
        adm = line()
        await adm.wait()
        gone = asyncio.create_task(adm.wait(remaining_s=10.0))
        stays = asyncio.create_task(adm.wait(remaining_s=10.0))
        await asyncio.sleep(0.01)
        adm.leave(1, 0.005)  # the slot is handed to "gone", which is cancelled at once
        gone.cancel()
        await asyncio.sleep(0.01)
        assert gone.cancelled() and stays.done() and adm.in_flight == 1
        adm.leave(1, 0.005)
        assert adm.in_flight == 0 and not adm._line  # noqa: SLF001

    asyncio.run(main())


def test_a_slot_freed_for_a_waiter_whose_loop_closed_is_given_back():
    """A waiter left in line when its event loop was closed without cancelling it: the
    freed slot cannot wake it, so it goes back instead of leaking."""
    adm = line()
    loop = asyncio.new_event_loop()

    async def queue_one() -> None:
        await adm.wait()
        asyncio.ensure_future(adm.wait(remaining_s=10.0))
        await asyncio.sleep(0.01)

    loop.run_until_complete(queue_one())
    assert adm.in_flight == 1 and len(adm._line) == 1  # noqa: SLF001
    loop.close()  # the waiting task is abandoned, not cancelled
    adm.leave(1, 0.005)
    assert adm.in_flight == 0


def test_without_a_line_a_request_at_the_bound_is_shed_at_once():
    async def main() -> None:
        adm = line(queue_s=None)
        await adm.wait()
        assert adm.full
        with pytest.raises(Overloaded):
            await adm.wait(remaining_s=10.0)
        assert adm.shed == 1 and adm.in_flight == 1

    asyncio.run(main())


def test_clients_past_the_bound_wait_in_line_through_the_server_instead_of_being_shed(tmp_path):
    """One request in the engine at a time (a fixed bound), each taking 20 ms: four
    clients at once all get answers and none is shed; without the line, some are."""
    for queue_s, shed_expected in ((0.5, False), (None, True)):
        overload = OverloadSettings(
            max_in_flight=1, target_loop_lag_ms=None, latency_tolerance=None, queue_s=queue_s
        )
        cfg = one_channel(tmp_path / str(queue_s), "sleep", sleep_s=0.02)
        with serve(cfg, catalog_of(ITEMS), overload=overload) as s:
            shed_before = s.engine.admission.shed
            calls = [
                s.stub.Recall.future(recall_pb2.RecallRequest(user_id=f"u{n}", k=2), timeout=10)
                for n in range(4)
            ]
            codes = []
            for call in calls:
                try:
                    call.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
            shed = s.engine.admission.shed - shed_before
            if shed_expected:
                assert shed > 0 and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
            else:
                assert codes == [grpc.StatusCode.OK] * 4 and shed == 0, codes
            wait_until(lambda: s.engine.admission.in_flight == 0)


def test_shed_clients_are_given_retry_instants_spread_at_the_engines_pace():
    adm = Admission(limit=2, retry_min_ms=1, retry_max_ms=5000, target_lag_ms=None, retry_share=1)
    adm._mean_s = 1.0  # noqa: SLF001 - requests of 1 s: with 2 in flight one ends every 0.5 s
    assert adm.enter(2) == 2
    hints = []
    for _ in range(12):
        with pytest.raises(Overloaded) as e:
            adm.enter()
        hints.append(e.value.retry_after_ms)
    # each shed client is told to come back 0.5 s after the one before, up to the cap
    assert hints[:10] == pytest.approx([500 * (i + 1) for i in range(10)], abs=5)
    assert hints[10:] == [5000, 5000]
    adm.leave(2, 1.0)
    assert adm.in_flight == 0 and adm.enter(3, at_least=1) == 2  # limit 2: two fit
    assert adm.shed == 12


def _hints(adm: Admission, n: int) -> list[int]:
    hints = []
    for _ in range(n):
        with pytest.raises(Overloaded) as e:
            adm.enter()
        hints.append(e.value.retry_after_ms)
    return hints


def _windows(adm: Admission, n: int, *, shed: int, done: int) -> None:
    """``n`` closed admission windows, each with ``shed`` refusals and ``done`` requests
    finished."""
    for _ in range(n):
        adm._window_shed, adm._window_done = shed, done  # noqa: SLF001
        adm._window_start -= 1  # noqa: SLF001 - close the window without sleeping
        adm._adapt(time.perf_counter())  # noqa: SLF001
        adm._rate = 2.0  # noqa: SLF001 - keep the pace at 0.5 s whatever the windows said


def test_while_refused_clients_are_refused_again_they_come_back_at_a_quarter_of_the_pace():
    """The retry share (default 0.25): while the sheds per client the schedule brings
    back stay near 1 (the engine stays full, so the schedule's pace only brings clients
    back to be refused again), the schedule advances four times the time between two
    requests finishing per shed; when refused clients find room again, it goes back to
    that time."""
    assert OverloadSettings().retry_share == 0.25
    adm = Admission(limit=2, retry_min_ms=1, retry_max_ms=60000, target_lag_ms=None)
    adm._rate = 2.0  # noqa: SLF001 - with 2 in flight one request ends every 0.5 s
    assert adm.enter(2) == 2
    assert _hints(adm, 2) == pytest.approx([500, 1000], abs=5)  # at the pace
    _windows(adm, 5, shed=5, done=5)  # a quarter-second burst: averaged away
    assert _hints(adm, 1) == pytest.approx([1500], abs=5)  # still the pace
    _windows(adm, 60, shed=5, done=5)  # a shed for every request finished: all refused
    assert adm.retry_after_ms == pytest.approx(1500 + 2000, abs=5)  # the cursor, then 4 x
    assert _hints(adm, 2) == pytest.approx([3500, 5500], abs=5)
    _windows(adm, 20, shed=1, done=5)  # spaced out: 0.2 sheds a request, 0.8 a client
    assert _hints(adm, 1) == pytest.approx([7500], abs=5)  # still spaced
    _windows(adm, 60, shed=0, done=5)  # no more sheds: back to the pace
    assert _hints(adm, 1) == pytest.approx([8000], abs=5)
    always = Admission(limit=2, retry_max_ms=60000, target_lag_ms=None, retry_share=1)
    always._rate = 2.0  # noqa: SLF001
    assert always.enter(2) == 2
    _windows(always, 60, shed=5, done=5)
    assert _hints(always, 2) == pytest.approx([500, 1000], abs=5)  # share 1: the old way


ONE_CHANNEL = {"channels": {"popular": {}}}


@pytest.mark.parametrize("share", [0, -0.5, 1.5, True])
def test_a_retry_share_outside_0_to_1_is_refused_naming_the_key(tmp_path, share):
    with pytest.raises(ValueError, match=r"^retry_share"):
        OverloadSettings(retry_share=share)
    with pytest.raises(ValueError, match=r"^retry_share"):
        Admission(2, retry_share=share)
    if not isinstance(share, bool):
        with pytest.raises(ConfigError, match="overload.retry_share"):
            make_config({**ONE_CHANNEL, "overload": {"retry_share": share}}, tmp_path)
    settings = OverloadSettings.from_config(
        make_config({**ONE_CHANNEL, "overload": {"retry_share": 0.5}}, tmp_path).overload
    )
    assert settings.retry_share == 0.5


@pytest.mark.parametrize("floor", [1, 3])
def test_the_bound_shrinks_while_the_event_loop_lags_and_grows_back_when_it_keeps_up(floor):
    adm = Admission(8, target_lag_ms=2.0, min_limit=floor)

    def next_window() -> None:
        adm._window_start -= 1  # noqa: SLF001 - close the window without sleeping

    async def main() -> tuple[list[int], list[int]]:
        adm.watch(asyncio.get_running_loop())
        shrinking = []
        for _ in range(4):
            for _ in range(3):  # the loop blocked 30 ms at a time: it lags far over 2 ms
                await asyncio.sleep(0.006)
                time.sleep(0.03)
            next_window()
            adm.enter()
            adm.leave()
            shrinking.append(adm.limit)
        for _ in range(2000):  # the loop keeps up again: wait until the lag has decayed
            if adm.loop_lag_ms < 1.0:  # under half the target: the bound may grow
                break
            await asyncio.sleep(0.005)
        assert adm.loop_lag_ms < 1.0, adm.loop_lag_ms
        growing = []
        for _ in range(3):
            admitted = adm.enter(adm.limit)  # the bound is what holds requests back
            next_window()
            adm.leave(admitted)
            adm.enter()  # opens the next window: the bound grows by one
            adm.leave()
            growing.append(adm.limit)
        adm.close()
        return shrinking, growing

    shrinking, growing = asyncio.run(main())
    assert shrinking == sorted(shrinking, reverse=True) and shrinking[-1] < 8
    assert shrinking[-1] >= floor and (floor == 1 or shrinking[-1] == floor)
    assert growing == [shrinking[-1] + 1, shrinking[-1] + 2, shrinking[-1] + 3]


def test_the_bound_follows_how_much_slower_requests_get_than_alone():
    """The latency signal: requests that take more than twice their time alone shrink
    the bound down to the floor; near their time alone it grows back; latency that does
    not grow with the load (a remote call's) leaves the bound where it is."""
    adm = Admission(8, target_lag_ms=None, min_limit=1, latency_tolerance=2.0)

    def window(in_flight: int, seconds: float) -> int:
        """``in_flight`` requests together, each taking ``seconds``; then a new window
        opens (the bound adapts): the bound after it."""
        admitted = adm.enter(in_flight)
        adm.leave(admitted, None)
        for _ in range(max(admitted, 3)):  # as many timed (3 at least: a window decides)
            adm.in_flight += 1
            adm.leave(1, seconds)
        adm._window_peak = max(adm._window_peak, admitted)  # noqa: SLF001
        adm._window_start -= 1  # noqa: SLF001 - close the window without sleeping
        adm.enter()
        adm.leave()
        return adm.limit

    # no request seen alone yet: the signal is silent, slow requests or not
    assert window(8, 0.05) == 8 and adm.solo_ms is None
    for _ in range(5):  # requests alone take 4 ms
        adm.enter()
        adm.leave(1, 0.004)
    assert adm.solo_ms == pytest.approx(4.0)
    # eight at once take 5 x as long: down by a quarter per window, to the floor
    assert [window(adm.limit, 0.02) for _ in range(5)] == [6, 4, 3, 2, 1]
    # 1.2 x their time alone, with the bound holding requests back: up by one per window
    assert [window(adm.limit, 0.0048) for _ in range(3)] == [2, 3, 4]
    # between 1.5 x and 2 x: neither
    assert window(adm.limit, 0.007) == 4
    # a request that overlapped another is not a solo sample
    solo = adm.solo_ms
    a, b = adm.enter(), adm.enter()
    adm.leave(a, 0.5)
    adm.leave(b, 0.5)
    assert adm.solo_ms == solo

    remote = Admission(8, target_lag_ms=None, min_limit=1, latency_tolerance=2.0)
    remote.limit = 4
    remote.enter()
    remote.leave(1, 0.050)  # 50 ms alone, 55 ms eight at once: no queueing here
    adm = remote
    assert [window(adm.limit, 0.055) for _ in range(4)] == [5, 6, 7, 8]


def test_default_limits_are_sized_from_the_machine():
    settings = OverloadSettings()
    assert settings.max_in_flight == machine_in_flight() >= 4
    assert settings.min_in_flight == 1 and settings.latency_tolerance == 2.0
    assert settings.channel_limit("cf") == settings.max_in_flight
    assert settings.channel_limit("popular") > settings.channel_limit("cf")  # a reserve
    assert OverloadSettings(channel_limits={"cf": 3}).channel_limit("cf") == 3
    assert machine_in_flight(2) == 8 and machine_in_flight(16) == 64


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_in_flight": -1}, "max_in_flight"),
        ({"channel_limits": {"cf": 0}}, "channel_limits.cf"),
        ({"retry_after_ms_min": 10, "retry_after_ms_max": 5}, "retry_after_ms"),
    ],
)
def test_bad_overload_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"^{key}"):
        OverloadSettings(**kwargs)


# -- deadlines ----------------------------------------------------------------------------


def test_a_request_whose_deadline_passed_is_never_started(tmp_path):
    engine = Engine(one_channel(tmp_path), catalog=catalog_of(ITEMS))
    engine.load()
    try:
        inp = RecallInput(Query(user_id="u"), 5, "r1")
        with pytest.raises(DeadlineExceeded):
            asyncio.run(engine.recall(inp, 0.0))
        assert INSTANCES[-1].calls == 0
        assert engine.admission.in_flight == 0
        out = asyncio.run(engine.recall(inp, 1.0))
        assert out.reports[0].status == Status.OK and INSTANCES[-1].calls == 1
    finally:
        engine.close()


def test_batch_items_get_their_own_channel_deadlines_not_queued_behind_each_other(tmp_path):
    # 12 items, 2 at a time, each 80 ms on a channel with a 200 ms timeout: ~480 ms for
    # the batch. Counted from the batch's start, every item after the fourth would time
    # out; counted from each item's start, none does.
    overload = OverloadSettings(max_in_flight=8, batch_parallelism=2)
    config = one_channel(tmp_path, "sleep", timeout_ms=200, sleep_s=0.08)
    with serve(config, catalog_of(ITEMS), overload=overload) as s:
        reqs = [recall_pb2.RecallRequest(user_id=f"u{n}", k=2) for n in range(12)]
        resp = s.stub.BatchRecall(recall_pb2.BatchRecallRequest(requests=reqs), timeout=30)
    assert [r.error_code for r in resp.results] == [0] * 12
    assert all(r.response.channels[0].status == recall_pb2.CHANNEL_STATUS_OK for r in resp.results)


def test_a_batch_is_shed_as_a_whole_when_the_engine_is_full(tmp_path):
    overload = OverloadSettings(max_in_flight=1)
    with serve(one_channel(tmp_path, "hang"), catalog_of(ITEMS), overload=overload) as s:
        held = s.stub.Recall.future(recall_pb2.RecallRequest(user_id="u", k=2), timeout=10)
        wait_until(lambda: s.engine.admission.in_flight == 1)
        reqs = [recall_pb2.RecallRequest(user_id=f"u{n}", k=2) for n in range(3)]
        with pytest.raises(grpc.RpcError) as e:
            s.stub.BatchRecall(recall_pb2.BatchRecallRequest(requests=reqs), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "grpc-retry-pushback-ms" in dict(e.value.trailing_metadata())
        CONTROL.release.set()
        held.result()


# -- lifecycle ----------------------------------------------------------------------------


def _two_channel_engine(tmp_path) -> Engine:
    """``gate`` comes first in priority order: its ``accepts`` can hold a request after
    it read the engine's state and before it touches channel ``a``."""
    config = make_config(
        {
            "channels": {
                "gate": {"plugin": "fault", "params": {"items": ["i9"]}},
                "a": {"plugin": "fault", "params": {"items": ["i1", "i2"]}},
            }
        },
        tmp_path,
    )
    engine = Engine(config, catalog=catalog_of(ITEMS))
    engine.load()
    return engine


def test_a_request_that_read_the_old_generation_runs_on_the_new_channel_not_the_closed_one(
    tmp_path,
):
    engine = _two_channel_engine(tmp_path)
    try:
        old = next(c for c in INSTANCES if c.ctx.name == "a")
        CONTROL.faults["gate"] = "block_accepts"
        result: dict = {}
        t = threading.Thread(
            target=lambda: result.update(
                out=asyncio.run(engine.recall(RecallInput(Query(user_id="u"), 5, "r"), 5.0))
            )
        )
        t.start()
        assert CONTROL.entered.wait(10)  # the request holds the old state
        CONTROL.faults["gate"] = "none"
        engine.reload_channels(["a"], None)  # retires (and closes) the old "a"
        assert old.closes == 1
        CONTROL.proceed.set()
        t.join(10)
        new = next(c for c in INSTANCES if c.ctx.name == "a" and c is not old)
        assert old.calls_after_close == 0 and old.calls == 0
        assert new.calls == 1
        assert old.closes == 1  # closed once, not again when the request let go
        reports = {r.channel: r.status for r in result["out"].reports}
        assert reports == {"gate": Status.OK, "a": Status.OK}
    finally:
        engine.close()


def test_a_retired_channel_closes_once_after_its_last_call_returns(tmp_path):
    engine = _two_channel_engine(tmp_path)
    try:
        old = next(c for c in INSTANCES if c.ctx.name == "a")
        CONTROL.faults["a"] = "hang"
        result: dict = {}
        t = threading.Thread(
            target=lambda: result.update(
                out=asyncio.run(engine.recall(RecallInput(Query(user_id="u"), 5, "r"), 20.0))
            )
        )
        t.start()
        wait_until(lambda: old.calls == 1)
        engine.reload_channels(["a"], None)
        assert old.closes == 0  # a call is still running on it
        CONTROL.release.set()
        t.join(20)
        wait_until(lambda: old.closes == 1)
        engine.close()
        engine.close()  # idempotent
        assert old.closes == 1
        assert all(c.closes == 1 for c in INSTANCES)
    finally:
        engine.close()


# -- bulkhead and output check -----------------------------------------------------------


def test_a_bulkhead_refuses_past_its_limit_without_queueing_and_reuses_its_threads():
    bulkhead = Bulkhead("t", 2)
    release = threading.Event()
    started = []
    assert bulkhead.try_submit(lambda: (started.append(1), release.wait(10)))
    assert bulkhead.try_submit(lambda: (started.append(2), release.wait(10)))
    assert not bulkhead.try_submit(lambda: started.append(3))
    release.set()
    wait_until(lambda: bulkhead.in_flight == 0)
    done = threading.Event()
    assert bulkhead.try_submit(done.set)
    assert done.wait(10) and sorted(started) == [1, 2]
    threads = [t for t in threading.enumerate() if t.name == "channel-t"]
    assert len(threads) == 2 and all(t.daemon for t in threads)
    bulkhead.close()
    assert not bulkhead.try_submit(done.set)
    for t in threads:
        t.join(10)
        assert not t.is_alive()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (Candidates(["a", "b"], np.array([1.0, np.nan], np.float32)), "not finite"),
        (Candidates(["a", "b"], np.array([np.inf, 1.0])), "not finite"),
        (Candidates(["a", "b"], np.array([1.0], np.float32)), "shape"),
        (Candidates(["a", "a"], np.array([2.0, 1.0], np.float32)), "duplicate"),
        (Candidates([1, 2], np.array([2.0, 1.0], np.float32)), "strings"),
        (Candidates(["a", ["b"]], np.array([2.0, 1.0], np.float32)), "strings"),
        (Candidates(np.array([1, 2]), np.array([2.0, 1.0], np.float32)), "strings"),
        (Candidates(["a", "b"], np.array(["x", "y"])), "numbers"),
        ([("a", 1.0)], "not Candidates"),
        (Candidates(["a", "b"], np.array([2.0, 1.0]), np.array([3, 3])), "increase strictly"),
        (Candidates(["a", "b"], np.array([2.0, 1.0]), np.array([1, 1])), "increase strictly"),
        (Candidates(["a", "b"], np.array([2.0, 1.0]), np.array([4])), "ranks of shape"),
        (Candidates(["a", "b"], np.array([2.0, 1.0]), np.array([1.0, 2.0])), "ranks of shape"),
    ],
)
def test_the_output_check_names_what_is_wrong(answer, problem):
    with pytest.raises(BadOutput, match=problem):
        check_answer(answer, 10)


def test_the_output_check_passes_good_answers_and_cuts_them_to_k():
    ids = np.array(["a", "b", "c"])
    out = check_answer(Candidates(ids, np.array([3, 2, 1], np.float64)), 2)
    assert list(out.item_ids) == ["a", "b"] and out.scores.dtype == np.float32
    assert len(check_answer(Candidates.empty(), 5)) == 0
    dup = Candidates(["a", "a"], np.array([2.0, 1.0], np.float32))
    assert len(check_answer(dup, 5, unique=False)) == 2  # an untrusted channel: repaired later
    ranked = check_answer(Candidates(ids, np.array([3, 2, 1]), np.array([4, 9, 10])), 2)
    assert ranked.ranks is not None and ranked.ranks.tolist() == [4, 9]  # cut with the ids


def test_a_request_that_comes_straight_back_finds_its_channel_free(tmp_path):
    """A call gives back its bulkhead room before its request can see the outcome: a
    client whose next request follows the answer at once (the evaluation runner, a
    closed loop at the admission bound) never finds its channel full with nothing in
    flight. Counted after the call returned, it sometimes did, and the channel was
    reported OVERLOADED (eval: 'no channel had room for the request')."""
    overload = OverloadSettings(max_in_flight=1, channel_max_in_flight=1, fallback=None)
    engine = Engine(one_channel(tmp_path), catalog=catalog_of(ITEMS), overload=overload)
    engine.load()

    async def closed_loop(n: int) -> list[Status]:
        statuses = []
        for i in range(n):
            out = await engine.recall(RecallInput(Query(user_id=f"u{i}"), 2, f"r{i}"), 5.0)
            statuses.extend(report.status for report in out.reports)
        return statuses

    try:
        statuses = asyncio.run(closed_loop(500))
    finally:
        engine.close()
    assert statuses.count(Status.OK) == 500, {s: statuses.count(s) for s in set(statuses)}

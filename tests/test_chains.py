"""Chains: a request's quick channel calls run one after another on one thread, each
still counted on its own bulkhead; a chained call stuck behind a slow or hung one is
moved to a thread of its own a quarter of the way into its timeout. Real gRPC server on
a free port, the fault plugin registered as a real entry point (tests/fault_plugins.py).
"""

from __future__ import annotations

import math
import threading
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from recall_engine._proto import recall_pb2
from recall_engine.config import ConfigError
from recall_engine.serving.admission import OverloadSettings
from recall_engine.serving.bulkhead import Bulkhead
from recall_engine.serving.cores import usable_cores
from recall_engine.serving.engine import fan_out_pays
from recall_engine.serving.host_load import HostLoad, create_slots
from tests.fault_plugins import CONTROL, INSTANCES, fault_site, faults  # noqa: F401 - fixtures
from tests.harness import catalog_of, make_config, serve

pytestmark = pytest.mark.usefixtures("faults")

ITEMS = [f"i{n}" for n in range(1, 13)]
OK, TIMEOUT = recall_pb2.CHANNEL_STATUS_OK, recall_pb2.CHANNEL_STATUS_TIMEOUT
CHAIN = "channel-chains"


SLEEP_1MS = {"fault": "sleep", "sleep_s": 0.001}


def config(tmp_path, popular=None, overload=None, **channels):
    """The fallback ``popular`` (weight 0.1; more ``popular`` params) and ``channels``
    (name -> table), weight 1; ``overload``: the ``[overload]`` table."""
    params = {"items": ["i9", "i10"], **(popular or {})}
    tables = {"popular": {"plugin": "fault", "params": params}}
    for name, table in channels.items():
        tables[name] = {"plugin": "fault", **table}
    weights = {"popular": 0.1, **{name: 1.0 for name in channels}}
    data = {"channels": tables, "plan": {"weights": weights}, "overload": overload or {}}
    return make_config(data, tmp_path)


def channel(name: str):
    return next(c for c in reversed(INSTANCES) if c.ctx.name == name)


def statuses(resp) -> dict[str, int]:
    return {c.channel: c.status for c in resp.channels}


def recall(s, user: str, timeout: float = 5.0):
    return s.stub.Recall(recall_pb2.RecallRequest(user_id=user, k=10), timeout=timeout)


def in_flight(s) -> dict[str, int]:
    return {name: slot.bulkhead.in_flight for name, slot in s.engine._state.slots.items()}


def wait_until(cond, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()


def test_a_bulkhead_counts_calls_reserved_to_run_elsewhere():
    bulkhead = Bulkhead("reserved", 2)
    assert bulkhead.try_reserve() and bulkhead.try_reserve()
    assert not bulkhead.try_reserve() and not bulkhead.try_submit(lambda: None)
    bulkhead.unreserve()
    ran = threading.Event()
    assert bulkhead.try_submit(ran.set) and ran.wait(10)
    assert wait_until(lambda: bulkhead.in_flight == 1)  # the one still reserved
    assert bulkhead.try_reserve()
    done = threading.Event()
    assert bulkhead.submit_reserved(done.set) and done.wait(10)
    assert wait_until(lambda: bulkhead.in_flight == 1)
    bulkhead.close()
    assert not bulkhead.submit_reserved(done.set)  # closed: refused, its room given back
    assert bulkhead.in_flight == 0
    assert not bulkhead.try_reserve()


def test_quick_calls_share_one_thread_and_slow_ones_keep_their_own(tmp_path):
    cfg = config(
        tmp_path,
        a={"params": {"items": ["i1", "i2"]}},
        b={"params": {"items": ["i3"]}},
        slow={"params": {"items": ["i4"], "fault": "sleep", "sleep_s": 0.02}},
    )
    with serve(cfg, catalog_of(ITEMS)) as s:
        recall(s, "first")  # nothing known yet: a thread each
        assert [channel(n).threads[-1] for n in ("a", "b", "slow")] == [
            "channel-a",
            "channel-b",
            "channel-slow",
        ]
        resp = recall(s, "second")
        assert set(statuses(resp).values()) == {OK}
        assert set(resp.item_ids) >= {"i1", "i2", "i3", "i4"}
        assert channel("a").threads[-1] == CHAIN and channel("b").threads[-1] == CHAIN
        assert channel("slow").threads[-1] == "channel-slow"  # 20 ms: not quick
        assert wait_until(lambda: set(in_flight(s).values()) == {0})


def test_a_call_of_a_few_ms_on_its_own_cpu_joins_the_chain(tmp_path):
    """5 ms of CPU (a search on a large index, a small encoder): a thread of its own
    would only take turns with the others under the GIL."""
    cfg = config(
        tmp_path,
        a={"params": {"items": ["i1"]}},
        busy={"params": {"items": ["i4"], "fault": "spin", "spin_s": 0.005}},
    )
    with serve(cfg, catalog_of(ITEMS)) as s:
        for n in range(3):  # a few calls: the fastest is the one remembered
            recall(s, f"warm{n}")
        slot = s.engine._state.slots["busy"]
        assert slot.expected((False, False)) >= 0.005
        resp = recall(s, "then")
        assert set(statuses(resp).values()) == {OK} and "i4" in resp.item_ids
        assert channel("busy").threads[-1] == CHAIN and channel("a").threads[-1] == CHAIN


def test_a_quick_call_that_waits_off_the_cpu_keeps_its_own_thread(tmp_path):
    """5 ms asleep (the network, an encoder batch): under the chain bound, but in a
    chain the others would wait with it."""
    cfg = config(
        tmp_path,
        a={"params": {"items": ["i1"]}},
        b={"params": {"items": ["i3"]}},
        waiter={"params": {"items": ["i4"], "fault": "sleep", "sleep_s": 0.005}},
    )
    with serve(cfg, catalog_of(ITEMS)) as s:
        for n in range(3):
            recall(s, f"warm{n}")
        slot = s.engine._state.slots["waiter"]
        assert slot.expected((False, False)) < 0.010  # quick enough to chain by time
        assert slot.waits((False, False)) >= 0.002
        resp = recall(s, "then")
        assert set(statuses(resp).values()) == {OK}
        assert channel("waiter").threads[-1] == "channel-waiter"
        assert channel("a").threads[-1] == CHAIN and channel("b").threads[-1] == CHAIN


def test_without_chains_every_call_keeps_its_own_thread(tmp_path):
    cfg = config(
        tmp_path,
        overload={"chain_calls_under_ms": 0},
        a={"params": {"items": ["i1"]}},
        b={"params": {"items": ["i3"]}},
    )
    assert OverloadSettings.from_config(cfg.overload).chain_calls_under_s is None
    with serve(cfg, catalog_of(ITEMS)) as s:
        for n in range(3):
            assert set(statuses(recall(s, f"u{n}")).values()) == {OK}
        assert set(channel("a").threads) == {"channel-a"}
        assert set(channel("b").threads) == {"channel-b"}


def test_a_negative_chain_bound_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="overload.chain_calls_under_ms"):
        config(tmp_path, overload={"chain_calls_under_ms": -1})


def test_a_chained_channel_that_hangs_delays_the_others_and_fills_only_its_own_room(tmp_path):
    # "bad" answers at once, so it runs first in the chain; the others take a
    # millisecond, still quick
    cfg = config(
        tmp_path,
        popular=SLEEP_1MS,
        bad={"timeout_ms": 300, "params": {"items": ["i4"]}},
        good={"timeout_ms": 400, "params": {"items": ["i1"], **SLEEP_1MS}},
    )
    hung = REGISTRY.get_sample_value("recall_channel_hung_calls", {"channel": "bad"}) or 0.0
    with serve(cfg, catalog_of(ITEMS)) as s:
        for n in range(3):
            recall(s, f"warm{n}")
        assert channel("bad").threads[-1] == CHAIN and channel("good").threads[-1] == CHAIN
        CONTROL.faults["bad"] = "hang"

        resp = recall(s, "stuck")
        st = statuses(resp)
        # good waited behind the hung call a quarter of the chain's shortest timeout
        # (popular's 100 ms), then ran on a thread of its own, and answered
        assert st["good"] == OK and st["bad"] == TIMEOUT
        assert channel("good").threads[-1] == "channel-good"
        assert "i1" in resp.item_ids
        assert REGISTRY.get_sample_value("recall_channel_hung_calls", {"channel": "bad"}) == (
            hung + 1
        )

        # bad is not quick any more: it gets its own thread, the others chain again
        resp = recall(s, "after")
        st = statuses(resp)
        assert st["good"] == OK and st["bad"] == TIMEOUT
        assert channel("good").threads[-1] == CHAIN
        assert channel("bad").threads[-1] == "channel-bad"

        CONTROL.release.set()
        assert wait_until(lambda: set(in_flight(s).values()) == {0})
        CONTROL.faults["bad"] = "none"
        assert set(statuses(recall(s, "released")).values()) == {OK}


def test_calls_a_hung_chain_never_reached_give_their_rooms_back(tmp_path):
    """The request's deadline passes before the rescue: the calls behind the hung one
    never run, and their rooms on their own bulkheads are given back at once."""
    cfg = config(
        tmp_path,
        popular=SLEEP_1MS,  # bad, which answers at once, runs first in the chain
        bad={"timeout_ms": 300, "params": {"items": ["i4"]}},
        good={"timeout_ms": 400, "params": {"items": ["i1"], **SLEEP_1MS}},
    )
    with serve(cfg, catalog_of(ITEMS)) as s:
        for n in range(3):
            recall(s, f"warm{n}")
        calls = {name: channel(name).calls for name in ("bad", "good", "popular")}
        CONTROL.faults["bad"] = "hang"
        with pytest.raises(grpc.RpcError) as e:
            recall(s, "short", timeout=0.02)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: in_flight(s)["good"] == 0 and in_flight(s)["popular"] == 0)
        assert channel("bad").calls - calls["bad"] >= 1
        CONTROL.release.set()
        assert wait_until(lambda: set(in_flight(s).values()) == {0})
        CONTROL.faults["bad"] = "none"
        assert set(statuses(recall(s, "released")).values()) == {OK}


SEARCH = {"fault": "search", "rows": 20_000, "searches": 3}  # ~1 ms per exact search
needs_two_cores = pytest.mark.skipif(usable_cores() < 2, reason="a fan-out needs two cores")


def warm(s, n: int = 4) -> None:
    for i in range(n):  # a few calls: the fastest is the one remembered
        assert set(statuses(recall(s, f"warm{i}")).values()) == {OK}


@needs_two_cores
def test_on_an_idle_host_calls_of_native_work_run_on_a_thread_each(tmp_path):
    """Exact usearch searches run without the GIL: two of them overlap on two cores, so
    with nothing else in flight the request's calls leave the chain."""
    cfg = config(tmp_path, a={"params": {"items": ["i1"], **SEARCH}}, b={"params": SEARCH})
    with serve(cfg, catalog_of(ITEMS)) as s:
        warm(s)
        slot = s.engine._state.slots["a"]
        kind = (False, False)
        assert slot.native(kind) >= 0.5 * slot.expected(kind) > 0  # counted by the index
        resp = recall(s, "then")
        assert set(statuses(resp).values()) == {OK} and "i1" in resp.item_ids
        assert channel("a").threads[-1] == "channel-a"
        assert channel("b").threads[-1] == "channel-b"


@needs_two_cores
def test_while_the_hosts_other_processes_are_busy_the_same_calls_chain(tmp_path):
    """Another serving process of the host has a request in flight (its slot in the
    group's file): two cores for two requests, none to spare, so the calls chain. Just
    after it ran two requests for a while the host is empty this instant but was busy
    (two closed-loop clients leave such gaps between an answer and the next request):
    still chained. Once that has passed, the calls fan out again."""
    slots = create_slots(tmp_path, 2)
    other = HostLoad(slots, 1)
    cfg = config(tmp_path, a={"params": {"items": ["i1"], **SEARCH}}, b={"params": SEARCH})

    def threads() -> tuple[str, str]:
        return channel("a").threads[-1], channel("b").threads[-1]

    with serve(cfg, catalog_of(ITEMS)) as s:
        s.engine.admission.host = HostLoad(slots, 0)  # this server as process 0 of 2
        warm(s)
        other.publish(1)
        assert set(statuses(recall(s, "busy")).values()) == {OK}
        assert threads() == (CHAIN, CHAIN)
        assert other.total() == 1  # this request has left again
        other.publish(2)
        time.sleep(0.1)
        other.publish(0)
        assert set(statuses(recall(s, "in the gap")).values()) == {OK}
        assert threads() == (CHAIN, CHAIN)
        time.sleep(0.4)  # eight time constants of the averages
        assert set(statuses(recall(s, "idle")).values()) == {OK}
        assert threads() == ("channel-a", "channel-b")


@needs_two_cores
def test_a_fanned_out_call_that_hangs_holds_up_no_other_call(tmp_path):
    """On an idle host each native call has a thread of its own: one that hangs
    times out alone, the other answers without waiting for it, and no room is kept
    once the hung call is released."""
    cfg = config(
        tmp_path,
        a={"timeout_ms": 2000, "params": {"items": ["i1"], **SEARCH}},
        bad={"timeout_ms": 300, "params": SEARCH},
    )
    with serve(cfg, catalog_of(ITEMS)) as s:
        warm(s)
        CONTROL.faults["bad"] = "hang"
        t0 = time.monotonic()
        resp = recall(s, "stuck")
        took = time.monotonic() - t0
        st = statuses(resp)
        assert st["a"] == OK and st["bad"] == TIMEOUT and "i1" in resp.item_ids
        assert channel("a").threads[-1] == "channel-a"
        assert channel("bad").threads[-1] == "channel-bad"
        assert took < 1.5  # bad's 300 ms timeout ends the request, not a's 2 s one
        CONTROL.release.set()
        assert wait_until(lambda: set(in_flight(s).values()) == {0})


@needs_two_cores
def test_without_fan_out_when_idle_native_calls_chain_too(tmp_path):
    cfg = config(
        tmp_path,
        overload={"fan_out_when_idle": False},
        a={"params": {"items": ["i1"], **SEARCH}},
        b={"params": SEARCH},
    )
    assert OverloadSettings.from_config(cfg.overload).fan_out_when_idle is False
    with serve(cfg, catalog_of(ITEMS)) as s:
        warm(s)
        assert set(statuses(recall(s, "then")).values()) == {OK}
        assert channel("a").threads[-1] == CHAIN and channel("b").threads[-1] == CHAIN


def test_fan_out_when_idle_must_be_a_boolean_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="overload.fan_out_when_idle"):
        config(tmp_path, overload={"fan_out_when_idle": "yes"})


@pytest.mark.parametrize(
    ("calls", "cores", "pays"),
    [
        # three searches of 2-3 ms, nearly all native: 7 ms chained, about 3.8 fanned
        ([(0.002, 0.0018), (0.003, 0.0028), (0.002, 0.0019)], 2, True),
        # the same on one core: nothing to overlap on
        ([(0.002, 0.0018), (0.003, 0.0028), (0.002, 0.0019)], 1, False),
        # Python calls (the demo's history requests): they take turns on the GIL anyway
        ([(0.001, 0.0001), (0.0008, 0.0), (0.0003, 0.0)], 8, False),
        # one long call and a short one: the fan-out still waits for the long one
        ([(0.004, 0.004), (0.0005, 0.0005)], 2, False),
        # tiny native calls: the hand-offs eat the overlap
        ([(0.0002, 0.0002), (0.0002, 0.0002)], 2, False),
        # a call never seen yet: nothing to predict with
        ([(math.inf, 0.0), (0.002, 0.002)], 2, False),
        ([(0.003, 0.003)], 2, False),  # one call: nothing to fan out
    ],
)
def test_fan_out_pays_only_where_native_work_overlaps(calls, cores, pays):
    assert fan_out_pays(calls, cores) is pays

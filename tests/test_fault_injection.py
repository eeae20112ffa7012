"""Fault injection: a channel that hangs, sleeps, raises, answers nonsense or leaks
threads costs only its own part of the response. Real gRPC server on a free port, the
fault plugin registered as a real entry point (tests/fault_plugins.py)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter

import grpc
import pytest
from prometheus_client import REGISTRY

from recall_engine._proto import recall_pb2
from recall_engine.serving.admission import OverloadSettings
from tests.fault_plugins import CONTROL, fault_site, faults  # noqa: F401 - fixtures
from tests.harness import catalog_of, make_config, serve

pytestmark = pytest.mark.usefixtures("faults")

ITEMS = [f"i{n}" for n in range(1, 13)]
OK, TIMEOUT, ERROR, SKIPPED, OVERLOADED = (
    recall_pb2.CHANNEL_STATUS_OK,
    recall_pb2.CHANNEL_STATUS_TIMEOUT,
    recall_pb2.CHANNEL_STATUS_ERROR,
    recall_pb2.CHANNEL_STATUS_SKIPPED,
    recall_pb2.CHANNEL_STATUS_OVERLOADED,
)


def config_with(tmp_path, bad: dict, *, weights=None, fallback_weight=0.1, **server):
    """A healthy channel ``good``, the fallback ``popular`` and a faulty ``bad``."""
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ["i9", "i10"]}},
        "good": {"plugin": "fault", "timeout_ms": 500, "params": {"items": ["i1", "i2", "i3"]}},
        "bad": {"plugin": "fault", "timeout_ms": 200, **bad},
    }
    w = weights or {"popular": fallback_weight, "good": 1.0, "bad": 1.0}
    return make_config({"server": server, "channels": channels, "plan": {"weights": w}}, tmp_path)


def statuses(resp) -> dict[str, recall_pb2.ChannelResult]:
    return {c.channel: c for c in resp.channels}


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


BAD_OUTPUTS = [
    ("nan", "not finite"),
    ("inf", "not finite"),
    ("duplicates", "duplicate"),
    ("mismatch", "scores of shape"),
    ("not_strings", "must be strings"),
    ("not_candidates", "not Candidates"),
]


@pytest.mark.parametrize(("fault", "says"), BAD_OUTPUTS)
def test_a_bad_answer_marks_only_that_channel_error_and_the_rest_is_fused(tmp_path, fault, says):
    config = config_with(tmp_path, {"params": {"items": ["i4", "i5", "i6"], "fault": fault}})
    before = metric("recall_channel_bad_output_total", channel="bad")
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
    st = statuses(resp)
    assert st["bad"].status == ERROR and says in st["bad"].error
    assert st["good"].status == OK and st["popular"].status == OK
    assert set(resp.item_ids) == {"i1", "i2", "i3", "i9", "i10"}
    assert metric("recall_channel_bad_output_total", channel="bad") == before + 1


@pytest.mark.parametrize("hook", ["accepts", "recall"])
def test_an_exception_in_a_channel_hook_is_that_channels_error_not_internal(tmp_path, hook):
    config = config_with(tmp_path, {"params": {"items": ["i4"], "fault": "raise", "hook": hook}})
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
    st = statuses(resp)
    assert st["bad"].status == ERROR
    assert f"{hook} raised RuntimeError: injected fault in {hook}" == st["bad"].error
    assert set(resp.item_ids) == {"i1", "i2", "i3", "i9", "i10"}


def test_a_channel_whose_encoder_wait_ends_at_the_deadline_is_timeout_not_error(tmp_path):
    """The micro-batcher under a channel gives up at the engine's call deadline with
    TimeoutError: that channel ran out of time (TIMEOUT), it did not fail (ERROR). A
    TimeoutError raised long before the deadline is the channel's own error."""
    config = config_with(
        tmp_path, {"timeout_ms": 100, "params": {"items": ["i4"], "fault": "encoder_deadline"}}
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
        assert statuses(resp)["bad"].status == TIMEOUT, statuses(resp)["bad"].error
        assert set(resp.item_ids) == {"i1", "i2", "i3", "i9", "i10"}
        CONTROL.faults["bad"] = "timeout_error"
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
        assert statuses(resp)["bad"].status == ERROR
        assert "TimeoutError" in statuses(resp)["bad"].error


def test_an_untrusted_channels_duplicates_are_repaired_but_nan_is_an_error(tmp_path):
    config = config_with(
        tmp_path,
        {"plugin": "fault_untrusted", "params": {"items": ["i4", "i5"], "fault": "duplicates"}},
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
        assert statuses(resp)["bad"].status == OK and statuses(resp)["bad"].returned == 2
        CONTROL.faults["bad"] = "nan"
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
        assert statuses(resp)["bad"].status == ERROR


def test_a_hung_channel_fills_only_its_own_bulkhead_and_is_then_refused_at_once(tmp_path):
    limit = 3
    overload = OverloadSettings(max_in_flight=32, channel_limits={"bad": limit})
    config = config_with(tmp_path, {"timeout_ms": 50, "params": {"items": ["i4"], "fault": "hang"}})
    abandoned = metric("recall_channel_abandoned_total", channel="bad")
    with serve(config, catalog_of(ITEMS), overload=overload) as s:
        for n in range(limit):  # each leaves one call hanging on the channel's own threads
            resp = s.stub.Recall(recall_pb2.RecallRequest(user_id=f"u{n}", k=10), timeout=5)
            assert statuses(resp)["bad"].status == TIMEOUT
            assert statuses(resp)["good"].status == OK
        assert metric("recall_channel_hung_calls", channel="bad") == limit
        assert metric("recall_channel_abandoned_total", channel="bad") == abandoned + limit
        for n in range(5):  # the bulkhead is full: refused without waiting its 50 ms
            resp = s.stub.Recall(recall_pb2.RecallRequest(user_id=f"v{n}", k=10), timeout=5)
            st = statuses(resp)
            assert st["bad"].status == OVERLOADED and st["bad"].error.startswith("overloaded")
            assert st["bad"].latency_ms == 0
            assert st["good"].status == OK and set(resp.item_ids) >= {"i1", "i2", "i3"}
        CONTROL.release.set()
        deadline = time.monotonic() + 10
        while metric("recall_channel_hung_calls", channel="bad") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert metric("recall_channel_hung_calls", channel="bad") == 0
        CONTROL.faults["bad"] = "none"
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="w", k=10), timeout=5)
        assert statuses(resp)["bad"].status == OK  # its threads came back


def test_the_fallback_answers_when_every_other_channel_hangs(tmp_path):
    config = make_config(
        {
            "channels": {
                "popular": {"plugin": "fault", "params": {"items": ["i9", "i10"]}},
                "cf": {"plugin": "fault", "timeout_ms": 50, "params": {"fault": "hang"}},
                "llm": {"plugin": "fault", "timeout_ms": 50, "params": {"fault": "hang"}},
            },
            "plan": {"weights": {"popular": 0.1, "cf": 1.0, "llm": 1.0}},
        },
        tmp_path,
    )
    overload = OverloadSettings(max_in_flight=8, channel_max_in_flight=2)
    with serve(config, catalog_of(ITEMS), overload=overload) as s:
        for n in range(12):  # past both hung channels' bulkheads: they are refused
            resp = s.stub.Recall(recall_pb2.RecallRequest(user_id=f"u{n}", k=5), timeout=5)
            assert list(resp.item_ids) == ["i9", "i10"]
            assert statuses(resp)["popular"].status == OK


def test_the_fallback_held_in_reserve_is_used_only_when_nothing_else_answered(tmp_path):
    config = config_with(
        tmp_path,
        {"params": {"items": ["i4"]}},
        weights={"popular": 0.0, "good": 1.0, "bad": 1.0},
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
        assert "i9" not in resp.item_ids
        assert statuses(resp)["popular"].status == SKIPPED
        assert "reserve" in statuses(resp)["popular"].error
        CONTROL.faults.update(good="raise", bad="nan")
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=5)
        assert list(resp.item_ids) == ["i9", "i10"]
        assert statuses(resp)["popular"].status == OK and statuses(resp)["popular"].weight == 1
        assert statuses(resp)["good"].status == ERROR and statuses(resp)["bad"].status == ERROR


FAULT_MIX = [
    ("hang", {"fault": "hang"}),
    ("sleepy", {"fault": "sleep", "sleep_s": 0.4}),
    ("raises", {"fault": "raise"}),
    ("accepts_raises", {"fault": "raise", "hook": "accepts"}),
    ("nan", {"fault": "nan"}),
    ("dups", {"fault": "duplicates"}),
    ("mismatch", {"fault": "mismatch"}),
    ("leaks", {"fault": "leak"}),
]


def test_under_concurrent_load_healthy_channels_answer_in_time_and_no_client_sees_internal(
    tmp_path,
):
    """8 clients, 40 calls each (bounded in count and time), against one healthy channel,
    the fallback and every kind of fault at once.

    The healthy channels' timeouts are 20x the faulty ones': a healthy call is starved
    only if the faults take its threads (then it times out, every time, once their
    bulkheads fill), not by a scheduling stall of this shared 2-core host, which once
    held a call past a 300 ms timeout in CI. Their typical latency is checked as the
    median."""
    healthy_ms = 2000
    channels = {
        "popular": {
            "plugin": "fault",
            "timeout_ms": healthy_ms,
            "params": {"items": ["i9", "i10"]},
        },
        "good": {
            "plugin": "fault",
            "timeout_ms": healthy_ms,
            "params": {"items": ["i1", "i2", "i3"]},
        },
    }
    for name, params in FAULT_MIX:
        channels[name] = {
            "plugin": "fault",
            "timeout_ms": 100,
            "params": {"items": ["i4", "i5", "i6"], **params},
        }
    config = make_config(
        {"channels": channels, "plan": {"weights": {n: 1.0 for n in channels}}}, tmp_path
    )
    codes: Counter[str] = Counter()
    latency: dict[str, list[float]] = {"good": [], "popular": []}
    missing: list[dict] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 60

    # A fixed bound above the client count: this test is about channel isolation (the
    # clients share this process, and so the GIL, with the server: its event loop lags
    # and its requests slow down, and adaptive admission would shed, see
    # test_admission.py).
    overload = OverloadSettings(max_in_flight=16, target_loop_lag_ms=None, latency_tolerance=None)
    with serve(config, catalog_of(ITEMS), overload=overload) as s:

        def client(c: int) -> None:
            for n in range(40):
                if time.monotonic() > stop_at:
                    return
                try:
                    resp = s.stub.Recall(
                        recall_pb2.RecallRequest(user_id=f"u{c}-{n}", k=10), timeout=5
                    )
                except grpc.RpcError as e:
                    with lock:
                        codes[e.code().name] += 1
                    continue
                st = statuses(resp)
                with lock:
                    codes["OK"] += 1
                    for healthy in ("good", "popular"):
                        if st[healthy].status != OK:
                            missing.append({healthy: st[healthy].status})
                        else:
                            latency[healthy].append(st[healthy].latency_ms)
                    if not {"i1", "i2", "i3", "i9", "i10"} <= set(resp.item_ids):
                        missing.append({"items": list(resp.item_ids)})

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    assert "INTERNAL" not in codes and "UNKNOWN" not in codes, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= 200, codes
    assert not missing, missing[:5]
    for healthy, ms in latency.items():  # answered at once, not near a fault's timeout
        assert statistics.median(ms) < 50, (healthy, sorted(ms)[-5:])

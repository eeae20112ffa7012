"""The fallback held in reserve (weight 0 in the plan) runs only when it may be needed:
after the other channels are over with no candidate, after half the others' shortest
timeout, or once the request has no more than the fallback's own timeout left; when
another channel answered first it is never called. Real gRPC server on a free port,
the fault plugin as a real entry point."""

from __future__ import annotations

import pytest

from recall_engine._proto import recall_pb2
from tests.fault_plugins import CONTROL, INSTANCES, fault_site, faults  # noqa: F401 - fixtures
from tests.harness import catalog_of, make_config, serve

pytestmark = pytest.mark.usefixtures("faults")

ITEMS = [f"i{n}" for n in range(1, 13)]
OK, SKIPPED, TIMEOUT = (
    recall_pb2.CHANNEL_STATUS_OK,
    recall_pb2.CHANNEL_STATUS_SKIPPED,
    recall_pb2.CHANNEL_STATUS_TIMEOUT,
)


def reserve_config(tmp_path, good: dict, other: dict, fallback_timeout_ms: int = 2000):
    # the fallback's timeout leaves its thread room to start on a loaded host
    channels = {
        "popular": {
            "plugin": "fault",
            "required": True,
            "timeout_ms": fallback_timeout_ms,
            "params": {"items": ["i9", "i10"]},
        },
        "good": {"plugin": "fault", **good},
        "other": {"plugin": "fault", **other},
    }
    weights = {"popular": 0.0, "good": 1.0, "other": 1.0}
    return make_config({"channels": channels, "plan": {"weights": weights}}, tmp_path)


def statuses(resp) -> dict[str, recall_pb2.ChannelResult]:
    return {c.channel: c for c in resp.channels}


def calls_of(name: str) -> int:
    return sum(c.calls for c in INSTANCES if c.ctx.name == name)


def test_the_fallback_in_reserve_is_never_called_when_another_channel_answered(tmp_path):
    # long timeouts: the fallback would start after half of them (hedging a slow
    # channel), which a loaded host must not reach here
    config = reserve_config(
        tmp_path,
        {"timeout_ms": 20000, "params": {"items": ["i1", "i2"]}},
        {"timeout_ms": 20000, "params": {"items": ["i3"]}},
        fallback_timeout_ms=100,
    )
    with serve(config, catalog_of(ITEMS)) as s:
        for n in range(20):
            resp = s.stub.Recall(recall_pb2.RecallRequest(user_id=f"u{n}", k=5), timeout=5)
            assert set(resp.item_ids) == {"i1", "i2", "i3"}
            popular = statuses(resp)["popular"]
            assert popular.status == SKIPPED and "reserve" in popular.error
        assert calls_of("popular") == 0
        assert calls_of("good") == 20


def test_the_fallback_in_reserve_answers_when_the_others_answer_nothing(tmp_path):
    # one channel answers empty, the other times out: the fallback runs after them
    config = reserve_config(
        tmp_path,
        {"params": {"items": []}},
        {"timeout_ms": 50, "params": {"fault": "hang"}},
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5), timeout=5)
        assert list(resp.item_ids) == ["i9", "i10"]
        st = statuses(resp)
        assert st["popular"].status == OK and st["popular"].weight == 1
        assert st["good"].status == OK and st["other"].status == TIMEOUT
        CONTROL.release.set()


def test_the_fallback_in_reserve_answers_beside_slow_channels_that_time_out(tmp_path):
    # the others hang past their 1 s timeouts: the fallback, started after half of
    # that (or at their timeout at the latest), answers, once
    config = reserve_config(
        tmp_path,
        {"timeout_ms": 1000, "params": {"fault": "hang"}},
        {"timeout_ms": 1000, "params": {"fault": "hang"}},
        fallback_timeout_ms=2000,
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5), timeout=10)
        assert list(resp.item_ids) == ["i9", "i10"]
        st = statuses(resp)
        assert st["popular"].status == OK
        assert st["good"].status == TIMEOUT and st["other"].status == TIMEOUT
        assert calls_of("popular") == 1
        CONTROL.release.set()


def test_the_fallback_in_reserve_starts_in_time_when_the_others_outlive_the_request(tmp_path):
    # both others hang with timeouts longer than the request's deadline (the server's
    # request_timeout_ms, 500 ms: the client gives none): the fallback starts when only
    # its own timeout (250 ms) is left, and answers
    config = reserve_config(
        tmp_path,
        {"timeout_ms": 5000, "params": {"fault": "hang"}},
        {"timeout_ms": 5000, "params": {"fault": "hang"}},
        fallback_timeout_ms=250,
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5))
        assert list(resp.item_ids) == ["i9", "i10"]
        st = statuses(resp)
        assert st["popular"].status == OK
        assert st["good"].status == TIMEOUT and st["other"].status == TIMEOUT
        CONTROL.release.set()

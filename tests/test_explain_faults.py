"""``RecallRequest.explain`` when a channel's ``explain`` fails, hangs, or is asked far
more often than it can answer: real servers on 127.0.0.1, the fault plugins registered
as real entry points (tests/fault_plugins.py, ``fault_explain``). Evidence is a debugging
aid any caller may ask for, so one channel's bad explain must cost that channel's
evidence only: never the response, the deadline, nor the server's other work (admin
calls and catalogue syncs run on worker threads too)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from recall_engine._proto import admin_pb2, recall_pb2
from recall_engine.client._model import result_of
from recall_engine.serving.explain import EXPLAIN_PENDING, EXPLAIN_WORKERS
from tests.fault_plugins import CONTROL, INSTANCES, fault_site, faults  # noqa: F401 - fixtures
from tests.harness import catalog_of, make_config, serve
from tests.helpers import wait_until

ITEMS = [f"i{n}" for n in range(1, 9)]
TOKEN = "s3cret-token"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)


def config_for(tmp_path, bad: dict, **good):
    channels = {
        "popular": {"plugin": "fault", "required": True, "params": {"items": ITEMS[6:]}},
        "good": {"plugin": "fault_explain", "params": {"items": ITEMS[:4], **good}},
        "bad": {"plugin": "fault_explain", "timeout_ms": 2000, "params": bad},
    }
    return make_config(
        {
            "admin": {"token": TOKEN},
            "channels": channels,
            "plan": {"weights": {"popular": 0.1, "good": 1.0, "bad": 1.0}},
        },
        tmp_path,
    )


def explained(served, timeout: float = 10.0, **fields):
    request = recall_pb2.RecallRequest(user_id="u", k=6, explain=True, **fields)
    return result_of(served.stub.Recall(request, timeout=timeout))


def the_bad_channel():
    return next(c for c in reversed(INSTANCES) if c.ctx.name == "bad")


def evidence_of(result, channel: str) -> dict[str, int]:
    return {
        c.item_id: e.popularity_rank
        for c in result.candidates
        for e in c.explanation.evidence
        if e.channel == channel
    }


@pytest.mark.usefixtures("faults")
def test_an_explain_that_raises_costs_its_channel_its_evidence_and_nothing_else(tmp_path):
    bad = {"items": ITEMS[3:6], "fault": "raise", "hook": "explain"}
    with serve(config_for(tmp_path, bad), catalog_of(ITEMS)) as s:
        got = explained(s)
        plain = result_of(s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=6), timeout=10))
    assert got.item_ids == plain.item_ids  # the same candidates as without explain
    assert {ch.channel: ch.status.name for ch in got.channels} == {
        "popular": "OK",
        "good": "OK",
        "bad": "OK",
    }
    errors = got.explanation.channel_errors
    assert set(errors) == {"bad"}
    assert "explain raised RuntimeError: injected fault in explain" in errors["bad"]
    # good's evidence is whole: every candidate it returned, at its position in its items
    good_items = [c.item_id for c in got.candidates if c.hit("good")]
    assert evidence_of(got, "good") == {i: ITEMS.index(i) + 1 for i in good_items}
    assert evidence_of(got, "bad") == {}


@pytest.mark.usefixtures("faults")
def test_a_hung_explain_gives_up_at_the_deadline_with_the_candidates(tmp_path):
    bad = {"items": ITEMS[3:6], "fault": "explain_hang"}
    with serve(config_for(tmp_path, bad), catalog_of(ITEMS)) as s:
        started = time.perf_counter()
        got = explained(s, timeout=1.0)  # the client's deadline is the request's
        took = time.perf_counter() - started
    assert 0.5 < took < 1.0  # waited for evidence, and left time for the answer
    assert len(got.item_ids) == 6 and all(c.explanation for c in got.candidates)
    assert got.explanation.channel_errors == {"bad": "no evidence within the request's deadline"}
    # good answered before bad hung (channel order): its evidence is kept
    good_items = [c.item_id for c in got.candidates if c.hit("good")]
    assert evidence_of(got, "good") == {i: ITEMS.index(i) + 1 for i in good_items}


@pytest.mark.usefixtures("faults")
def test_explains_stuck_on_a_hung_channel_block_neither_admin_calls_nor_later_answers(tmp_path):
    """A caller asks for explanations over and over while one channel's explain hangs:
    the explain workers fill up, and past that each request is answered at once with
    its candidates and 'busy' instead of queueing work behind the hung ones. Admin calls
    (which run on the event loop's default worker threads) still answer, and once the
    channel is released the explains of requests long answered are not run."""
    bad = {"items": ITEMS[3:6], "fault": "explain_hang"}
    config = config_for(tmp_path, bad)
    asks = EXPLAIN_PENDING + 12
    with serve(config, catalog_of(ITEMS), reload_config=lambda: config) as s:
        channel = the_bad_channel()

        def ask(_):
            started = time.perf_counter()
            got = explained(s, timeout=1.0)
            return got, time.perf_counter() - started

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(asks)))
        assert all(len(got.item_ids) == 6 for got, _ in answers)
        reasons = [got.explanation.channel_errors.get("bad", "") for got, _ in answers]
        assert all(reason for reason in reasons), reasons
        busy = [took for (got, took), r in zip(answers, reasons, strict=True) if "busy" in r]
        assert len(busy) >= asks - EXPLAIN_PENDING  # answered without waiting their turn
        assert max(busy) < 0.5
        assert channel.explained <= EXPLAIN_WORKERS  # no more calls than workers hang in

        # the default worker threads are free: an admin call answers
        reply = s.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=ADMIN, timeout=5)
        assert reply.config_generation >= 1

        hung = channel.explained
        CONTROL.release.set()
        # the hung explains return; nothing queued behind them runs for requests gone
        wait_until(lambda: _explain_threads_idle(), 10, what="the explain workers to finish")
        assert channel.explained == hung

        CONTROL.release.clear()
        CONTROL.faults["bad"] = "none"
        after = explained(s)
    assert after.explanation.channel_errors == {}
    bad_items = [c.item_id for c in after.candidates if c.hit("bad")]
    bad_ranks = {i: ITEMS[3:6].index(i) + 1 for i in bad_items}  # its place in its own items
    assert bad_items and evidence_of(after, "bad") == bad_ranks


def _explain_threads_idle() -> bool:
    from recall_engine.serving import explain

    return explain.pending_explains() == 0


@pytest.mark.usefixtures("faults")
def test_a_late_explain_is_not_started_once_its_deadline_has_passed(tmp_path):
    """Explains wait their turn behind a slow one; those whose request is already
    answered when their turn comes are dropped without calling the channel."""
    bad = {"items": ITEMS[3:6], "fault": "explain_hang"}
    with serve(config_for(tmp_path, bad), catalog_of(ITEMS)) as s:
        channel = the_bad_channel()
        threads = [
            threading.Thread(target=explained, args=(s,), kwargs={"timeout": 1.0})
            for _ in range(EXPLAIN_WORKERS + 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert channel.explained == EXPLAIN_WORKERS
        CONTROL.release.set()
        wait_until(lambda: _explain_threads_idle(), 10, what="the explain workers to finish")
        assert channel.explained == EXPLAIN_WORKERS  # the one that waited was dropped


@pytest.mark.usefixtures("faults")
def test_explain_off_never_calls_a_channels_explain(tmp_path):
    bad = {"items": ITEMS[3:6], "fault": "explain_hang"}
    with serve(config_for(tmp_path, bad), catalog_of(ITEMS)) as s:
        channel = the_bad_channel()
        for _ in range(5):
            resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=6), timeout=5)
            assert not resp.HasField("explanation")
        assert channel.explained == 0


@pytest.mark.usefixtures("faults")
def test_the_grpc_status_of_an_explained_request_is_ok_even_when_every_explain_fails(tmp_path):
    bad = {"items": ITEMS[3:6], "fault": "raise", "hook": "explain"}
    cfg = config_for(tmp_path, bad, fault="raise", hook="explain")
    with serve(cfg, catalog_of(ITEMS)) as s:
        try:
            got = explained(s)
        except grpc.RpcError as e:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"explain failures failed the call: {e.code()} {e.details()}")
    assert set(got.explanation.channel_errors) == {"good", "bad"}


def test_a_job_that_raises_leaves_its_worker_serving_the_next_jobs():
    """A bug in a job (not a channel's explain: those are caught per channel) must not
    kill a worker or leak its pending count: the next jobs still run."""
    from recall_engine.serving.explain_workers import ExplainWorkers

    workers = ExplainWorkers(workers=1, limit=4)
    ran = threading.Event()

    def broken() -> None:
        raise RuntimeError("a bug in the job")

    assert workers.try_submit(broken)
    assert workers.try_submit(ran.set)
    assert ran.wait(10)
    wait_until(lambda: workers.pending() == 0, 10, what="the pending count to drain")

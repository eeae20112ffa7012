"""serve --processes N keeps its workers up: a worker killed with SIGKILL is reaped,
logged and restarted; the parent exits non-zero because a worker died abnormally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from recall_engine._proto import recall_pb2, recall_pb2_grpc
from tests.harness import catalog_of

CONFIG = """
[server]
addr = "127.0.0.1:0"
metrics_addr = ""
grace_s = 2

[channels.a]
plugin = "fixed"
params = { items = ["i1", "i2", "i3"] }
"""


class Parent:
    def __init__(self, tmp_path: Path, fake_plugins: Path, extra: str = "") -> None:
        catalog_of(["i1", "i2", "i3"]).save(tmp_path / "artifacts" / "catalog")
        config = tmp_path / "recall.toml"
        config.write_text(CONFIG + extra)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_plugins), os.getcwd()])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recall_engine", "serve", "--config", str(config)]
            + ["--processes", "2", "--log-json"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                self.events.append(event)

    def named(self, name: str) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e.get("event") == name]

    def wait_for(self, name: str, count: int, timeout: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.named(name)) < count:
            assert self.proc.poll() is None, self.events
            assert time.monotonic() < deadline, f"no {count} x {name}: {self.events}"
            time.sleep(0.05)
        return self.named(name)


def _recall(port: int) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = recall_pb2_grpc.RecallServiceStub(ch)
        return list(stub.Recall(recall_pb2.RecallRequest(user_id="u", k=2), timeout=10).item_ids)


def _gone(pid: int) -> bool:
    """True once ``pid`` is reaped: a zombie still has its /proc entry."""
    return not Path(f"/proc/{pid}").exists()


def test_a_killed_worker_is_reaped_restarted_and_the_parent_exits_non_zero(tmp_path, fake_plugins):
    parent = Parent(tmp_path, fake_plugins)
    try:
        parent.wait_for("serving", 2)
        started = parent.named("processes_started")[0]
        port = int(started["addr"].rsplit(":", 1)[1])
        assert port != 0 and _recall(port) == ["i1", "i2"]

        victim = started["pids"][0]
        os.kill(victim, signal.SIGKILL)
        died = parent.wait_for("worker_died", 1)[0]
        assert died["pid"] == victim and died["cause"] == "signal SIGKILL"
        deadline = time.monotonic() + 10
        while not _gone(victim):  # reaped at once, not left a zombie
            assert time.monotonic() < deadline, f"worker {victim} was not reaped"
            time.sleep(0.05)
        restarted = parent.wait_for("worker_restarted", 1)[0]
        assert restarted["slot"] == 0 and restarted["restarts"] == 1
        parent.wait_for("serving", 3)  # the new worker loaded and serves
        assert _recall(port) == ["i1", "i2"]
    finally:
        parent.proc.send_signal(signal.SIGTERM)
        code = parent.proc.wait(60)
    assert code == 1, parent.events


def test_a_slot_that_keeps_dying_right_after_start_stops_the_group_with_exit_1(capsys):
    """A worker that cannot start (a config or artifact that will not load) is not
    restarted for ever: after ``max_quick_deaths`` quick deaths in a row the parent stops
    the other workers and returns 1, naming the slot."""
    from recall_engine.serving.workers import WorkerPool

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    crasher = [sys.executable, "-c", "import sys; sys.exit(3)"]
    seen_restarts: list[int] = []

    def command(index: int, restarts: int) -> tuple[list[str], dict[str, str]]:
        if index == 1:
            seen_restarts.append(restarts)
        return (crasher if index == 1 else sleeper), dict(os.environ)

    pool = WorkerPool(2, command, max_quick_deaths=3, backoff_s=(0.01, 0.05), poll_s=0.01)
    assert pool.run() == 1
    assert seen_restarts == [0, 1, 2]  # started, then restarted twice, then given up on
    out = capsys.readouterr()
    logs = out.out + out.err
    assert "worker_giving_up" in logs and "exit code 3" in logs


def test_a_worker_that_fails_its_first_start_stops_the_group_at_once_with_its_code(
    tmp_path, fake_plugins
):
    """A start-up that fails (here a required channel that cannot load) fails the same
    way on a retry: the parent does not restart the worker with backoff but stops the
    group and exits with the worker's code, as one process exits."""
    started = time.monotonic()
    parent = Parent(
        tmp_path, fake_plugins, '[channels.faulty]\nplugin = "fail_load"\nrequired = true\n'
    )
    code = parent.proc.wait(120)
    assert code == 1, parent.events
    failed = parent.named("worker_failed_to_start")
    assert failed and failed[0]["cause"] == "exit code 1"
    assert parent.named("startup_failed")  # the worker's own reason is logged
    assert not parent.named("worker_restarted") and not parent.named("serving")
    assert time.monotonic() - started < 60  # no round of backoffs (0.5 s doubling, x5)


def test_a_worker_that_served_then_died_is_restarted_and_one_that_never_served_is_not():
    """The rule in :class:`WorkerPool`: ``served`` tells a crash (restart it) from a
    start-up that failed (stop, with the worker's exit code)."""
    from recall_engine.serving.workers import WorkerPool

    crasher = [sys.executable, "-c", "import sys; sys.exit(3)"]
    starts: list[int] = []

    def command(index: int, restarts: int) -> tuple[list[str], dict[str, str]]:
        starts.append(restarts)
        return crasher, dict(os.environ)

    never = WorkerPool(1, command, served=lambda i: False, backoff_s=(0.01, 0.05), poll_s=0.01)
    assert never.run() == 3
    assert starts == [0]  # not restarted
    starts.clear()
    once = WorkerPool(
        1, command, served=lambda i: True, max_quick_deaths=2, backoff_s=(0.01, 0.05), poll_s=0.01
    )
    assert once.run() == 1  # restarted until the quick-death rule gives up
    assert starts == [0, 1]


def test_sigterm_while_the_workers_load_is_a_clean_stop(tmp_path, fake_plugins):
    """A worker still loading has no signal handler yet, so the forwarded SIGTERM ends
    it; that is the stop that was asked for, not a worker dying: exit 0."""
    slow = '[channels.slow]\nplugin = "slow_load"\nparams = { load_s = 60 }\n'
    parent = Parent(tmp_path, fake_plugins, slow)
    try:
        parent.wait_for("loading", 2)  # both workers are in their load
        assert not parent.named("serving")
    finally:
        parent.proc.send_signal(signal.SIGTERM)
        code = parent.proc.wait(60)
    assert code == 0, parent.events
    assert not parent.named("worker_failed_to_start") and not parent.named("worker_restarted")


def _recall_on_a_new_connection(port: int) -> list[str]:
    """One call on a connection of its own (no subchannel shared with earlier calls), so
    the kernel picks a worker for it."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        stub = recall_pb2_grpc.RecallServiceStub(ch)
        return list(stub.Recall(recall_pb2.RecallRequest(user_id="u", k=2), timeout=3).item_ids)


def test_a_restarted_worker_takes_no_connection_until_it_serves(tmp_path, fake_plugins):
    """On the shared port the kernel hands every worker that listens its share of new
    connections. A worker loading after a restart must not listen yet: the clients that
    reconnect after the crash would land on it and wait while the other worker serves."""
    slow = '[channels.slow]\nplugin = "slow_load"\nparams = { load_s = 4, items = ["i3"] }\n'
    parent = Parent(tmp_path, fake_plugins, slow)
    try:
        parent.wait_for("serving", 2)
        started = parent.named("processes_started")[0]
        port = int(started["addr"].rsplit(":", 1)[1])
        os.kill(started["pids"][0], signal.SIGKILL)
        parent.wait_for("worker_restarted", 1)
        parent.wait_for("loading", 3)  # the new worker is in its 4 s load
        calls, failures = 0, []
        while len(parent.named("serving")) < 3 and calls < 100:
            try:
                assert _recall_on_a_new_connection(port)
            except grpc.RpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")
            calls += 1
        assert calls >= 10 and failures == [], failures
        parent.wait_for("serving", 3)
    finally:
        parent.proc.send_signal(signal.SIGTERM)
        parent.proc.wait(60)

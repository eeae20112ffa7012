"""Shutdown a load balancer can see: on SIGTERM health turns NOT_SERVING while calls are
still answered for server.drain_s, then the listener closes and the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recall_engine._proto import recall_pb2, recall_pb2_grpc
from tests.harness import catalog_of

CONFIG = """
[server]
addr = "127.0.0.1:0"
metrics_addr = ""
drain_s = 3
grace_s = 2

[channels.a]
plugin = "fixed"
params = { items = ["i1", "i2"] }
"""


def test_sigterm_reports_not_serving_during_the_drain_window_while_still_answering(
    tmp_path, fake_plugins
):
    catalog_of(["i1", "i2"]).save(tmp_path / "artifacts" / "catalog")
    (tmp_path / "recall.toml").write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_plugins), os.getcwd()])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recall_engine", "serve", "--config", str(tmp_path / "recall.toml")]
        + ["--log-json"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[dict] = []
    serving = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
            # every process serves (serve's default runs one per core): a health check
            # on the shared port may reach any of them
            started = [e for e in events if e.get("event") == "processes_started"]
            expected = started[0]["count"] if started else 1
            if sum(e.get("event") == "serving" for e in events) >= expected:
                serving.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert serving.wait(60), events
        addr = next(e["addr"] for e in events if e.get("event") == "server_listening")
        with grpc.insecure_channel(addr) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            recall = recall_pb2_grpc.RecallServiceStub(ch)
            ok = health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == ok
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == ok:
                assert time.monotonic() < deadline, "health never left SERVING"
                time.sleep(0.05)
            # draining: NOT_SERVING, and calls are still answered
            resp = recall.Recall(recall_pb2.RecallRequest(user_id="u", k=1), timeout=5)
            assert list(resp.item_ids) == ["i1"] and proc.poll() is None
        assert proc.wait(30) == 0
        names = [e.get("event") for e in events]
        assert names.index("draining") < names.index("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()

"""`recall-engine serve` as a real process: start-up, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recall_engine._proto import recall_pb2, recall_pb2_grpc
from tests.harness import catalog_of

CONFIG = """
[server]
addr = "127.0.0.1:0"
metrics_addr = "127.0.0.1:0"
grace_s = 10
request_timeout_ms = 5000

[channels.a]
plugin = "fixed"
params = {{ items = ["i1", "i2", "i3"] }}

[channels.b]
plugin = "hang"
timeout_ms = 4000
params = {{ items = ["i9", "i8"], sleep_s = {sleep} }}

[plan]
weights = {{ a = {wa}, b = 1.0 }}
"""


def write_config(path: Path, wa: float, sleep: float = 0.0) -> None:
    path.write_text(CONFIG.format(wa=wa, sleep=sleep))


class ServerProcess:
    def __init__(self, config: Path, fake_site: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_site), os.getcwd()])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recall_engine", "serve", "--config", str(config),
             "--log-json"], env=env, stderr=subprocess.PIPE, text=True)
        self.events: list[str] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60) or self.port is None:
            self.proc.kill()
            raise AssertionError("server did not start:\n" + "\n".join(self.events))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.events.append(line.rstrip())
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "server_listening":
                self.port = int(event["addr"].rsplit(":", 1)[1])
            if event.get("event") == "metrics_listening":
                self.metrics_port = int(event["port"])
            if event.get("event") == "serving":
                self._ready.set()
        self._ready.set()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")


@pytest.fixture()
def config_path(tmp_path):
    catalog_of([f"i{n}" for n in range(1, 10)]).save(tmp_path / "artifacts" / "catalog")
    path = tmp_path / "recall.toml"
    write_config(path, wa=1.0)
    return path


def test_sighup_reloads_weights_and_sigterm_drains_in_flight_calls(config_path, fake_plugins):
    server = ServerProcess(config_path, fake_plugins)
    try:
        ch = server.channel()
        stub = recall_pb2_grpc.RecallServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
            metrics = r.read().decode()
        assert 'recall_requests_total{method="Recall",status="OK"} 1.0' in metrics
        assert 'recall_variant_requests_total{experiment="",variant="default"} 1.0' in metrics
        assert 'recall_channel_seconds_count{channel="a",status="ok"} 1.0' in metrics
        assert any('"variant": "default"' in e and '"recall"' in e for e in server.events)

        write_config(config_path, wa=0.0, sleep=1.5)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while time.time() < deadline:
            got = list(stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids)
            if got == ["i9"]:
                break
            time.sleep(0.2)
        assert got == ["i9"], server.events

        # an in-flight call (channel b sleeps 1.5 s) must finish after SIGTERM
        future = stub.Recall.future(recall_pb2.RecallRequest(user_id="u", k=2))
        time.sleep(0.4)
        server.proc.send_signal(signal.SIGTERM)
        resp = future.result(timeout=15)
        assert list(resp.item_ids) == ["i9", "i8"]
        assert server.proc.wait(20) == 0
        assert any('"shutting_down"' in e for e in server.events)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_invalid_config_exits_nonzero_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[channels.a]\nplugin = "fixed"\ntimeout_ms = -5\n')
    proc = subprocess.run([sys.executable, "-m", "recall_engine", "serve", "--config", str(path),
                           "--log-json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    err = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any("channels.a.timeout_ms" in e.get("error", "") for e in err), proc.stderr

"""`recall-engine serve` as a real process: start-up, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recall_engine._proto import admin_pb2, admin_pb2_grpc, recall_pb2, recall_pb2_grpc
from tests.harness import ServeProcess, catalog_of, two_popular_versions
from tests.helpers import reserve_consecutive_ports, wait_until

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


@pytest.fixture()
def config_path(tmp_path):
    catalog_of([f"i{n}" for n in range(1, 10)]).save(tmp_path / "artifacts" / "catalog")
    path = tmp_path / "recall.toml"
    write_config(path, wa=1.0)
    return path


def test_sighup_reloads_weights_and_sigterm_drains_in_flight_calls(config_path, fake_plugins):
    # one process: the call and the /metrics scrape below must meet in the same one
    server = ServeProcess(config_path, fake_site=fake_plugins, processes=1)
    try:
        ch = server.channel()
        stub = recall_pb2_grpc.RecallServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        assert stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
            metrics = r.read().decode()
        assert 'recall_requests_total{method="Recall",status="OK"} 1.0' in metrics
        assert 'recall_variant_requests_total{experiment="",variant="default"} 1.0' in metrics
        assert 'recall_channel_seconds_count{channel="a",status="ok"} 1.0' in metrics
        assert any('"variant": "default"' in e and '"recall"' in e for e in server.events)

        write_config(config_path, wa=0.0, sleep=0.5)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i9"],
            20,
            what=lambda: f"the reloaded weights: {server.events}",
        )

        # an in-flight call (channel b sleeps 0.5 s) must finish after SIGTERM
        future = stub.Recall.future(recall_pb2.RecallRequest(user_id="u", k=2))
        wait_until(
            lambda: _metric(server.metrics_port, 'recall_channel_in_flight{channel="b"}') >= 1,
            10,
            what="the call to reach channel b",
        )
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
    proc = subprocess.run(
        [sys.executable, "-m", "recall_engine", "serve", "--config", str(path), "--log-json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    err = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any("channels.a.timeout_ms" in e.get("error", "") for e in err), proc.stderr


def test_a_taken_metrics_port_stops_start_up_naming_the_key_without_a_traceback(
    config_path, fake_plugins
):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = config_path.read_text().replace(
            'metrics_addr = "127.0.0.1:0"', f'metrics_addr = "127.0.0.1:{port}"'
        )
        config_path.write_text(text)
        proc = subprocess.run(
            [sys.executable, "-m", "recall_engine", "serve", "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1
    failed = [
        json.loads(line)
        for line in proc.stderr.splitlines()
        if line.startswith("{") and "startup_failed" in line
    ]
    assert failed and f"server.metrics_addr 127.0.0.1:{port}" in failed[0]["error"], proc.stderr
    assert "Traceback" not in proc.stderr and "never awaited" not in proc.stderr, proc.stderr


def _metric(metrics_port: int, series: str) -> float:
    """The value of ``series`` (name and labels, as exposed) on a /metrics page, 0 if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def _recall_ok(metrics_port: int) -> float:
    return _metric(metrics_port, 'recall_requests_total{method="Recall",status="OK"}')


FIXED_CHANNEL = """
[channels.a]
plugin = "fixed"
params = { items = ["i1", "i2", "i3"] }
"""


class Processes:
    """``serve --processes 2`` with ``worker_port_base``; by default the fixed channel
    over a catalogue of i1-i9 (other ``channels`` bring their own artifacts).

    The shared port and each process's /metrics port are port 0, read back from the
    log (``processes_started``, ``metrics_listening``). ``worker_port_base`` is a fixed
    base by design (process i listens on base + i), so the test reserves two
    consecutive ports and holds them until the server is gone."""

    def __init__(
        self, tmp_path: Path, fake_plugins: Path, extra: str = "", channels: str = FIXED_CHANNEL
    ) -> None:
        if channels == FIXED_CHANNEL:
            catalog_of([f"i{n}" for n in range(1, 10)]).save(tmp_path / "artifacts" / "catalog")
        self.workers, self._held = reserve_consecutive_ports(2)
        config = tmp_path / "recall.toml"
        config.write_text(f"""
[server]
addr = "127.0.0.1:0"
metrics_addr = "127.0.0.1:0"
worker_port_base = {self.workers}
{extra}
{channels}""")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_plugins), os.getcwd()])}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recall_engine",
                "serve",
                "--config",
                str(config),
                "--processes",
                "2",
                "--log-json",
            ],
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[str] = []
        threading.Thread(target=lambda: self.events.extend(self.proc.stderr), daemon=True).start()
        try:
            wait_until(
                lambda: (
                    self.proc.poll() is not None
                    or (len(self.named("serving")) == 2 and self.named("processes_started"))
                ),
                90,
                what=lambda: f"two serving processes: {''.join(self.events)}",
            )
            assert self.proc.poll() is None, "".join(self.events)
        except AssertionError:
            self.stop()
            raise AssertionError("".join(self.events)) from None
        self.started = self.named("processes_started")[0]
        self.shared = int(self.started["addr"].rpartition(":")[2])
        self.metrics = sorted(e["port"] for e in self.named("metrics_listening"))

    def named(self, event: str) -> list[dict]:
        return [json.loads(e) for e in list(self.events) if f'"event": "{event}"' in e]

    def recall(self, port: int, k: int = 3) -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = recall_pb2_grpc.RecallServiceStub(ch)
            return list(
                stub.Recall(recall_pb2.RecallRequest(user_id="u", k=k), timeout=10).item_ids
            )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for sock in self._held:
            sock.close()


def test_processes_listen_on_their_own_ports_and_round_robin_splits_calls_evenly(
    tmp_path, fake_plugins
):
    """serve --processes 2 with server.worker_port_base: each process answers on the
    shared port and on its own; bench load over the two worker addresses (gRPC
    round_robin) puts the same number of calls on each process, where the shared
    port leaves the split to the kernel's hash of a few connections."""
    server = Processes(tmp_path, fake_plugins)
    workers, metrics = server.workers, server.metrics
    try:
        started = server.started
        assert started["worker_addrs"] == [f"127.0.0.1:{workers}", f"127.0.0.1:{workers + 1}"]
        assert len(metrics) == 2
        # each process counts the other's requests in flight (serving/host_load.py)
        assert [e["host_load"] for e in server.named("serving")] == ["group", "group"]
        for port in (server.shared, workers, workers + 1):
            assert server.recall(port, k=2) == ["i1", "i2"]
        before = [_recall_ok(port) for port in metrics]
        out = tmp_path / "load.json"
        load = subprocess.run(
            [
                sys.executable,
                "-m",
                "recall_engine",
                "bench",
                "load",
                "--addr",
                f"127.0.0.1:{workers},127.0.0.1:{workers + 1}",
                "--artifacts",
                str(tmp_path / "artifacts"),
                "--concurrency",
                "4",
                "--duration",
                "2",
                "--warmup",
                "0.5",
                "--grpc-channels",
                "4",
                "--json",
                str(out),
            ],
            env=server.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert load.returncode == 0, load.stderr
        summary = json.loads(out.read_text())
        assert summary["ok"] > 50 and not summary["errors"]
        calls = [_recall_ok(port) - was for port, was in zip(metrics, before, strict=True)]
        # Each of the 4 client channels alternates between the two processes; a channel
        # sends its first calls to whichever connection is ready first, hence the 1 %.
        # (Four connections hashed onto two processes split 2:2, 3:1 or 4:0.)
        assert min(calls) > 0 and abs(calls[0] - calls[1]) <= 4 + 0.01 * sum(calls), calls
    finally:
        server.stop()


def test_an_admin_delete_sent_to_one_process_reaches_the_other(tmp_path, fake_plugins):
    """An admin call lands on one process; the others apply it from the catalogue's
    update log within server.catalog_sync_ms."""
    server = Processes(tmp_path, fake_plugins, 'catalog_sync_ms = 200\n[admin]\ntoken = "t0ken"\n')
    first, second = server.workers, server.workers + 1
    try:
        assert server.recall(second) == ["i1", "i2", "i3"]
        with grpc.insecure_channel(f"127.0.0.1:{first}") as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            resp = admin.DeleteItems(
                admin_pb2.DeleteItemsRequest(item_ids=["i1"]),
                metadata=[("authorization", "Bearer t0ken")],
                timeout=10,
            )
        assert resp.deleted["a"] == 0 and server.recall(first) == ["i2", "i3"]
        wait_until(
            lambda: server.recall(second) == ["i2", "i3"],
            10,
            what="the second process to apply the delete",
        )
        assert any('"catalog_synced"' in e for e in server.events)
    finally:
        server.stop()


def test_admin_reloads_sent_to_one_process_reach_the_other(tmp_path, fake_plugins, demo_small):
    """Reload (a new artifact version) and ReloadConfig land on one process; it announces
    them in the group's control log and the other process does the same within
    server.catalog_sync_ms. The group's folder goes when the server stops."""
    _, first, second = two_popular_versions(tmp_path / "artifacts", demo_small)
    server = Processes(
        tmp_path,
        fake_plugins,
        'catalog_sync_ms = 200\n[admin]\ntoken = "t0ken"\n',
        channels="[channels.popular]\n",
    )
    one, two = server.workers, server.workers + 1
    token = [("authorization", "Bearer t0ken")]

    def listing(port: int) -> tuple[dict[str, str], int]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = recall_pb2_grpc.RecallServiceStub(ch).ListChannels(
                recall_pb2.ListChannelsRequest(), timeout=10
            )
        return {c.name: c.version for c in resp.channels}, resp.config_generation

    def admin(port: int):
        return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def eventually(port: int, want: tuple[dict[str, str], int]) -> None:
        wait_until(
            lambda: listing(port) == want,
            30,
            what=lambda: f"{want} on port {port}: {''.join(server.events)}",
        )

    try:
        group_dir = Path(server.started["group_dir"])
        assert group_dir.is_dir()
        assert listing(one) == listing(two) == ({"popular": first}, 1)
        resp = admin(one).Reload(
            admin_pb2.ReloadRequest(channels=["popular"], version=second),
            metadata=token,
            timeout=30,
        )
        assert dict(resp.versions) == {"popular": second}
        assert listing(one) == ({"popular": second}, 1)
        eventually(two, ({"popular": second}, 1))
        assert server.recall(one, k=10) == server.recall(two, k=10)
        gen = (
            admin(two)
            .ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=token, timeout=30)
            .config_generation
        )
        assert gen == 2
        eventually(one, ({"popular": second}, 2))
        assert any('"group_reloaded"' in e for e in server.events)
    finally:
        server.stop()
    assert not group_dir.exists()


def test_worker_ports_that_overlap_the_shared_port_are_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[server]\naddr = "127.0.0.1:50100"\nworker_port_base = 50099\n'
        '[channels.a]\nplugin = "fixed"\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recall_engine",
            "serve",
            "--config",
            str(path),
            "--processes",
            "2",
            "--log-json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    err = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(
        "server.worker_port_base" in e.get("error", "") and "overlap" in e["error"] for e in err
    ), proc.stderr

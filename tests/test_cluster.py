"""Replicas on the NATS JetStream update stream (``[cluster] log = "nats"``), against REAL
nats-server processes on 127.0.0.1 (free ports, ``-js``, a store folder each; three of
them routed into one JetStream cluster) and REAL ``recall-engine serve`` processes, each
with its own copy of the artifacts, as if on different hosts.

Convergence is observed from outside: channel ``a`` (the ``fixed`` test plugin) answers
its fixed list filtered by the catalogue, so ``Recall`` shows which items a replica's
catalogue holds; ``ListChannels`` shows the popular channel's version and the channels
the config enables. Every wait has a deadline (:data:`CONVERGE_S`, quoted in
docs/scale-out.md); the figures a test measured are printed (``pytest -s``).

Skips, naming what is missing, without ``nats-server`` on PATH (``apt-get install
nats-server``) or without ``nats-py`` (the ``cluster`` extra)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recall_engine._proto import admin_pb2, admin_pb2_grpc, recall_pb2, recall_pb2_grpc
from recall_engine.config import ConfigError, parse_config
from tests.harness import two_popular_versions
from tests.helpers import wait_until

NATS_SERVER = shutil.which("nats-server")

#: Every replica shows a change within this many seconds of its acknowledgement (the
#: bound the tests wait for; docs/scale-out.md quotes it and what was measured).
CONVERGE_S = 20.0
TOKEN = [("authorization", "Bearer t0ken")]
W = [f"w{n}" for n in range(400)]  # items channel a may return once upserted


def needs_nats() -> None:
    if NATS_SERVER is None:
        pytest.skip("needs nats-server on PATH (apt-get install nats-server)")
    pytest.importorskip("nats", reason="needs nats-py, from the [cluster] extra")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- nats-server processes ---------------------------------------------------------------


class NatsServer:
    """One nats-server process; ``kill`` sends SIGKILL, ``start`` again reuses its store."""

    def __init__(self, name: str, store: Path, routes: list[str] | None, cluster_port: int) -> None:
        self.name, self.store, self.routes = name, store, routes
        self.port, self.cluster_port = free_port(), cluster_port
        self.proc: subprocess.Popen | None = None
        self.log = store.parent / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        cmd += ["-n", self.name]
        if self.routes is not None:
            cmd += ["--cluster_name", "recall-test", "--cluster"]
            cmd += [f"nats://127.0.0.1:{self.cluster_port}", "--routes", ",".join(self.routes)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._listening, 20, what=lambda: f"{self.name} listening: {self.tail()}")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
            return True
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


class NatsCluster:
    def __init__(self, root: Path, size: int) -> None:
        ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{p}" for p in ports] if size > 1 else None
        self.servers = []
        for i in range(size):
            store = root / f"n{i}"
            store.mkdir(parents=True)
            self.servers.append(NatsServer(f"n{i}", store, routes, ports[i]))
        for s in self.servers:
            s.start()
        wait_until(self._jetstream_ready, 60, interval=0.2, what="a JetStream meta leader")

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def client(self, coro_fn, timeout: float = 30):
        """Run ``coro_fn(js)`` with a fresh connection to the live servers."""

        async def run():
            import nats

            live = [s.url for s in self.servers if s.proc and s.proc.poll() is None]
            nc = await nats.connect(servers=live, connect_timeout=2, max_reconnect_attempts=2)
            try:
                return await coro_fn(nc.jetstream(timeout=5))
            finally:
                await nc.close()

        return asyncio.run(asyncio.wait_for(run(), timeout))

    def _jetstream_ready(self) -> bool:
        async def info(js):
            return await js.account_info()

        try:
            self.client(info, 10)
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False

    def stream_info(self, stream: str):
        async def info(js):
            return await js.stream_info(stream)

        return self.client(info)

    def by_name(self, name: str) -> NatsServer:
        return next(s for s in self.servers if s.name == name)

    def stop(self) -> None:
        for s in self.servers:
            s.kill()


@pytest.fixture()
def nats1(tmp_path) -> Iterator[NatsCluster]:
    needs_nats()
    cluster = NatsCluster(tmp_path / "nats", 1)
    yield cluster
    cluster.stop()


@pytest.fixture()
def nats3(tmp_path) -> Iterator[NatsCluster]:
    needs_nats()
    cluster = NatsCluster(tmp_path / "nats", 3)
    yield cluster
    cluster.stop()


# -- recall-engine replicas ----------------------------------------------------------------

REPLICA_CONFIG = """
[server]
addr = "127.0.0.1:0"
metrics_addr = ""
catalog_sync_ms = 100
catalog_compact_records = {compact}
grace_s = 1
drain_s = 0
request_timeout_ms = 5000

[admin]
token = "t0ken"

[artifacts]
root = "artifacts"

[cluster]
log = "nats"
servers = {servers}
stream = "{stream}"
replicas = {replicas}
publish_timeout_s = {publish_timeout}
connect_timeout_s = 20

[channels.popular]
required = true

[channels.a]
plugin = "fixed"
params = {{ items = {items} }}
{extra}
[plan]
weights = {{ a = 1.0, popular = 0.01 }}
"""

CHANNEL_B = """
[channels.b]
plugin = "fixed"
params = { items = ["item-0001"] }
"""


class Replica:
    """``recall-engine serve`` in a folder of its own (its config and artifacts copy)."""

    def __init__(self, home: Path, fake_site: Path) -> None:
        self.home = home
        self.fake_site = fake_site
        self.proc: subprocess.Popen | None = None
        self.events: list[str] = []
        self.port: int | None = None

    def write_config(self, nats: NatsCluster, stream: str, **kw) -> None:
        text = REPLICA_CONFIG.format(
            servers=json.dumps(nats.urls),
            stream=stream,
            replicas=kw.get("replicas", 1),
            compact=kw.get("compact", 50_000),
            publish_timeout=kw.get("publish_timeout", 10),
            items=json.dumps(W + ["item-0001", "item-0002"]),
            extra=kw.get("extra", ""),
        )
        (self.home / "recall.toml").write_text(text)

    def start(self) -> float:
        """Start and wait for ``serving``; returns the seconds that took."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.fake_site), os.getcwd()])}
        self.events, self.port = [], None
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recall_engine", "serve", "--config", "recall.toml"]
            + ["--log-json", "--processes", "1"],  # a replica is one process here
            cwd=self.home,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(120) or self.port is None:
            self.kill()
            raise AssertionError("replica did not start:\n" + "\n".join(self.events[-40:]))
        return time.monotonic() - started

    def _read(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.events.append(line.rstrip())
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                event = json.loads(line)
                if event.get("event") == "server_listening":
                    self.port = int(event["addr"].rsplit(":", 1)[1])
                if event.get("event") == "serving":
                    ready.set()
        ready.set()

    def named(self, name: str) -> list[dict]:
        out = []
        for line in list(self.events):
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    out.append(event)
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- calls ---------------------------------------------------------------------
    def _channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def items(self) -> set[str]:
        """The items of channel a's list that this replica's catalogue holds."""
        with self._channel() as ch:
            resp = recall_pb2_grpc.RecallServiceStub(ch).Recall(
                recall_pb2.RecallRequest(user_id="u", k=1000), timeout=10
            )
        return {i for i in resp.item_ids if i.startswith("w") or i in ("item-0001", "item-0002")}

    def channels(self) -> dict[str, str]:
        with self._channel() as ch:
            resp = recall_pb2_grpc.RecallServiceStub(ch).ListChannels(
                recall_pb2.ListChannelsRequest(), timeout=10
            )
        return {c.name: c.version for c in resp.channels}

    def admin(self, method: str, request, timeout: float = 30):
        with self._channel() as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            return getattr(stub, method)(request, metadata=TOKEN, timeout=timeout)

    def upsert(self, *ids: str):
        items = [admin_pb2.Item(item_id=i, title=i) for i in ids]
        return self.admin("UpsertItems", admin_pb2.UpsertItemsRequest(items=items))

    def delete(self, *ids: str):
        return self.admin("DeleteItems", admin_pb2.DeleteItemsRequest(item_ids=list(ids)))


@pytest.fixture()
def artifacts(tmp_path, demo_small):
    """The popular channel built twice (first current) and the catalogue, once; every
    replica copies it."""
    root = tmp_path / "built"
    _, first, second = two_popular_versions(root, demo_small)
    return root, first, second


@pytest.fixture()
def replicas(tmp_path, fake_plugins, artifacts) -> Iterator[list[Replica]]:
    made: list[Replica] = []
    root = artifacts[0]
    for i in range(3):
        home = tmp_path / f"replica{i}"
        home.mkdir()
        shutil.copytree(root, home / "artifacts", symlinks=True)
        made.append(Replica(home, fake_plugins))
    yield made
    for r in made:
        r.kill()


def converged(replicas: list[Replica], check, what: str, bound: float = CONVERGE_S) -> float:
    """Wait until ``check(replica)`` holds on every replica; returns the seconds taken."""
    started = time.monotonic()
    for r in replicas:
        remaining = bound - (time.monotonic() - started)
        wait_until(
            lambda r=r: check(r),
            max(remaining, 0.1),
            interval=0.05,
            what=lambda r=r: f"{what} on {r.home.name}: {r.events[-15:]}",
        )
    return time.monotonic() - started


def report(figure: str, **values) -> None:
    print(f"\n[cluster figure] {figure}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


# -- tests ---------------------------------------------------------------------------------


def test_three_replicas_converge_on_writes_reloads_and_config_sent_to_any_of_them(
    nats1, replicas, artifacts
):
    _, first, second = artifacts
    r0, r1, r2 = replicas
    for r in replicas:
        r.write_config(nats1, "conv")
    r0.start()
    r1.start()
    base = {"item-0001", "item-0002"}
    assert r0.items() == base and r0.channels()["popular"] == first

    # writes to different replicas; r2 starts late and catches up from the stream
    r0.upsert("w0", "w1", "w2")
    r1.delete("item-0002")
    r1.upsert("w3")
    r0.delete("w1")
    want = {"item-0001", "w0", "w2", "w3"}
    t_items = converged([r0, r1], lambda r: r.items() == want, "items")
    t_late = r2.start()
    t_catch = converged([r2], lambda r: r.items() == want, "late replica's items")

    # an artifact reload sent to r2 and a config change sent to r1 (only r1's file has
    # channel b; the others take the replicated tables from the stream)
    assert r2.admin("Reload", admin_pb2.ReloadRequest(channels=["popular"], version=second))
    t_reload = converged(replicas, lambda r: r.channels()["popular"] == second, "popular version")
    r1.write_config(nats1, "conv", extra=CHANNEL_B)
    r1.admin("ReloadConfig", admin_pb2.ReloadConfigRequest())
    t_config = converged(replicas, lambda r: "b" in r.channels(), "config with channel b")
    for r in replicas:  # and nothing else moved
        assert r.items() == want and r.channels()["popular"] == second
    report(
        "three replicas, one nats-server",
        items_s=round(t_items, 2),
        late_start_s=round(t_late, 2),
        late_catch_up_s=round(t_catch, 2),
        reload_s=round(t_reload, 2),
        config_s=round(t_config, 2),
    )


def test_acknowledged_writes_survive_the_stream_leader_being_killed(nats3, replicas):
    for r in replicas:
        r.write_config(nats3, "lead", replicas=3, publish_timeout=8)
    for r in replicas:
        r.start()
    acked: list[str] = []
    refused: dict[str, str] = {}
    killed: str | None = None
    started = time.monotonic()
    for n, item in enumerate(W[:160]):
        if time.monotonic() - started > 150:
            break
        if n == 60:  # kill -9 the stream's leader while writes keep coming
            t_before = time.monotonic() - started
            killed = nats3.stream_info("lead").cluster.leader
            nats3.by_name(killed).kill()
            t_kill = time.monotonic()
        target = replicas[n % 3]
        try:
            target.upsert(item)
            acked.append(item)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
            refused[item] = e.details()
    assert killed is not None and len(acked) > 100, (len(acked), refused)
    t_write_end = time.monotonic()
    t = converged(replicas, lambda r: set(acked) <= r.items(), "every acknowledged write", 60)
    # the replicas agree on the refused ones too (each was stored everywhere or nowhere)
    wait_until(
        lambda: len({frozenset(r.items()) for r in replicas}) == 1, 30, what="equal catalogues"
    )
    new_leader = nats3.stream_info("lead").cluster.leader
    assert new_leader and new_leader != killed
    report(
        "stream leader killed (3-node JetStream, R=3)",
        killed=killed,
        new_leader=new_leader,
        acknowledged=len(acked),
        refused_unavailable=len(refused),
        refused_but_stored=len(set(refused) & replicas[0].items()),
        first_60_writes_s=round(t_before, 2),
        next_100_writes_after_kill_s=round(t_write_end - t_kill, 2),
        converged_after_last_write_s=round(t, 2),
    )
    if refused:
        print("  first refusal:", next(iter(refused.values())))


def test_a_restarted_replica_catches_up_from_the_snapshot_after_compaction(
    nats1, replicas, artifacts
):
    _, first, second = artifacts
    r0, r1, r2 = replicas
    for r in replicas:
        r.write_config(nats1, "snap", compact=20)
    r0.start()
    r1.start()
    for n in range(0, 30, 3):
        r0.upsert(*W[n : n + 3])
    converged([r0, r1], lambda r: set(W[:30]) <= r.items(), "first writes")
    r1.kill()  # SIGKILL: no goodbye
    for n in range(30, 90, 3):
        r0.upsert(*W[n : n + 3])
    r0.delete(*W[:10])
    r0.admin("Reload", admin_pb2.ReloadRequest(channels=["popular"], version=second))
    r0.write_config(nats1, "snap", compact=20, extra=CHANNEL_B)
    r0.admin("ReloadConfig", admin_pb2.ReloadConfigRequest())
    for n in range(90, 120, 3):
        r0.upsert(*W[n : n + 3])
    want = set(W[10:120]) | {"item-0001", "item-0002"}
    assert r0.items() == want

    info = nats1.stream_info("snap")
    # compacted while r1 was down: records r1 never read are gone from the stream
    assert info.state.first_seq > 11, info.state

    async def pointer(js):
        kv = await js.key_value("snap-snapshot")
        return json.loads((await kv.get("catalog")).value)

    snap = nats1.client(pointer)
    assert snap["seq"] >= info.state.first_seq - 1

    t_restart = r1.start()
    t_r1 = converged([r1], lambda r: r.items() == want, "restarted replica's items")
    converged(
        [r1],
        lambda r: r.channels() == {"popular": second, "a": "fixed-1", "b": "fixed-1"},
        "restarted replica's version and config",
    )
    opened = r1.named("update_stream_opened")
    assert opened and opened[0]["snapshot_seq"] > 0  # started from the snapshot, not seq 1
    t_new = r2.start()
    t_r2 = converged([r2], lambda r: r.items() == want, "new replica's items")
    converged(
        [r2],
        lambda r: r.channels() == {"popular": second, "a": "fixed-1", "b": "fixed-1"},
        "new replica's version and config",
    )
    report(
        "restart after compaction (compact every 20 rows)",
        stream_first_seq=info.state.first_seq,
        snapshot_seq=snap["seq"],
        restart_to_serving_s=round(t_restart, 2),
        restarted_caught_up_s=round(t_r1, 2),
        new_replica_start_s=round(t_new, 2),
        new_replica_caught_up_s=round(t_r2, 2),
    )


def test_an_unreachable_stream_is_unavailable_and_nothing_is_applied(nats1, replicas, artifacts):
    _, first, second = artifacts
    r0 = replicas[0]
    r0.write_config(nats1, "down", publish_timeout=1)
    r0.start()
    r0.upsert("w0")
    nats1.servers[0].kill()
    calls = [
        ("UpsertItems", admin_pb2.UpsertItemsRequest(items=[admin_pb2.Item(item_id="w1")])),
        ("DeleteItems", admin_pb2.DeleteItemsRequest(item_ids=["w0"])),
        ("Reload", admin_pb2.ReloadRequest(channels=["popular"], version=second)),
    ]
    for method, request in calls:
        with pytest.raises(grpc.RpcError) as e:
            r0.admin(method, request)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
        assert "nothing was changed" in e.value.details() and "NATS stream 'down'" in (
            e.value.details()
        )
    r0.write_config(nats1, "down", publish_timeout=1, extra=CHANNEL_B)
    with pytest.raises(grpc.RpcError) as e:
        r0.admin("ReloadConfig", admin_pb2.ReloadConfigRequest())
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
    # nothing half-applied: the catalogue, the version and the config are as they were
    assert r0.items() == {"w0", "item-0001", "item-0002"}
    assert r0.channels() == {"popular": first, "a": "fixed-1"}
    nats1.servers[0].start()  # the same port and store: writes go through again
    wait_until(
        lambda: _succeeds(lambda: r0.upsert("w2")), 30, interval=0.2, what="writes after restart"
    )
    assert "w2" in r0.items()


def _succeeds(fn) -> bool:
    try:
        fn()
        return True
    except grpc.RpcError:
        return False


# -- the log itself, in process --------------------------------------------------------------


@pytest.fixture()
def open_log(nats1):
    from recall_engine.runtime.update_log_nats import NatsLog, StreamSettings

    opened = []

    def make(stream: str = "unit"):
        log = NatsLog.open(StreamSettings(servers=tuple(nats1.urls), stream=stream))
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


def test_a_process_gets_its_own_write_back_only_when_another_came_first(open_log):
    one, two = open_log(), open_log()
    a, b = one.view("items"), two.view("items")
    a.append([{"op": "upsert", "item_id": "z", "title": "first"}])
    b.append([{"op": "upsert", "item_id": "z", "title": "second"}])  # lands after one's
    assert [r["title"] for _, r in b.read_new()] == ["first", "second"]  # log order
    assert [r["title"] for _, r in a.read_new()] == ["second"]
    a.append([{"op": "delete", "item_id": "z"}])
    assert a.read_new() == []  # in order: not handed back
    assert [r["op"] for _, r in b.read_new()] == ["delete"]
    # a control record always comes back (a reload read just before may still be waiting
    # to be applied: it must not end up applied after this one)
    one.view("control").append([{"op": "reload", "versions": {"popular": "v2"}}])
    assert [r["versions"] for _, r in one.view("control").read_new()] == [{"popular": "v2"}]


def test_an_older_snapshot_never_replaces_a_newer_one_and_a_late_reader_jumps(open_log):
    from recall_engine.runtime.catalog import Catalog

    one, two = open_log("snaps"), open_log("snaps")
    for n in range(5):
        one.view("items").append([{"op": "upsert", "item_id": f"x{n}"}])
    two.view("items").read_new()  # two has read up to 5
    for n in range(5, 8):
        one.view("items").append([{"op": "upsert", "item_id": f"x{n}"}])
    assert one.view("items").write_snapshot([{"item_id": f"x{n}"} for n in range(8)])
    # two's snapshot (sequence 5) is older than the stored one (8): refused
    assert not two.view("items").write_snapshot([{"item_id": f"x{n}"} for n in range(5)])
    # two had not read 6-8, which the compaction purged: it jumps to the snapshot
    assert two.view("items").read_new() == []
    assert [r["item_id"] for r in two.take_resync() or []] == [f"x{n}" for n in range(8)]
    # a new reader starts from the snapshot and the stream after it
    one.view("items").append([{"op": "delete", "item_id": "x0"}])
    three = open_log("snaps")
    catalog = Catalog.load(Path("/nonexistent"), stream=three.view("items"))
    assert sorted(catalog.ids()) == [f"x{n}" for n in range(1, 8)]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"log": "nats"}, "cluster.servers: must list at least one nats:// URL"),
        ({"log": "kafka"}, "cluster.log: must be one of 'file', 'nats'"),
        ({"log": "nats", "servers": ["nats://h:4222"], "stream": "a.b"}, "cluster.stream: must be"),
        ({"log": "nats", "servers": ["nats://h:4222"], "replicas": 0}, "cluster.replicas"),
        ({"log": "nats", "servers": ["nats://h:4222"], "stram": "x"}, "cluster.stram: unknown"),
    ],
)
def test_cluster_table_errors_name_the_key(tmp_path, table, message):
    data = {"channels": {"popular": {}}, "cluster": table}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(data, tmp_path)

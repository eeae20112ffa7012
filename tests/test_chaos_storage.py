"""Chaos on real processes and real files: ``kill -9`` of ``recall-engine serve`` in the
middle of a stream of acknowledged admin upserts and deletes (compacting as it goes)
loses none of them and the restart succeeds every time; a log torn by a crash is cut
back at start-up with a warning and the next append is valid; bundles with one random
byte flipped anywhere are all refused on reload while the old version keeps serving.

Every loop is bounded in count and in time; every wait polls a state with a deadline.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from recall_engine._proto import admin_pb2, admin_pb2_grpc, recall_pb2, recall_pb2_grpc
from recall_engine.runtime.artifacts import MANIFEST, MANIFEST_DIGEST, ArtifactStore, _digest_line
from recall_engine.runtime.catalog import Catalog, log_file
from recall_engine.runtime.shared_log import HEADER, encode_rows, scan
from tests.harness import catalog_of, make_config, serve, two_popular_versions
from tests.helpers import wait_until
from tests.log_events import parse_events

TOKEN = "t0ken"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
FIXED = [f"i{n}" for n in range(1, 13)]

CONFIG = f"""
[server]
addr = "127.0.0.1:0"
metrics_addr = ""
grace_s = 0
drain_s = 0
catalog_compact_records = 25  # compactions happen during the update streams

[admin]
token = "{TOKEN}"

[channels.a]
plugin = "fixed"
params = {{ items = {json.dumps(FIXED)} }}
"""


class ServeProcess:
    """``recall-engine serve`` in a subprocess; its JSON log lines are collected and
    its port read back from the ``server_listening`` event."""

    def __init__(self, config: Path, fake_site: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recall_engine", "serve", "--config", str(config), "--log-json"],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(fake_site), os.getcwd()]),
                **(env or {}),
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        threading.Thread(target=self._read, daemon=True).start()
        try:
            wait_until(self._serving, 60, what="the server to report serving")
        except AssertionError:
            self.proc.kill()
            raise AssertionError("server did not start:\n" + "\n".join(self.lines)) from None
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.recall = recall_pb2_grpc.RecallServiceStub(self.channel)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if '"server_listening"' in line:
                self.port = int(json.loads(line)["addr"].rsplit(":", 1)[1])

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("server exited:\n" + "\n".join(self.lines))
        lines = list(self.lines)
        # every process serves (serve's default runs one per core, all on this port)
        started = [ln for ln in lines if '"event": "processes_started"' in ln]
        expected = json.loads(started[0])["count"] if started else 1
        serving = sum('"event": "serving"' in ln for ln in lines)
        return self.port is not None and serving >= expected

    def events(self, name: str) -> list[dict]:
        return parse_events("\n".join(self.lines), name)

    def kill9(self) -> None:
        self.channel.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture()
def served_folder(tmp_path):
    root = tmp_path / "artifacts"
    catalog_of(FIXED).save(root / "catalog")
    path = tmp_path / "recall.toml"
    path.write_text(CONFIG.replace("[server]", f'[artifacts]\nroot = "{root}"\n\n[server]', 1))
    return path, root / "catalog"


def test_kill_9_during_acknowledged_updates_loses_none_and_restarts_every_time(
    served_folder, fake_plugins
):
    config, folder = served_folder
    rng = random.Random(7)
    expected: dict[str, str | None] = {i: i for i in FIXED}  # item -> title, None: deleted
    env: dict[str, str] = {}
    acked = 0
    server = ServeProcess(config, fake_plugins, env)
    try:
        for kill in range(3):
            maybe: tuple[str, str | None] | None = None
            killer = threading.Timer(rng.uniform(0.5, 1.5), server.kill9)
            killer.start()
            for seq in range(100_000):  # ends when the server dies
                item = rng.choice([*FIXED, *(f"n{n}" for n in range(8))])
                title = None if rng.random() < 0.35 else f"v{kill}.{seq}"
                try:
                    if title is None:
                        server.admin.DeleteItems(
                            admin_pb2.DeleteItemsRequest(item_ids=[item]), metadata=AUTH, timeout=5
                        )
                    else:
                        server.admin.UpsertItems(
                            admin_pb2.UpsertItemsRequest(
                                items=[admin_pb2.Item(item_id=item, title=title)]
                            ),
                            metadata=AUTH,
                            timeout=5,
                        )
                except (grpc.RpcError, ValueError):  # ValueError: the channel was closed
                    maybe = (item, title)  # in flight when the server died: either outcome
                    break
                expected[item] = title
                acked += 1
            killer.join()
            assert server.proc.returncode == -signal.SIGKILL
            server = ServeProcess(config, fake_plugins, env)  # must start, every time
            assert_matches(server, folder, expected, maybe)
            if maybe is not None:  # adopt what the restart found for the in-flight call
                found = Catalog.load(folder).get(maybe[0])
                expected[maybe[0]] = found.title if found is not None else None
    finally:
        server.stop()
    assert acked > 30  # the stream was long enough to mean something
    assert Catalog.load(folder).generation >= 1  # and compactions happened along it


def assert_matches(
    server: ServeProcess,
    folder: Path,
    expected: dict[str, str | None],
    maybe: tuple[str, str | None] | None,
) -> None:
    """What the restarted server serves and what its catalogue holds equal every
    acknowledged change (the in-flight one may or may not have landed)."""
    catalog = Catalog.load(folder)
    for item, title in expected.items():
        found = catalog.get(item)
        got = found.title if found is not None else None
        if maybe is not None and item == maybe[0]:
            assert got in (title, maybe[1]), (item, got, title, maybe)
        else:
            assert got == title, (item, got, title)
    answer = server.recall.Recall(recall_pb2.RecallRequest(user_id="u", k=50), timeout=10)
    assert list(answer.item_ids) == [i for i in FIXED if i in catalog]


def test_a_torn_log_tail_is_cut_at_start_up_with_a_warning_and_the_next_append_is_valid(
    served_folder, fake_plugins
):
    config, folder = served_folder
    server = ServeProcess(config, fake_plugins)
    try:
        server.admin.DeleteItems(admin_pb2.DeleteItemsRequest(item_ids=["i2"]), metadata=AUTH)
    finally:
        server.kill9()
    path = log_file(folder, 0)
    whole = path.stat().st_size
    torn = encode_rows([{"op": "delete", "item_id": "i3"}])
    with open(path, "ab") as fh:  # what a crash in the middle of an append leaves
        fh.write(torn[: len(torn) // 2])

    server = ServeProcess(config, fake_plugins)
    try:
        cut = server.events("update_log_tail_cut")
        assert cut and cut[0]["file"] == str(path)
        assert (cut[0]["offset"], cut[0]["dropped"]) == (whole, len(torn) // 2)
        server.admin.DeleteItems(admin_pb2.DeleteItemsRequest(item_ids=["i4"]), metadata=AUTH)
        answer = server.recall.Recall(recall_pb2.RecallRequest(user_id="u", k=50), timeout=10)
        assert "i2" not in answer.item_ids and "i4" not in answer.item_ids
        assert "i3" in answer.item_ids  # the torn record was never acknowledged
    finally:
        server.stop()
    found = scan(path.read_bytes()[len(HEADER) :], len(HEADER))
    assert found.torn == 0 and not found.corrupt and len(found.records) == 2


# -- corrupted bundles ---------------------------------------------------------------------
def clone_version(store: ArtifactStore, channel: str, source: str, version: str) -> Path:
    """A copy of bundle ``source`` as ``version``: its manifest says the new version and
    is sealed again, exactly as a build would have written it."""
    folder = store.root / channel / version
    shutil.copytree(store.root / channel / source, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["version"] = version
    text = json.dumps(manifest, indent=2) + "\n"
    (folder / MANIFEST).write_text(text)
    (folder / MANIFEST_DIGEST).write_text(_digest_line(text.encode()))
    return folder


def flip_one_byte(folder: Path, rng: np.random.Generator) -> tuple[str, int]:
    """XOR one byte, anywhere in any file of the bundle, with a random non-zero value."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    path = files[int(rng.integers(len(files)))]
    data = bytearray(path.read_bytes())
    at = int(rng.integers(len(data)))
    data[at] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return path.relative_to(folder).as_posix(), at


def content_bundle(root: Path, demo) -> tuple[object, str]:
    pytest.importorskip("torch")
    from recall_engine.offline.build import build_all

    config = make_config(
        {
            "artifacts": {"root": str(root)},
            "admin": {"token": TOKEN},
            "channels": {"content": {"params": {"epochs": 1}}},
        },
        root,
    )
    return config, build_all(demo.interactions, demo.items, root, config)[0].version


@pytest.mark.parametrize("channel", ["popular", "content"])
def test_sixteen_bundles_with_one_flipped_byte_are_all_refused_and_the_old_keeps_serving(
    tmp_path, demo_small, channel
):
    if channel == "popular":
        config, first, _ = two_popular_versions(tmp_path, demo_small, admin={"token": TOKEN})
    else:
        config, first = content_bundle(tmp_path, demo_small)
    store = ArtifactStore(tmp_path)
    rng = np.random.default_rng(16)
    with serve(config, Catalog.load(tmp_path / "catalog")) as s:
        request = recall_pb2.RecallRequest(
            user_id="u", k=10, history_item_ids=list(demo_small.interactions.item_ids[:3])
        )
        before = list(s.stub.Recall(request, timeout=10).item_ids)
        assert before
        # a clean clone loads: what the flips break is the bytes, not the cloning
        clone_version(store, channel, first, "clean")
        reply = s.admin.Reload(
            admin_pb2.ReloadRequest(channels=[channel], version="clean"), metadata=AUTH, timeout=60
        )
        assert dict(reply.versions) == {channel: "clean"}
        flipped = []
        for n in range(16):
            version = f"flip{n:02d}"
            flipped.append(flip_one_byte(clone_version(store, channel, first, version), rng))
            with pytest.raises(grpc.RpcError) as e:
                s.admin.Reload(
                    admin_pb2.ReloadRequest(channels=[channel], version=version),
                    metadata=AUTH,
                    timeout=60,
                )
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (flipped[-1], e.value)
            assert "old version keeps serving" in e.value.details()
            assert version in e.value.details()
            listing = s.stub.ListChannels(recall_pb2.ListChannelsRequest(), timeout=10)
            assert {c.name: c.version for c in listing.channels} == {channel: "clean"}
            assert list(s.stub.Recall(request, timeout=10).item_ids) == before
        assert len({name for name, _ in flipped}) > 1, flipped  # flips landed in several files

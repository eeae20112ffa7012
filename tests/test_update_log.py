"""Online updates through a real gRPC server: written to the update log before they touch
memory; a full or read-only disk fails the call with a status that says so and changes
nothing; compaction saves the channels' online vectors, so a restart does not encode
every upsert again; ``build --out`` never throws away a live catalogue's updates."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from recall_engine._proto import admin_pb2, recall_pb2
from recall_engine.runtime.catalog import Catalog, log_file
from recall_engine.runtime.shared_log import HEADER, scan
from recall_engine.sdk.channel import ItemRecord
from tests.harness import catalog_of, make_config, serve
from tests.log_events import parse_events

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ITEMS = [f"i{n}" for n in range(1, 6)]


@contextlib.contextmanager
def small_disk(path: Path, size: str = "256k"):
    """A tmpfs of ``size`` at ``path`` (skips where the machine does not allow mounts)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with a file; returns it (delete it to free space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for block in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * block):
                    pass
    finally:
        os.close(fd)
    return filler


def fixed_config(root: Path):
    return make_config(
        {
            "artifacts": {"root": str(root)},
            "admin": {"token": TOKEN},
            "channels": {"a": {"plugin": "fixed", "params": {"items": ITEMS}}},
        },
        root,
    )


def recall_ids(s) -> list[str]:
    return list(s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10), timeout=10).item_ids)


def big_item(item_id: str) -> admin_pb2.Item:
    # larger than a page: a full tmpfs cannot take it into the log's last page
    return admin_pb2.Item(item_id=item_id, title="big", text="x" * 20_000)


def assert_log_valid(folder: Path) -> None:
    data = log_file(folder, Catalog.load(folder).generation).read_bytes()
    assert data.startswith(HEADER)
    found = scan(data[len(HEADER) :], len(HEADER))
    assert found.torn == 0 and not found.corrupt


def test_a_full_disk_fails_the_update_with_resource_exhausted_and_changes_nothing(
    tmp_path, fake_plugins
):
    with small_disk(tmp_path / "disk") as disk:
        catalog_of(ITEMS).save(disk / "catalog")
        config = fixed_config(disk)
        with serve(config, Catalog.load(disk / "catalog")) as s:
            pads = [f"pad{n}" for n in range(600)]
            s.admin.UpsertItems(
                admin_pb2.UpsertItemsRequest(
                    items=[big_item("n1"), *(admin_pb2.Item(item_id=p) for p in pads)]
                ),
                metadata=AUTH,
                timeout=10,
            )
            size_before = log_file(disk / "catalog", 0).stat().st_size
            filler = fill(disk)

            with pytest.raises(grpc.RpcError) as e:
                s.admin.UpsertItems(
                    admin_pb2.UpsertItemsRequest(items=[big_item("n2")]), metadata=AUTH, timeout=10
                )
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "No space left on device" in e.value.details()
            assert "n2" not in s.engine.catalog

            with pytest.raises(grpc.RpcError) as e:
                s.admin.DeleteItems(
                    admin_pb2.DeleteItemsRequest(item_ids=["i2", *pads]),  # > a page
                    metadata=AUTH,
                    timeout=10,
                )
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert recall_ids(s) == ITEMS  # nothing half-applied
            assert "i2" in s.engine.catalog and all(p in s.engine.catalog for p in pads)
            assert log_file(disk / "catalog", 0).stat().st_size == size_before  # cut back

            filler.unlink()  # space comes back
            s.admin.UpsertItems(
                admin_pb2.UpsertItemsRequest(items=[big_item("n3")]), metadata=AUTH, timeout=10
            )
            s.admin.DeleteItems(admin_pb2.DeleteItemsRequest(item_ids=["i2"]), metadata=AUTH)
            assert recall_ids(s) == ["i1", "i3", "i4", "i5"]
        assert_log_valid(disk / "catalog")
        restarted = Catalog.load(disk / "catalog")
        assert {"n1", "n3"} <= set(restarted.ids()) and "n2" not in restarted
        assert "i2" not in restarted


def test_a_read_only_disk_fails_the_update_with_unavailable(tmp_path, fake_plugins):
    with small_disk(tmp_path / "disk") as disk:
        catalog_of(ITEMS).save(disk / "catalog")
        with serve(fixed_config(disk), Catalog.load(disk / "catalog")) as s:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            try:
                with pytest.raises(grpc.RpcError) as e:
                    s.admin.DeleteItems(
                        admin_pb2.DeleteItemsRequest(item_ids=["i1"]), metadata=AUTH, timeout=10
                    )
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Read-only file system" in e.value.details()
            assert recall_ids(s) == ITEMS
            s.admin.DeleteItems(admin_pb2.DeleteItemsRequest(item_ids=["i1"]), metadata=AUTH)
            assert recall_ids(s) == ITEMS[1:]


@pytest.fixture(scope="module")
def content_built(tmp_path_factory, demo_small):
    """A content channel built once from the demo catalogue (copied by each test)."""
    pytest.importorskip("torch")
    from recall_engine.offline.build import build_all

    root = tmp_path_factory.mktemp("content_built")
    build_all(demo_small.interactions, demo_small.items, root, content_config(root))
    return root


def content_config(root: Path, **tables):
    return make_config(
        {
            "artifacts": {"root": str(root)},
            "admin": {"token": TOKEN},
            "channels": {"content": {"params": {"epochs": 1}}},
            **tables,
        },
        root,
    )


def test_a_failed_log_write_leaves_the_catalogue_and_every_channel_untouched(
    tmp_path, content_built
):
    """A log that this version cannot use (here: not a log at all) refuses the write,
    and neither the delete nor the upsert reaches the catalogue or the channel's index:
    the log is written first."""
    root = tmp_path / "artifacts"
    shutil.copytree(content_built, root)
    with serve(content_config(root), Catalog.load(root / "catalog")) as s:
        index = s.engine._state.slots["content"].channel.index
        victim = index.ids()[0]
        log_file(root / "catalog", 0).write_text("something else\n")
        with pytest.raises(grpc.RpcError) as e:
            s.admin.DeleteItems(admin_pb2.DeleteItemsRequest(item_ids=[victim]), metadata=AUTH)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not a recall-engine log" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            s.admin.UpsertItems(
                admin_pb2.UpsertItemsRequest(items=[admin_pb2.Item(item_id="new", title="jazz")]),
                metadata=AUTH,
            )
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert victim in index and victim in s.engine.catalog
        assert "new" not in index and "new" not in s.engine.catalog


# -- compaction and the channels' online vectors ----------------------------------------
def test_restart_after_compaction_reuses_online_vectors_instead_of_encoding(
    tmp_path, content_built, capsys
):
    from recall_engine.serving.engine import Engine

    root = tmp_path / "artifacts"
    shutil.copytree(content_built, root)
    config = content_config(root)
    new = [ItemRecord(f"new{n}", f"space rocket {n}", "astronauts", ("space",)) for n in range(30)]
    engine = Engine(config, catalog=Catalog.load(root / "catalog", compact_records=30))
    engine.load()
    try:
        engine.upsert_items(new[:20])
        engine.delete_items(["new0"])
        engine.upsert_items(new[20:])  # 31 rows: compacts
        assert engine.catalog.generation == 1
        index = engine._state.slots["content"].channel.index
        before = {it.item_id: index.vector(it.item_id) for it in new[1:]}
    finally:
        engine.close()
    capsys.readouterr()

    restarted = Engine(config, catalog=Catalog.load(root / "catalog"))
    restarted.load()
    try:
        out = capsys.readouterr()
        done = parse_events(out.out + out.err, "index_reconciled")
        assert done and (done[-1]["reused"], done[-1]["encoded"]) == (29, 0), done
        index = restarted._state.slots["content"].channel.index
        assert "new0" not in index
        for item_id, vector in before.items():
            assert abs(index.vector(item_id) - vector).max() < 1e-6
    finally:
        restarted.close()


def test_online_vectors_are_saved_every_256_encodings_without_waiting_for_compaction(
    tmp_path, content_built, capsys
):
    """The log is far from its compaction threshold, but a restart must not encode more
    than SAVE_VECTORS_EVERY items again: the encodings are saved as they pile up."""
    from recall_engine.serving.catalog_updates import SAVE_VECTORS_EVERY
    from recall_engine.serving.engine import Engine

    root = tmp_path / "artifacts"
    shutil.copytree(content_built, root)
    config = content_config(root)
    new = [ItemRecord(f"new{n}", f"jazz record {n}", "", ("jazz",)) for n in range(300)]
    engine = Engine(config, catalog=Catalog.load(root / "catalog"))
    engine.load()
    try:
        for start in range(0, len(new), 50):
            engine.upsert_items(new[start : start + 50])
        assert engine.catalog.generation == 0  # no compaction
    finally:
        engine.close()
    capsys.readouterr()
    restarted = Engine(config, catalog=Catalog.load(root / "catalog"))
    restarted.load()
    try:
        out = capsys.readouterr()
        done = parse_events(out.out + out.err, "index_reconciled")[-1]
        assert done["reused"] >= SAVE_VECTORS_EVERY and done["encoded"] < SAVE_VECTORS_EVERY
        assert done["reused"] + done["encoded"] == len(new)
    finally:
        restarted.close()


# -- build ---------------------------------------------------------------------------------
def test_build_refuses_to_overwrite_a_live_catalogues_updates(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "interactions.csv").write_text(
        "user_id,item_id\n" + "".join(f"u{n % 7},i{n % 5}\n" for n in range(40))
    )
    (data / "items.csv").write_text(
        "item_id,title,text,categories\n" + "".join(f"i{n},t{n},x,c\n" for n in range(5))
    )
    (tmp_path / "popular.toml").write_text("[channels.popular]\n")
    out = tmp_path / "artifacts"
    cmd = [
        sys.executable,
        "-m",
        "recall_engine",
        "build",
        "--interactions",
        str(data / "interactions.csv"),
        "--items",
        str(data / "items.csv"),
        "--out",
        str(out),
        "--config",
        str(tmp_path / "popular.toml"),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr  # no online updates yet: a rebuild is fine

    Catalog.load(out / "catalog").upsert([ItemRecord("online", "added by a live server")])
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2
    assert f"{log_file(out / 'catalog', 0)}: this folder holds a live catalogue" in refused.stderr
    assert "online" in Catalog.load(out / "catalog")


# -- several processes on one catalogue ----------------------------------------------------
def test_two_engines_writing_through_compactions_end_in_the_same_state(tmp_path, fake_plugins):
    """What ``serve --processes 2`` does, with two engines on one catalogue folder in one
    process (separate file descriptions, so their flocks exclude each other as between
    processes): both write at once while the log compacts every 10 rows, both follow the
    other; at the end both hold what a fresh start reads from disk."""
    import random
    import threading
    import traceback

    from recall_engine.serving.engine import Engine

    catalog_of(ITEMS).save(tmp_path / "catalog")
    config = fixed_config(tmp_path)
    engines = [
        Engine(config, catalog=Catalog.load(tmp_path / "catalog", compact_records=10))
        for _ in range(2)
    ]
    for engine in engines:
        engine.load()
    errors: list[str] = []

    def writer(engine: Engine, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(150):
                item = rng.choice([*ITEMS, "x1", "x2", "x3"])
                if rng.random() < 0.3:
                    engine.delete_items([item])
                else:
                    engine.upsert_items([ItemRecord(item, f"{seed}.{n}")])
                if n % 7 == 0:
                    engine.sync_catalog()
        except BaseException:  # noqa: BLE001 - reported by the main thread
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=writer, args=(e, i)) for i, e in enumerate(engines)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for _ in range(5):  # everyone reads what the other wrote last
            for engine in engines:
                engine.sync_catalog()
        fresh = Catalog.load(tmp_path / "catalog")
        want = {i: fresh.get(i) for i in fresh.ids()}
        for engine in engines:
            assert {i: engine.catalog.get(i) for i in engine.catalog.ids()} == want
        assert fresh.generation >= 5  # it compacted along the way
    finally:
        for engine in engines:
            engine.close()


def test_saving_online_vectors_prunes_the_channels_files_of_old_versions(tmp_path):
    """One file per channel and bundle version; saving keeps the newest few of that
    channel (older versions' files would otherwise pile up with every reload) and
    leaves other channels' files alone."""
    import numpy as np

    from recall_engine.runtime.online_vectors import KEEP, read_online_vectors, save_online_vectors

    folder = tmp_path / "vectors"
    vectors = np.ones((1, 4), dtype=np.float32)
    for n in range(5):  # five older versions of llm, oldest first
        save_online_vectors(folder / f"llm.v{n}.npz", ["i1"], [7], vectors)
        os.utime(folder / f"llm.v{n}.npz", (1_000 + n, 1_000 + n))
    save_online_vectors(folder / "llm.x.v1.npz", ["i1"], [7], vectors)  # channel "llm.x"
    os.utime(folder / "llm.x.v1.npz", (1, 1))
    save_online_vectors(folder / "content.v0.npz", ["i1"], [7], vectors)
    os.utime(folder / "content.v0.npz", (1, 1))

    save_online_vectors(folder / "llm.v9.npz", ["i2"], [8], vectors)

    names = sorted(p.name for p in folder.glob("*.npz"))
    kept_llm = [n for n in names if n.startswith("llm.v")]
    assert kept_llm == ["llm.v3.npz", "llm.v4.npz", "llm.v9.npz"] and len(kept_llm) == KEEP
    assert {"llm.x.v1.npz", "content.v0.npz"} <= set(names)
    assert list(read_online_vectors(folder / "llm.v9.npz", 4)) == ["i2"]

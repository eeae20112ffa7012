"""ArtifactStore: commit/open round trip, the atomic ``current`` pointer, and refusals
that name the broken file."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from recall_engine.runtime.artifacts import (
    MANIFEST_DIGEST,
    ArtifactError,
    ArtifactStore,
    _digest_line,
)
from recall_engine.runtime.index import VectorIndex


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def commit(
    store: ArtifactStore,
    channel: str = "cf",
    *,
    version: str | None = None,
    make_current: bool = False,
) -> str:
    with store.new_version(channel, version=version, make_current=make_current) as bundle:
        (bundle.path / "index.usearch").write_bytes(bytes(range(256)) * 16)  # 4096 bytes
        (bundle.path / "ids.json").write_text('{"ids": ["a", "b"]}')
        bundle.update(dims=64, metric="cos", item_count=2)
    assert bundle.version is not None
    return bundle.version


def reseal(manifest: Path) -> None:
    """Write ``manifest.sha256`` for the manifest as it is now (what a build does), so
    that a test reaches the checks behind the digest."""
    (manifest.parent / MANIFEST_DIGEST).write_text(_digest_line(manifest.read_bytes()))


def test_commit_then_open_round_trip(store):
    with store.new_version("cf", make_current=True) as bundle:
        (bundle.path / "model").mkdir()
        (bundle.path / "model" / "model.onnx").write_bytes(b"onnx" * 10)
        (bundle.path / "index.usearch").write_bytes(b"x" * 4096)
        bundle.update(
            dims=64,
            metric="cos",
            item_count=5000,
            model_hashes={"model.onnx": "abc"},
            build_params={"factors": 64},
            trained_on="interactions-2026-11",
        )

    opened = store.open("cf", verify="sha256")

    m = opened.manifest
    assert opened.version == bundle.version == store.current("cf")
    assert re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?", opened.version)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created_at"])
    assert (m["schema_version"], m["channel"], m["dims"], m["metric"], m["item_count"]) == (
        2,
        "cf",
        64,
        "cos",
        5000,
    )
    assert m["build_params"] == {"factors": 64} and m["trained_on"] == "interactions-2026-11"
    assert m["files"]["index.usearch"]["bytes"] == 4096
    assert set(m["files"]) == {"index.usearch", "model/model.onnx"}
    assert opened.file("model/model.onnx").read_bytes() == b"onnx" * 10
    assert not [p for p in (store.root / "cf").iterdir() if p.name.startswith(".")]


def test_a_failed_build_leaves_no_version_behind(store):
    with pytest.raises(RuntimeError), store.new_version("cf") as bundle:
        (bundle.path / "half.bin").write_bytes(b"...")
        raise RuntimeError("training diverged")

    assert store.versions("cf") == []
    assert list((store.root / "cf").iterdir()) == []


def test_versions_committed_in_the_same_second_get_suffixes_and_stay_ordered(store):
    made = [commit(store) for _ in range(3)]

    assert len(set(made)) == 3
    assert store.versions("cf") == made


def test_versions_sort_suffixes_numerically(store):
    for v in ["20261123T101500Z-10", "20261123T101500Z", "20261123T101500Z-2", "manual"]:
        commit(store, version=v)

    assert store.versions("cf") == [
        "20261123T101500Z",
        "20261123T101500Z-2",
        "20261123T101500Z-10",
        "manual",
    ]


def test_an_explicit_version_that_exists_is_refused(store):
    commit(store, version="v1")

    with pytest.raises(ArtifactError, match="cf/v1: already exists"):
        commit(store, version="v1")


def test_reserved_manifest_fields_cannot_be_overridden(store):
    writer = store.new_version("cf")
    with pytest.raises(ValueError, match="channel"):
        writer.update(channel="llm")
    writer.abort()


# -- the current pointer ---------------------------------------------------------------
def test_switching_current_is_atomic_for_a_concurrent_reader(store):
    old, new = commit(store, make_current=True), commit(store)
    seen: set[str | None] = set()
    errors: list[Exception] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.add(store.current("cf"))
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            store.set_current("cf", new if i % 2 == 0 else old)
    finally:
        stop.set()
        thread.join()

    assert not errors
    assert seen <= {old, new}
    assert store.current("cf") == old


def test_set_current_refuses_a_version_that_does_not_exist(store):
    with pytest.raises(ArtifactError, match=r"cf/nope/manifest\.json: missing"):
        store.set_current("cf", "nope")
    assert store.current("cf") is None


def test_open_without_a_current_version_names_the_pointer(store):
    commit(store)

    with pytest.raises(ArtifactError, match=r"^cf/current: missing"):
        store.open("cf")


def test_prune_keeps_the_newest_and_the_current_version(store):
    made = [commit(store, version=f"2026112{i}T000000Z") for i in range(6)]
    store.set_current("cf", made[0])

    removed = store.prune("cf", keep=2)

    assert removed == made[1:4]
    assert store.versions("cf") == [made[0], made[4], made[5]]


# -- refusals ----------------------------------------------------------------------------
def test_a_truncated_file_is_refused_with_both_sizes(store):
    v = commit(store)
    path = store.root / "cf" / v / "index.usearch"
    path.write_bytes(path.read_bytes()[:12])

    with pytest.raises(ArtifactError) as info:
        store.open("cf", v)
    assert str(info.value) == f"cf/{v}/index.usearch: truncated (12 bytes, manifest says 4096)"


def test_a_flipped_byte_passes_the_size_check_but_not_the_default_sha256(store):
    v = commit(store)
    path = store.root / "cf" / v / "index.usearch"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))

    store.open("cf", v, verify="size")  # same size
    with pytest.raises(ArtifactError, match=rf"^cf/{v}/index\.usearch: sha256 mismatch"):
        store.open("cf", v)


def test_one_flipped_byte_anywhere_in_a_bundle_is_refused(store):
    """Every file of the bundle, the manifest and its digest included, at seeded random
    offsets: each single flip is refused, naming the file."""
    v = commit(store)
    folder = store.root / "cf" / v
    rng = np.random.default_rng(13)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert names == {"index.usearch", "ids.json", "manifest.json", MANIFEST_DIGEST}
    for path in files:
        original = path.read_bytes()
        for _ in range(4):
            data = bytearray(original)
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(data))
            named = "manifest.json" if path.name == MANIFEST_DIGEST else path.name
            with pytest.raises(ArtifactError, match=rf"^cf/{v}/{re.escape(named)}: "):
                store.open("cf", v)
        path.write_bytes(original)
    store.open("cf", v)


def test_a_manifest_without_its_digest_is_refused_unless_it_predates_digests(store, capsys):
    v = commit(store)
    folder = store.root / "cf" / v
    (folder / MANIFEST_DIGEST).unlink()
    with pytest.raises(ArtifactError, match=rf"^cf/{v}/manifest\.sha256: missing"):
        store.open("cf", v)
    data = json.loads((folder / "manifest.json").read_text())
    data["schema_version"] = 1  # a bundle built before manifest digests
    (folder / "manifest.json").write_text(json.dumps(data))
    assert store.open("cf", v).version == v
    out = capsys.readouterr()
    assert "manifest_unsealed" in out.out + out.err


def test_a_missing_file_is_refused(store):
    v = commit(store)
    (store.root / "cf" / v / "ids.json").unlink()

    with pytest.raises(ArtifactError, match=rf"^cf/{v}/ids\.json: missing$"):
        store.open("cf", v)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "missing"),
        ('{"schema_version": 1, "channel": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema_version": 99, "channel": "cf"}', "schema_version 99 not supported"),
        (
            '{"schema_version": 1, "channel": "cf", "version": "{v}", "files": []}',
            "'files' must be an object",
        ),
    ],
)
def test_a_missing_or_garbled_manifest_is_refused(store, content, problem):
    v = commit(store)
    manifest = store.root / "cf" / v / "manifest.json"
    if content is None:
        manifest.unlink()
    else:
        manifest.write_text(content.replace("{v}", v))
        reseal(manifest)

    with pytest.raises(ArtifactError, match=rf"^cf/{v}/manifest\.json: {re.escape(problem)}"):
        store.open("cf", v)


def test_a_bundle_of_another_channel_is_refused(store):
    v = commit(store, "cf")
    shutil.copytree(store.root / "cf" / v, store.root / "llm" / v)

    with pytest.raises(ArtifactError) as info:
        store.open("llm", v)
    assert str(info.value) == (f"llm/{v}/manifest.json: channel 'cf' in manifest, expected 'llm'")


def test_a_manifest_listing_a_path_outside_the_bundle_is_refused(store):
    v = commit(store)
    manifest = store.root / "cf" / v / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    manifest.write_text(json.dumps(data))
    reseal(manifest)

    with pytest.raises(ArtifactError, match="bad file entry '../../etc/passwd'"):
        store.open("cf", v)


def test_a_vector_index_survives_a_bundle_round_trip(store):
    vectors = np.random.default_rng(0).standard_normal((50, 8), dtype=np.float32)
    index = VectorIndex(8)
    index.add([f"i{n}" for n in range(50)], vectors)
    with store.new_version("content", make_current=True) as bundle:
        index.save(bundle.path)
        bundle.update(dims=8, metric="cos", item_count=len(index))

    opened = store.open("content", verify="sha256")
    loaded = VectorIndex.load(opened.path, view=True)

    assert set(opened.manifest["files"]) == {
        "index.usearch",
        "ids.json",
        "ids.cols",
        "index.json",
    }
    assert loaded.search(vectors[7], 3)[0][0] == index.search(vectors[7], 3)[0][0]

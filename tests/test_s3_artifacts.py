"""Artifacts in object storage, against a real S3 stand-in: moto's server, started as
its own process on a free 127.0.0.1 port (no in-process mocking). ``recall-engine
build --out s3://...`` publishes; real ``recall-engine serve`` processes pull, serve and
follow the published pointers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

pytest.importorskip("boto3", reason="needs boto3, from the [s3] extra")
pytest.importorskip("moto.server", reason="needs moto[server], from the [test] extra")

import boto3  # noqa: E402

from recall_engine._proto import recall_pb2, recall_pb2_grpc  # noqa: E402
from recall_engine.cli.main import main  # noqa: E402
from recall_engine.config import ConfigError, parse_config  # noqa: E402
from recall_engine.runtime.artifacts import ArtifactError, ArtifactStore  # noqa: E402
from recall_engine.runtime.learned_weights import BUNDLE as LEARNED  # noqa: E402
from recall_engine.runtime.learned_weights import FILE as LEARNED_FILE  # noqa: E402
from recall_engine.runtime.learned_weights import (  # noqa: E402
    LearnedWeights,
    Segment,
    load_learned_weights,
    save_learned_weights,
)
from recall_engine.runtime.object_store import (  # noqa: E402
    ArtifactSync,
    S3BundleStore,
    announce,
)
from recall_engine.serving.remote_artifacts import open_remote  # noqa: E402
from tests.helpers import ROOT, wait_until  # noqa: E402

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # nothing from this machine's own AWS set-up
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class Moto:
    """``python -m moto.server`` on 127.0.0.1, port 0; its request log is kept, so a test
    can count the GETs of a key."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._up = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._up.wait(60) or self.port is None:
            self.stop()
            raise AssertionError("moto server did not start:\n" + "".join(self.lines))
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._up.set()
        self._up.set()

    def gets(self, path: str) -> int:
        """GETs of exactly ``/bucket/key`` logged so far, once every request made
        before this call is in the log (a marker request is waited for)."""
        marker = f"marker-{uuid.uuid4().hex}"
        try:
            self.client.head_bucket(Bucket=marker)
        except Exception:  # noqa: BLE001 - a 404 is the point: it lands in the log
            pass
        wait_until(lambda: any(marker in line for line in list(self.lines)), 30)
        return sum(f'"GET {path} HTTP' in line for line in list(self.lines))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def moto():
    server = Moto()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws(monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The demo's CSVs (400 items, 300 users), and the first half of its interactions:
    another popularity ranking, so a swap shows in the answers."""
    from recall_engine.offline.data.demo import write_demo

    folder = tmp_path_factory.mktemp("data")
    interactions, items = write_demo(folder, n_items=400, n_users=300, seed=1)
    lines = interactions.read_text().splitlines(keepends=True)
    half = folder / "half.csv"
    half.write_text("".join(lines[: 1 + (len(lines) - 1) // 2]))
    return {"full": interactions, "half": half, "items": items}


@pytest.fixture()
def bucket(moto):
    name = f"t-{uuid.uuid4().hex[:12]}"
    moto.client.create_bucket(Bucket=name)
    return name


def publish(url: str, interactions: Path, items: Path, endpoint: str) -> str:
    """``recall-engine build --out s3://...`` for the popular channel; the version the
    pointer names afterwards."""
    code = main(
        ["build", "--interactions", str(interactions), "--items", str(items)]
        + ["--out", url, "--channels", "popular", "--no-progress", "--endpoint-url", endpoint]
    )
    assert code == 0
    version = S3BundleStore(url, endpoint_url=endpoint).current("popular")
    assert version is not None
    return version


def publish_files_only(url: str, interactions: Path, items: Path, endpoint: str, tmp: Path):
    """A half-published version: built locally and uploaded, files and manifest, but the
    pointer left where it was. Returns the version."""
    out = tmp / f"local-{uuid.uuid4().hex[:6]}"
    code = main(
        ["build", "--interactions", str(interactions), "--items", str(items)]
        + ["--out", str(out), "--channels", "popular", "--no-progress"]
    )
    assert code == 0
    store = S3BundleStore(url, endpoint_url=endpoint)
    bundle = store._claim(ArtifactStore(out).open("popular"), out / ".publish")
    assert store.upload(bundle)
    return bundle.version


class Server:
    """``recall-engine serve`` as a real process; its JSON log kept as events. One server
    process (``--processes 1``): the tests count each download, swap and refusal once."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        argv = ["serve", *args, "--log-json", "--processes", "1"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recall_engine", *argv],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        try:
            wait_until(
                lambda: self.proc.poll() is not None or self.named("serving"),
                120,
                what=lambda: "serving:\n" + "".join(self.lines),
            )
            assert self.proc.poll() is None, "".join(self.lines)
        except AssertionError:
            self.stop()
            raise
        listening = self.named("server_listening")[0]
        self.channel = grpc.insecure_channel(listening["addr"])
        self.stub = recall_pb2_grpc.RecallServiceStub(self.channel)

    def named(self, event: str) -> list[dict]:
        found = []
        for line in list(self.lines):
            if f'"event": "{event}"' in line:
                found.append(json.loads(line))
        return found

    def recall(self, k: int = 10) -> list[str]:
        request = recall_pb2.RecallRequest(user_id="u", k=k)
        return list(self.stub.Recall(request, timeout=10).item_ids)

    def version(self) -> str:
        listed = self.stub.ListChannels(recall_pb2.ListChannelsRequest(), timeout=10).channels
        return {c.name: c.version for c in listed}["popular"]

    def stop(self) -> None:
        if hasattr(self, "channel"):
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # no drain window
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def config_file(tmp: Path, url: str, endpoint: str, cache: Path, poll_s: float = 0.2) -> Path:
    path = tmp / "recall.toml"
    path.write_text(f"""
[server]
addr = "127.0.0.1:0"
metrics_addr = ""

[artifacts]
root = "{url}"
cache = "{cache}"
endpoint_url = "{endpoint}"
poll_s = {poll_s}

[channels.popular]
required = true
""")
    return path


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **CREDENTIALS, **extra}


# -- publishing and serving --------------------------------------------------------------


def test_build_publishes_files_then_pointers_and_a_server_serves_from_s3(
    moto, bucket, data, tmp_path
):
    url = f"s3://{bucket}/recs"
    version = publish(url, data["full"], data["items"], moto.endpoint)
    keys = {o["Key"] for o in moto.client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {
        f"recs/popular/{version}/popular.npz",
        f"recs/popular/{version}/manifest.json",
        f"recs/popular/{version}/manifest.sha256",
        "recs/popular/current",
        "recs/catalog/current",
    } <= keys
    cache = tmp_path / "cache"
    with Server(
        ["--config", str(config_file(tmp_path, url, moto.endpoint, cache))], server_env()
    ) as s:
        assert s.version() == version
        assert len(s.recall()) == 10
    assert ArtifactStore(cache).current("popular") == version
    assert (cache / "catalog" / "items.jsonl").is_file()


def test_a_new_pointer_is_swapped_in_and_a_half_published_version_never_is(
    moto, bucket, data, tmp_path
):
    url = f"s3://{bucket}/recs"
    first = publish(url, data["full"], data["items"], moto.endpoint)
    cache = tmp_path / "cache"
    config = config_file(tmp_path, url, moto.endpoint, cache)
    pointer = f"/{bucket}/recs/popular/current"
    with Server(["--config", str(config)], server_env()) as s:
        before = s.recall()
        second = publish_files_only(url, data["half"], data["items"], moto.endpoint, tmp_path)
        polls = moto.gets(pointer)
        # the server reads the pointer a few more times: still the first version
        wait_until(lambda: moto.gets(pointer) >= polls + 3, 60, what="three more polls")
        assert s.version() == first
        assert s.recall() == before
        assert moto.gets(f"/{bucket}/recs/popular/{second}/popular.npz") == 0
        assert not (cache / "popular" / second).exists()

        S3BundleStore(url, endpoint_url=moto.endpoint).set_current("popular", second)
        wait_until(lambda: s.version() == second, 60, what="the swap to the new version")
        assert s.recall() != before
        assert s.named("artifact_swapped")[0]["version"] == second
    assert ArtifactStore(cache).current("popular") == second


def test_a_tampered_object_is_refused_and_the_old_version_keeps_serving(
    moto, bucket, data, tmp_path
):
    url = f"s3://{bucket}/recs"
    first = publish(url, data["full"], data["items"], moto.endpoint)
    cache = tmp_path / "cache"
    config = config_file(tmp_path, url, moto.endpoint, cache)
    with Server(["--config", str(config)], server_env()) as s:
        before = s.recall()
        second = publish_files_only(url, data["half"], data["items"], moto.endpoint, tmp_path)
        key = f"recs/popular/{second}/popular.npz"
        body = bytearray(moto.client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01  # one flipped bit, same size
        moto.client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
        S3BundleStore(url, endpoint_url=moto.endpoint).set_current("popular", second)

        refused = wait_until(lambda: s.named("artifact_refused"), 60, what="the refusal")
        assert refused[0]["version"] == second
        assert "popular.npz" in refused[0]["error"] and "sha256 mismatch" in refused[0]["error"]
        assert s.version() == first
        assert s.recall() == before
        # nothing of it reached the cache: no version folder, no staging left over
        assert sorted(p.name for p in (cache / "popular").iterdir()) == [first, "current"]
        assert ArtifactStore(cache).current("popular") == first


def save_learned(root: Path, popular: float) -> str:
    """A ``fusion.learned`` bundle under the local ``root``, as the build's fit writes
    one (one segment, every history length); its version."""
    segment = Segment("h1+", 1, None, {"popular": popular})
    return save_learned_weights(root, LearnedWeights("rrf", (segment,)))


def test_the_learned_fusion_weights_are_pulled_followed_and_a_tampered_one_refused(
    moto, bucket, data, tmp_path
):
    """``build --out s3://`` publishes ``fusion.learned`` beside the channels; a replica
    serves the version its pointer names, swaps to a new one, and refuses one with a
    flipped byte while the one before goes on serving."""
    url = f"s3://{bucket}/recs"
    publish(url, data["full"], data["items"], moto.endpoint)
    cache = tmp_path / "cache"
    config = config_file(tmp_path, url, moto.endpoint, cache)
    # nothing learned published yet: information, not an error, and the plan's weights
    with Server(["--config", str(config)], server_env()) as s:
        assert s.named("optional_bundle_not_published")[0]["bundle"] == LEARNED
        assert not s.named("optional_channel_not_pulled")
        assert s.named("learned_weights_absent")

    local = tmp_path / "local"
    store = S3BundleStore(url, endpoint_url=moto.endpoint)
    first = save_learned(local, 1.0)
    assert store.publish(local, [LEARNED]) == {LEARNED: first}
    with Server(["--config", str(config)], server_env()) as s:
        loaded = s.named("learned_weights_loaded")
        assert [e["version"] for e in loaded] == [first]
        assert len(s.recall()) == 10

        time.sleep(1.1)  # a version name has one-second resolution
        second = save_learned(local, 2.0)
        store.publish(local, [LEARNED])
        wait_until(lambda: len(s.named("learned_weights_loaded")) == 2, 60, what="the new weights")
        assert s.named("learned_weights_loaded")[1]["version"] == second
        swapped = [e for e in s.named("artifact_swapped") if e["channel"] == LEARNED]
        assert [e["version"] for e in swapped] == [second]

        time.sleep(1.1)
        third = save_learned(local, 3.0)
        bundle = store._claim(ArtifactStore(local).open(LEARNED, third), local / ".publish")
        store.upload(bundle)
        key = f"recs/{LEARNED}/{third}/{LEARNED_FILE}"
        body = bytearray(moto.client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        moto.client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
        store.set_current(LEARNED, third)

        refused = wait_until(lambda: s.named("artifact_refused"), 60, what="the refusal")
        assert refused[0]["channel"] == LEARNED and refused[0]["version"] == third
        assert "sha256 mismatch" in refused[0]["error"]
        assert len(s.named("learned_weights_loaded")) == 2  # the second one goes on
        assert len(s.recall()) == 10
    assert ArtifactStore(cache).current(LEARNED) == second
    assert load_learned_weights(cache).segments[0].weights == {"popular": 2.0}


def test_a_restart_reuses_the_cache_without_downloading_again(moto, bucket, data, tmp_path):
    """``serve --artifacts s3://...`` with the default config; the endpoint from
    AWS_ENDPOINT_URL (boto3 reads it itself), the cache under XDG_CACHE_HOME."""
    url = f"s3://{bucket}/recs"
    version = publish(url, data["full"], data["items"], moto.endpoint)
    env = server_env(AWS_ENDPOINT_URL=moto.endpoint, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    args = ["--artifacts", url, "--addr", "127.0.0.1:0", "--metrics-addr", ""]
    npz = f"/{bucket}/recs/popular/{version}/popular.npz"
    with Server(args, env) as s:
        first = s.recall()
        assert s.named("artifact_downloaded")
    assert moto.gets(npz) == 1
    cached = tmp_path / "xdg/recall-engine/artifacts" / bucket / "recs/popular" / version
    stamp = (cached / "popular.npz").stat().st_mtime_ns

    with Server(args, env) as s:
        assert s.recall() == first
        hits = s.named("artifact_cache_hit")
        assert [h["version"] for h in hits if h["channel"] == "popular"] == [version]
        assert not [e for e in s.named("artifact_downloaded") if e["channel"] == "popular"]
    assert moto.gets(npz) == 1
    assert (cached / "popular.npz").stat().st_mtime_ns == stamp


def test_a_missing_bucket_stops_serve_naming_the_setting(moto, tmp_path):
    env = server_env(AWS_ENDPOINT_URL=moto.endpoint, XDG_CACHE_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "recall_engine", "serve", "--log-json"]
        + ["--artifacts", "s3://no-such-bucket-here/recs", "--addr", "127.0.0.1:0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    failed = [json.loads(x) for x in done.stderr.splitlines() if '"startup_failed"' in x]
    assert failed[0]["error"].startswith("artifacts.root: bucket 'no-such-bucket-here'")
    assert "does not exist" in failed[0]["error"]


# -- the store and the sync, in process -------------------------------------------------


def test_a_required_channel_with_no_pointer_is_an_error_naming_the_pointer(moto, bucket, tmp_path):
    config = parse_config(
        {
            "artifacts": {
                "root": f"s3://{bucket}/recs",
                "cache": str(tmp_path / "cache"),
                "endpoint_url": moto.endpoint,
            },
            "channels": {"popular": {"required": True}},
        },
        tmp_path,
    )
    with pytest.raises(ArtifactError) as e:
        open_remote(config)
    assert str(e.value).startswith(f"s3://{bucket}/recs/popular/current: missing")


def test_bad_urls_are_refused_naming_the_setting(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^artifacts\.root: bad bucket name 'Bad_Bucket'"):
        parse_config(
            {"artifacts": {"root": "s3://Bad_Bucket/x"}, "channels": {"popular": {}}}, tmp_path
        )
    with pytest.raises(ConfigError, match=r"^artifacts\.endpoint_url: must be http"):
        parse_config(
            {
                "artifacts": {"root": "s3://good-bucket/x", "endpoint_url": "localhost:9000"},
                "channels": {"popular": {}},
            },
            tmp_path,
        )
    with pytest.raises(ConfigError, match=r"^channels\.cf\.artifacts: an s3:// store"):
        parse_config({"channels": {"cf": {"artifacts": "s3://good-bucket/cf"}}}, tmp_path)
    code = main(["build", "--dataset", "ml-100k:/nowhere", "--out", "s3://x/recs"])
    assert code == 2
    assert "--out: bad bucket name 'x'" in capsys.readouterr().err


def test_a_corrupted_download_never_reaches_the_cache(moto, bucket, data, tmp_path):
    url = f"s3://{bucket}/recs"
    version = publish(url, data["full"], data["items"], moto.endpoint)
    key = f"recs/popular/{version}/popular.npz"
    good = moto.client.get_object(Bucket=bucket, Key=key)["Body"].read()
    moto.client.put_object(Bucket=bucket, Key=key, Body=good[:-1] + bytes([good[-1] ^ 0xFF]))
    store = S3BundleStore(url, cache=tmp_path / "cache", endpoint_url=moto.endpoint)
    with pytest.raises(ArtifactError, match=r"popular\.npz: sha256 mismatch .*refused"):
        store.pull("popular")
    assert list((tmp_path / "cache" / "popular").iterdir()) == []

    moto.client.put_object(Bucket=bucket, Key=key, Body=good)
    bundle = store.pull("popular")
    assert bundle.version == version
    # a cached copy damaged later (the disk) is fetched again, whole
    (bundle.path / "popular.npz").write_bytes(b"\0" + good[1:])
    gets = moto.gets(f"/{bucket}/{key}")
    assert store.pull("popular").file("popular.npz").read_bytes() == good
    assert moto.gets(f"/{bucket}/{key}") == gets + 1


def test_an_announcement_makes_the_sync_check_at_once(moto, bucket, data, tmp_path):
    """The hook for an update stream: with polling off, announce() alone brings the new
    version in, and only the one the pointer names."""
    url = f"s3://{bucket}/recs"
    first = publish(url, data["full"], data["items"], moto.endpoint)
    store = S3BundleStore(url, cache=tmp_path / "cache", endpoint_url=moto.endpoint)
    sync = ArtifactSync(store, {"popular": None}, required=["popular"])
    assert sync.pull_all() == {"popular": first}
    applied: list[tuple[str, str]] = []
    sync.start(lambda channel, version: applied.append((channel, version)), poll_s=0)
    try:
        assert announce("not-served-here") == 0
        second = publish(url, data["half"], data["items"], moto.endpoint)
        assert announce("popular", second) == 1
        wait_until(lambda: applied == [("popular", second)], 60, what="the announced swap")
        assert ArtifactStore(tmp_path / "cache").current("popular") == second
    finally:
        sync.stop()
    assert announce("popular") == 0
    # a later build is a new version, never one of the two already published (an
    # identical build within the same second would rightly be the same version, so this
    # one differs: a third of the interactions)
    lines = data["full"].read_text().splitlines(keepends=True)
    third = tmp_path / "third.csv"
    third.write_text("".join(lines[: 1 + (len(lines) - 1) // 3]))
    assert publish(url, third, data["items"], moto.endpoint) not in (first, second)

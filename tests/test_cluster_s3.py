"""Replicas that serve from object storage and share a NATS JetStream update stream: a
new version published to the bucket reaches every replica through the stream, not only
through each replica's own polling of the pointer (issue 16: "replicas pull and hot-swap
when the pointer changes, announced through the stream").

Real processes only: moto's S3 server, a nats-server, and two ``recall-engine serve``
replicas with a cache each. Replica A polls the pointer; replica B never does
(``poll_s = 0``), so B can only learn of the new version from A's announcement."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from tests import test_cluster as cluster
from tests.test_cluster import CONVERGE_S, Replica, converged

s3 = pytest.importorskip("tests.test_s3_artifacts", reason="needs boto3 and moto[server]")

REPLICA_CONFIG = """
[server]
addr = "127.0.0.1:0"
metrics_addr = ""
catalog_sync_ms = 100
grace_s = 1
drain_s = 0

[artifacts]
root = "{url}"
cache = "cache"
endpoint_url = "{endpoint}"
poll_s = {poll_s}

[cluster]
log = "nats"
servers = {servers}
stream = "{stream}"
connect_timeout_s = 20

[channels.popular]
required = true
"""


# fixtures: the S3 stand-in (a real moto server process), the demo data, credentials,
# one nats-server
moto, data, aws, nats1 = s3.moto, s3.data, s3.aws, cluster.nats1


def test_a_version_one_replica_swaps_in_reaches_the_others_through_the_stream(
    moto, nats1, data, tmp_path, fake_plugins
):
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    moto.client.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/recs"
    first = s3.publish(url, data["full"], data["items"], moto.endpoint)

    stream = f"s3{uuid.uuid4().hex[:8]}"
    replicas = []
    for name, poll_s in (("polls", 0.2), ("never-polls", 0)):
        home = tmp_path / name
        home.mkdir()
        (home / "recall.toml").write_text(
            REPLICA_CONFIG.format(
                url=url,
                endpoint=moto.endpoint,
                poll_s=poll_s,
                servers=json.dumps(nats1.urls),
                stream=stream,
            )
        )
        replicas.append(Replica(home, fake_plugins))
    a, b = replicas
    try:
        for r in replicas:
            r.start()
        assert a.channels()["popular"] == b.channels()["popular"] == first

        second = s3.publish_files_only(url, data["half"], data["items"], moto.endpoint, tmp_path)
        s3.S3BundleStore(url, endpoint_url=moto.endpoint).set_current("popular", second)
        seconds = converged(
            replicas, lambda r: r.channels()["popular"] == second, "the new version"
        )
        print(f"new version on both replicas {seconds:.2f} s after the pointer moved")

        # A's own watcher swapped and announced it; B never read the pointer: the
        # stream told it, and it fetched the version (verified) into its own cache
        assert [e["version"] for e in a.named("artifact_swapped")] == [second]
        assert b.named("artifact_swapped") == []
        assert any(f"popular {second}" in e.get("done", []) for e in b.named("group_reloaded")), (
            b.events[-20:]
        )
        assert (b.home / "cache" / "popular" / second / "manifest.json").is_file()
        assert seconds <= CONVERGE_S
    finally:
        for r in replicas:
            r.stop()
            shutil.rmtree(r.home / "cache", ignore_errors=True)

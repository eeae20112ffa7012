"""``recall-engine build --ray``: the content channel built on a real two-node Ray
cluster (``ray.cluster_utils.Cluster``, two raylets on this machine) is the bundle the
single-machine build makes, also when a node is removed mid-build; without Ray the flag
fails naming the extra.

Ray listens on every interface, so the cluster runs in a child process inside new
network and PID namespaces with only loopback up (``unshare``, as root): nothing is
reachable from outside, and killing the child kills every Ray process with it (the
child is the namespace's PID 1). The child (:func:`cluster_main`) makes three builds of
the same synthetic data (the demo generator tests/conftest.py uses, written as CSV
files; 3,000 items: 12 encoder chunks): ``recall-engine build`` without and with
``--ray``, and one on Ray with the worker node removed as soon as the first chunk is
back. The tests compare the bundles it leaves.

On two cores each actor takes 0.5 CPU (a pool that takes every CPU starves Ray Data's
other stages), each node a 150 MB object store, and the nodes' health checks are fast
so that a removed node is declared dead in about 2 s instead of 30.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import ROOT, TESTS, wait_until

#: Vectors of the same item from the local and the Ray build: the chunks and the graph
#: are the same, so they agree to float rounding (measured: bit for bit).
MAX_ABS_DIFF = 1e-5
MIN_COSINE = 0.99999
N_ITEMS = 3000
CHILD_TIMEOUT_S = 420
BUILDS = ("local", "ray", "node_removed")


def _skip_reason() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "needs the [ray] extra (ray[data]): pip install 'recall-engine[ray]'"
    if os.geteuid() != 0:
        return "needs root: the Ray cluster runs in its own network namespace (unshare -n)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) for a loopback-only namespace"
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot make network and PID namespaces here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def ray_builds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder with the three builds and ``report.json`` (see :func:`cluster_main`)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("ray_build")
    # Ray's sockets live under its temp dir; pytest's folders are too long for them
    ray_tmp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    script = "from tests.test_build_ray import cluster_main; import sys; cluster_main(sys.argv[1])"
    try:
        done = subprocess.run(
            ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
            + ["sh", "-c", 'ip link set lo up && exec "$0" -c "$1" "$2"']
            + [sys.executable, script, str(out)],
            cwd=ROOT,
            env={**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,  # kills unshare, and with it the namespace's PID 1
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    (out / "child.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return out


def test_ray_build_makes_the_bundle_the_local_build_makes(ray_builds: Path):
    local, ray = _bundle(ray_builds / "local"), _bundle(ray_builds / "ray")
    assert ray["ids"] == local["ids"] and len(local["ids"]) == N_ITEMS
    assert ray["manifest"]["model_hashes"] == local["manifest"]["model_hashes"]
    for key in ("item_count", "dims", "metric", "build_params"):
        assert ray["manifest"][key] == local["manifest"][key], key
    assert ray["signatures"] == local["signatures"]
    max_abs, min_cos = _agreement(local["vectors"], ray["vectors"])
    assert max_abs <= MAX_ABS_DIFF and min_cos >= MIN_COSINE, (max_abs, min_cos)


def test_ray_build_finishes_when_a_node_is_removed_mid_build(ray_builds: Path):
    report = json.loads((ray_builds / "report.json").read_text())
    removal = report["node_removed"]
    assert removal["chunks_back_at_removal"] < removal["chunks"], removal
    assert removal["nodes_alive_after"] == 1, removal
    local, survived = _bundle(ray_builds / "local"), _bundle(ray_builds / "node_removed")
    assert survived["ids"] == local["ids"]
    max_abs, min_cos = _agreement(local["vectors"], survived["vectors"])
    assert max_abs <= MAX_ABS_DIFF and min_cos >= MIN_COSINE, (max_abs, min_cos)


def test_ray_flag_without_ray_installed_fails_naming_the_extra(tmp_path: Path):
    """Ray hidden as on an install without the extra (tests/without_extras): exit 2
    with one line that says what to install, before any data is read."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "without_extras"), str(ROOT)]),
        "RECALL_ENGINE_HIDE_MODULES": "ray",
    }
    done = subprocess.run(
        [sys.executable, "-m", "recall_engine.cli.main", "build", "--ray", "auto"]
        + ["--interactions", str(tmp_path / "missing.csv"), "--items", str(tmp_path / "x.csv")]
        + ["--out", str(tmp_path / "out"), "--no-progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "recall-engine[ray]" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_ray_flag_with_no_cluster_at_the_address_fails_at_once(tmp_path: Path):
    """Nobody listens at the address: exit 2 naming it, not minutes of ray.init
    waiting for a head node."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs the [ray] extra (ray[data]): pip install 'recall-engine[ray]'")
    with socket.socket() as s:  # a port that was free a moment ago, now closed
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    done = subprocess.run(
        [sys.executable, "-m", "recall_engine.cli.main", "build", "--ray", address]
        + ["--interactions", str(tmp_path / "missing.csv"), "--items", str(tmp_path / "x.csv")]
        + ["--out", str(tmp_path / "out"), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--ray {address}: no Ray head node there" in done.stderr, done.stderr


# --------------------------------------------------------------------------- helpers


def _bundle(root: Path) -> dict[str, Any]:
    from recall_engine.runtime.artifacts import ArtifactStore
    from recall_engine.runtime.index import VectorIndex

    bundle = ArtifactStore(root).open("content")
    index = VectorIndex.load(bundle.path / "index")
    ids = sorted(index.ids())
    vectors, found = index.vectors(ids)
    assert len(found) == len(ids)
    with np.load(bundle.path / "signatures.npz") as z:
        signatures = dict(zip(z["ids"].tolist(), z["digests"].tolist(), strict=True))
    return {"ids": ids, "vectors": vectors, "manifest": bundle.manifest, "signatures": signatures}


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.abs(a - b).max()), float(cos.min())


class _RemoveNodeAfterFirstChunk:
    """A build executor that passes everything to a :class:`RayExecutor` and removes
    a node of the real cluster (killing its raylet and workers) when the first chunk is
    back, with the rest still queued or running."""

    def __init__(self, inner: Any, cluster: Any, node: Any) -> None:
        self.inner, self.cluster, self.node = inner, cluster, node
        self.report: dict[str, Any] = {}

    def map(self, fn, chunks):
        chunks = list(chunks)
        for i, result in enumerate(self.inner.map(fn, chunks)):
            if i == 0:
                self.cluster.remove_node(self.node, allow_graceful=False)
                self.report.update(chunks_back_at_removal=1, chunks=len(chunks))
            yield result


CONFIG = """
[artifacts]
root = "artifacts"
[channels.content]
plugin = "content"
[channels.content.params]
epochs = 1
max_steps = 10
dim = 16
"""


def cluster_main(out: str) -> None:
    """The child's body (in the namespaces): three builds of the same CSV files into
    ``out``: ``recall-engine build`` without and with ``--ray``, then ``build_all`` on
    Ray with a node removed mid-build."""
    import ray
    from ray.cluster_utils import Cluster

    from recall_engine.cli.main import main
    from recall_engine.config import load_config
    from recall_engine.offline.build import build_all
    from recall_engine.offline.data.demo import write_demo
    from recall_engine.offline.data.interactions import load_interactions
    from recall_engine.offline.data.items import load_items
    from recall_engine.offline.ray_build import RayExecutor, RaySettings

    root = Path(out)
    interactions_csv, items_csv = write_demo(root / "data", n_items=N_ITEMS, n_users=300, seed=1)
    config = root / "content.toml"
    config.write_text(CONFIG)

    def cli(name: str, *flags: str) -> float:
        started = time.perf_counter()
        code = main(
            ["build", "--interactions", str(interactions_csv), "--items", str(items_csv)]
            + ["--config", str(config), "--out", str(root / name), "--no-progress", *flags]
        )
        assert code == 0, f"recall-engine build {' '.join(flags)}: exit {code}"
        return time.perf_counter() - started

    report: dict[str, Any] = {"seconds": {"local": cli("local")}}
    node = {"num_cpus": 2, "object_store_memory": 150 * 2**20}
    fast_health = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "_system_config": fast_health})
    try:
        worker = cluster.add_node(**node)
        cluster.wait_for_nodes(timeout=120)
        report["seconds"]["ray"] = cli(
            "ray", "--ray", cluster.address, "--ray-actors", "2", "--ray-actor-cpus", "0.5"
        )
        interactions, _ = load_interactions(interactions_csv)
        items, _ = load_items(items_csv)
        settings = RaySettings(cluster.address, actors=2, actor_cpus=0.5)
        with RayExecutor(settings) as executor:
            removing = _RemoveNodeAfterFirstChunk(executor, cluster, worker)
            started = time.perf_counter()
            build_all(
                interactions, items, root / "node_removed", load_config(config), executor=removing
            )
            report["seconds"]["node_removed"] = time.perf_counter() - started
            alive = wait_until(
                lambda: (n := sum(1 for x in ray.nodes() if x["Alive"])) == 1 and n,
                timeout=60,
                what="Ray to declare the removed node dead",
            )
            report["node_removed"] = {**removing.report, "nodes_alive_after": alive}
    finally:
        ray.shutdown()
        cluster.shutdown()
    (root / "report.json").write_text(json.dumps(report, indent=2))

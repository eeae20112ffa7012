"""The parent of ``serve --processes N`` starts and watches workers and serves nothing:
it must not hold the serving stack (gRPC, ONNX Runtime, usearch, the channels' plugins),
whose memory would count once more per host (docs/scale-out.md, "Memory per host"),
and it still refuses a config whose channel params are wrong."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from recall_engine.serving.workers import PARENT_ENV
from tests.helpers import wait_until
from tests.test_serve_process import Processes

SERVING_LIBRARIES = ("cygrpc", "onnxruntime", "usearch", "tokenizers")


def _mapped_files(pid: int) -> set[str]:
    return {
        line.split(maxsplit=5)[5]
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
        if len(line.split(maxsplit=5)) == 6
    }


def test_processes_parent_maps_none_of_the_serving_libraries(tmp_path, fake_plugins):
    server = Processes(tmp_path, fake_plugins)
    try:
        parent = _mapped_files(server.proc.pid)
        workers = [
            int(c)
            for c in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
            .read_text()
            .split()
        ]
        assert len(workers) == 2
        # the workers do map them: the check below looks at the right thing
        assert any("cygrpc" in f for f in _mapped_files(workers[0]))
        held = sorted(f for f in parent if any(lib in f for lib in SERVING_LIBRARIES))
        assert held == [], f"the parent maps {held}"
        assert server.recall(server.shared) == ["i1", "i2", "i3"]
    finally:
        server.stop()


def test_processes_refuse_a_channel_param_typo_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[server]\naddr = "127.0.0.1:0"\nmetrics_addr = ""\n'
        "[channels.content]\nparams = { expansion_serch = 64 }\n"
    )
    proc = subprocess.Popen(
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
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a parent that started workers after all: stop them too
    )
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, stderr
    err = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("channels.content.params.expansion_serch" in e.get("error", "") for e in err), stderr
    assert not any(e.get("event") == "processes_started" for e in err)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_the_parent_takes_its_workers_with_it(tmp_path, fake_plugins):
    """A parent killed without a word (kill -9, an out-of-memory kill) can forward no
    signal; its workers must not live on as orphans serving the port, holding the data
    folder and sharing the port with the next server started on it."""
    server = Processes(tmp_path, fake_plugins)
    try:
        workers = [
            int(c)
            for c in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
            .read_text()
            .split()
        ]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        assert server.recall(server.workers) == ["i1", "i2", "i3"]
        server.proc.kill()
        server.proc.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in workers), 10, what="the workers to go")
        with pytest.raises(grpc.RpcError) as e:
            server.recall(server.workers)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
        for pid in workers:  # were the test to fail: leave no orphan behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_parent_is_already_gone_exits_at_once(tmp_path):
    """The race :func:`die_with_parent` closes: the parent died between starting the
    worker and the worker asking for the signal, so nobody would send it."""
    path = tmp_path / "recall.toml"
    path.write_text('[server]\naddr = "127.0.0.1:0"\nmetrics_addr = ""\n')
    env = {**os.environ, PARENT_ENV: "1"}  # init, never this worker's parent here
    done = subprocess.run(
        [sys.executable, "-m", "recall_engine", "serve", "--config", str(path), "--log-json"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert '"parent_gone"' in done.stderr
    assert '"serving"' not in done.stderr


def test_a_second_group_on_a_taken_address_stops_instead_of_sharing_the_port(
    tmp_path, fake_plugins
):
    """The workers bind with SO_REUSEPORT, which lets any server of the same user share
    the port: a second ``serve`` started by mistake on the address of one that serves
    would take part of its calls without a word. The parent binds the address plainly
    first and stops, naming it."""
    first = Processes(tmp_path / "first", fake_plugins)
    try:
        config = tmp_path / "second.toml"
        config.write_text('[server]\nmetrics_addr = ""\n[channels.a]\nplugin = "fixed"\n')
        done = subprocess.run(
            [sys.executable, "-m", "recall_engine", "serve", "--config", str(config)]
            + ["--processes", "2", "--addr", f"127.0.0.1:{first.shared}", "--log-json"],
            env=first.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        failed = [json.loads(x) for x in done.stderr.splitlines() if '"startup_failed"' in x]
        assert failed and f"server.addr 127.0.0.1:{first.shared} is in use" in failed[0]["error"]
        assert '"processes_started"' not in done.stderr
        assert first.recall(first.shared) == ["i1", "i2", "i3"]  # the first serves on
    finally:
        first.stop()

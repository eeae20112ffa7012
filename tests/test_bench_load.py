"""Smoke test of the serving benchmarks: ``bench catalog`` at a tiny N writes artifacts
that every built-in channel serves, and ``bench load --in-process`` drives them for about
a second without errors. No timing assertions: timed targets belong to the benchmarks
themselves (docs/performance.md), not to tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recall_engine.cli.main import main
from recall_engine.serving.cores import auto_processes

CHANNELS = ("popular", "cf", "content", "llm")
OK, ERROR = "1", "3"  # ChannelStatus values, as JSON object keys


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory, minilm_onnx: Path) -> Path:
    """500 items, built with both shortcuts on (a sampled cf two-tower log and synthetic
    llm vectors around 100 MiniLM-embedded items), so both code paths run."""
    out = tmp_path_factory.mktemp("bench") / "catalog"
    code = main(
        [
            "bench",
            "catalog",
            "--items",
            "500",
            "--out",
            str(out),
            "--seed",
            "3",
            "--llm-real",
            "100",
            "--cf-train-samples",
            "500",
            "--llm-model-dir",
            str(minilm_onnx),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_bench_catalog_builds_every_channel_and_records_what_is_synthetic(catalog_dir):
    report = json.loads((catalog_dir / "bench_catalog.json").read_text())
    assert report["items"] == 500 and report["users"] == 100 and report["interactions"] > 0
    assert set(report["seconds"]) >= {"generate", *CHANNELS, "total_build"}
    for name in CHANNELS:
        version = (catalog_dir / name / "current").read_text().strip()
        manifest = json.loads((catalog_dir / name / version / "manifest.json").read_text())
        assert manifest["channel"] == name
    assert "synthetic" in report["llm"] and "sample of users" in report["cf"]
    llm_version = (catalog_dir / "llm" / "current").read_text().strip()
    llm = json.loads((catalog_dir / "llm" / llm_version / "manifest.json").read_text())
    synthetic = llm["build_params"]["synthetic_vectors"]
    assert synthetic["real_items"] + synthetic["synthetic_items"] == llm["item_count"] == 500
    cf_version = (catalog_dir / "cf" / "current").read_text().strip()
    check = json.loads((catalog_dir / "cf" / cf_version / "manifest.json").read_text())["cf"][
        "held_out_check"
    ]  # the sampled model, on users it did not train on
    assert check["users"] > 0 and 0 <= check["next_item_hit_at_100"] <= 1
    assert 0 < check["distinct_top_100"] <= 1
    header = (catalog_dir / "data" / "sample_interactions.csv").read_text().splitlines()[0]
    assert header == "user_id,item_id,timestamp,weight,event"


def test_bench_load_in_process_serves_every_channel_without_errors(catalog_dir, tmp_path):
    config = tmp_path / "load.toml"
    config.write_text(f"""
[artifacts]
root = "{catalog_dir}"
[channels.popular]
required = true
k = 30
[channels.cf]
k = 30
[channels.content]
k = 30
[channels.llm]
k = 30
""")
    out = tmp_path / "summary.json"
    code = main(
        [
            "bench",
            "load",
            "--in-process",
            "--config",
            str(config),
            "--interactions",
            str(catalog_dir / "data" / "sample_interactions.csv"),
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "-k",
            "50",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    assert {
        "requests",
        "ok",
        "seconds",
        "rps",
        "latency_ms",
        "errors",
        "by_kind",
        "channels_ms",
        "channel_status",
        "target",
        "mode",
        "k",
    } <= set(summary)
    assert summary["errors"] == {}
    assert summary["ok"] == summary["requests"] > 0
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "p99.9"}
    assert set(summary["by_kind"]) <= {"known", "unseen", "text"}
    assert summary["target"] == "in-process" and summary["k"] == 50
    for name in CHANNELS:
        status = summary["channel_status"][name]
        assert status.get(OK, 0) > 0 and ERROR not in status, (name, status)


def test_stage_benchmark_times_every_stage(catalog_dir):
    from recall_engine.benchmarks.load import RequestPool, stage_benchmark

    pool = RequestPool.build(catalog_dir, mix={"unseen": 0.7, "text": 0.3}, k=50, n=40)
    stages = stage_benchmark(catalog_dir, pool, rounds=20)
    assert {"decode", "validate", "assign", "fusion", "response encode"} <= set(stages)
    assert any(s.startswith("channel ") for s in stages)
    for v in stages.values():
        assert {"n", "mean", "p50", "p99", "cpu_mean"} <= set(v) and v["n"] > 0


def test_bench_load_against_a_running_server_reports_its_cpu_per_request(catalog_dir, tmp_path):
    import os

    from tests.harness import make_config, serve

    config = make_config(
        {
            "artifacts": {"root": str(catalog_dir)},
            "channels": {
                "popular": {"required": True, "k": 30},
                "cf": {"k": 30},
                "content": {"k": 30},
                "llm": {"k": 30},
            },
        },
        tmp_path,
    )
    out = tmp_path / "summary.json"
    with serve(config) as served:
        code = main(
            [
                "bench",
                "load",
                "--addr",
                f"127.0.0.1:{served.port}",
                "--artifacts",
                str(catalog_dir),
                "--interactions",
                str(catalog_dir / "data" / "sample_interactions.csv"),
                "--concurrency",
                "2",
                "--duration",
                "1",
                "--warmup",
                "0.3",
                "-k",
                "50",
                "--server-pid",
                str(os.getpid()),
                "--json",
                str(out),
            ]
        )
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["errors"] == {} and summary["ok"] == summary["requests"] > 0
    assert summary["target"] == f"127.0.0.1:{served.port}"
    assert set(summary["by_kind"]) == {"known", "unseen", "text"}
    for name in CHANNELS:
        assert summary["channel_status"][name].get(OK, 0) > 0, name
    # the server runs in this process here, so both figures count the same process:
    # they agree up to /proc's 10 ms clock ticks
    cpu = summary["cpu_ms_per_request"]
    assert cpu["generator"] > 0 and cpu["server"] > 0
    assert abs(cpu["server"] - cpu["generator"]) * summary["requests"] <= 30
    # the event loop hands every request to channel threads and back: switches happen
    assert summary["server_context_switches_per_request"] > 0


def test_bench_memory_reports_every_channel_in_fresh_processes(catalog_dir, tmp_path):
    out = tmp_path / "memory.json"
    assert (
        main(
            [
                "bench",
                "memory",
                "--artifacts",
                str(catalog_dir),
                "--channels",
                "popular,llm",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["catalog"]["catalog_items"] == 500 and report["catalog"]["baseline_mib"] > 0
    assert set(report["channels"]) == {"popular", "llm"}
    llm = report["channels"]["llm"]
    assert llm["items"] == 500 and llm["details"]["dims"] == "384"
    # the llm channel holds MiniLM int8 whatever the item count: its session (pre-packed
    # MatMul weights) and the pages of its mapped word embeddings the warm-up touched
    assert llm["channel_mib"] > 20


def test_channel_cost_script_reports_every_channel_by_request_kind(catalog_dir, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "cost.toml"
    config.write_text(
        f'[artifacts]\nroot = "{catalog_dir}"\n'
        + "".join(f"[channels.{name}]\nk = 30\n" for name in CHANNELS)
    )
    out = tmp_path / "cost.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "channel_cost.py"),
            "--config",
            str(config),
            "--interactions",
            str(catalog_dir / "data" / "sample_interactions.csv"),
            "--requests",
            "60",
            "--rounds",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cost = json.loads(out.read_text())
    assert set(cost) == set(CHANNELS)
    for name, row in cost.items():
        assert row["per_request"] > 0, name
    assert "text" in cost["llm"] and "text" not in cost["cf"]  # cf skips free text
    assert "| all channels |" in done.stdout
    assert all(row["short"] == 0 for row in cost.values())  # 500 items, k = 30

    # with a category filter: the filtered paths run, popular still answers k in full
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "channel_cost.py"),
            "--config",
            str(config),
            "--interactions",
            str(catalog_dir / "data" / "sample_interactions.csv"),
            "--requests",
            "30",
            "--rounds",
            "1",
            "--category",
            "jazz",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cost = json.loads(out.read_text())
    assert set(cost) == set(CHANNELS) and cost["popular"]["short"] == 0
    assert all(row["per_request"] > 0 for row in cost.values())


def test_the_1m_sweep_script_is_valid_bash():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    subprocess.run(["bash", "-n", str(root / "bench" / "load-1m.sh")], check=True)


def test_index_recall_script_scores_the_served_indexes_against_exact_search(catalog_dir, tmp_path):
    """Every vector channel's searches are recorded and searched again, by graph and
    exactly. 500 items is a small graph, where HNSW at ef >= 64 finds the exact top 30."""
    import subprocess
    import sys

    import numpy as np

    config = tmp_path / "recall.toml"
    config.write_text(
        f'[artifacts]\nroot = "{catalog_dir}"\n'
        + "".join(f"[channels.{name}]\nk = 30\n" for name in CHANNELS)
    )
    out, queries = tmp_path / "recall.json", tmp_path / "queries"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "index_recall.py"),
            "--config",
            str(config),
            "--interactions",
            str(catalog_dir / "data" / "sample_interactions.csv"),
            "--requests",
            "40",
            "--ef",
            "64,128",
            "--json",
            str(out),
            "--save-queries",
            str(queries),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"content", "llm"} <= set(result) and "popular" not in result  # no index
    for name, row in result.items():
        assert 0 < row["distinct_exact"] <= 1, name
        for ef in (64, 128):
            assert row[f"ef{ef}"]["recall"] >= 0.95, (name, row)
            assert row[f"ef{ef}"]["cpu_ms"] > 0
            assert -1e-3 <= row[f"ef{ef}"]["score_lost"] < 0.01  # bf16 rounding either way
        saved = np.load(queries / f"{name}.npz")
        assert len(saved["vectors"]) == len(saved["kinds"]) == len(saved["n"]) > 0
        # the channels' own query vectors: one per request, not all alike
        assert len(np.unique(saved["vectors"].round(4), axis=0)) > len(saved["vectors"]) // 2
    assert "text" in result["llm"]["ef64"]["by_kind"]
    assert "| llm | 128 |" in done.stdout

    # bench/index_tune.py: the same queries on the served index and on a rebuilt one
    version = (catalog_dir / "content" / "current").read_text().strip()
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "index_tune.py"),
            "--index",
            str(catalog_dir / "content" / version / "index"),
            "--queries",
            str(queries / "content.npz"),
            "--builds",
            "8:64",
            "--ef",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [r[1].strip() for r in rows[1:]] == ["served (M 16)", "M 8, expansion_add 64"]
    assert all(float(r[3]) >= 0.95 for r in rows[1:]), rows


def test_rebuilding_some_channels_keeps_the_report_of_the_others(
    catalog_dir, tmp_path, minilm_onnx
):
    import shutil

    from recall_engine.cli.main import main

    out = tmp_path / "cat"
    shutil.copytree(catalog_dir, out)
    before = json.loads((out / "bench_catalog.json").read_text())
    old_popular = (out / "popular" / "current").read_text()
    args = [
        "bench",
        "catalog",
        "--items",
        "500",
        "--out",
        str(out),
        "--seed",
        "3",
        "--channels",
        "popular",
        "--no-progress",
    ]
    assert main(args) == 0
    after = json.loads((out / "bench_catalog.json").read_text())
    assert (out / "popular" / "current").read_text() != old_popular  # rebuilt
    assert after["channels"] == before["channels"]
    assert after["seconds"]["cf"] == before["seconds"]["cf"]
    assert after["llm"] == before["llm"] and after["cf"] == before["cf"]
    # a channel built by a shortcut (synthetic llm vectors) leaves the others alone
    currents = {c: (out / c / "current").read_text() for c in CHANNELS}
    assert (
        main(
            [
                *args[:-3],
                "--channels",
                "llm",
                "--llm-real",
                "100",
                "--llm-model-dir",
                str(minilm_onnx),
                "--no-progress",
            ]
        )
        == 0
    )
    assert [c for c in CHANNELS if (out / c / "current").read_text() != currents[c]] == ["llm"]
    # another seed is another catalogue: nothing of the old report is kept
    assert main([*args[:6], "--seed", "4", "--channels", "popular", "--no-progress"]) == 0
    assert json.loads((out / "bench_catalog.json").read_text())["channels"] == ["popular"]


@pytest.mark.parametrize("processes", [None, "1"])
def test_bench_load_serve_echo_measures_the_engine_against_an_echo_of_its_own_answers(
    catalog_dir, tmp_path, processes
):
    """Issue 14: ``--serve`` starts the default server on the artifacts, ``--echo`` an
    echo server answering the same requests with the engine's own response bytes, both
    driven by the same generator in one run; the ratio is reported."""
    out = tmp_path / "summary.json"
    code = main(
        [
            "bench",
            "load",
            "--serve",
            "--echo",
            "--artifacts",
            str(catalog_dir),
            "--mix",
            "unseen=0.5,unseen_text=0.5",
            "--history-len",
            "5-15",
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "-k",
            "50",
            "--json",
            str(out),
            *(["--processes", processes] if processes else []),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["errors"] == {} and summary["ok"] > 0
    assert set(summary["by_kind"]) == {"unseen", "unseen_text"}
    # what `serve --artifacts` gives a user (one process per usable core), or one
    assert summary["server_processes"] == (int(processes) if processes else auto_processes())
    n = summary["server_processes"]
    assert summary["target"].endswith(f"({n} process{'' if n == 1 else 'es'})")
    echo = summary["echo"]
    assert echo["target"] == "echo" and echo["errors"] == {} and echo["ok"] > 0
    assert echo["cpu_ms_per_request"]["server"] > 0  # the echo process's own CPU
    ratio = summary["engine_to_echo"]
    assert ratio["throughput"] == round(summary["rps"] / echo["rps"], 3)


def test_bench_load_serve_stops_naming_why_when_the_server_does_not_serve(catalog_dir, tmp_path):
    """A start-up that fails after the address was logged (a channel's bundle missing)
    is not measured as a server: the bench stops with the server's own log line."""
    import shutil

    half = tmp_path / "half"
    shutil.copytree(catalog_dir / "catalog", half / "catalog")  # no channel bundles
    with pytest.raises(SystemExit) as e:
        main(["bench", "load", "--serve", "--artifacts", str(half), "--duration", "1"])
    message = str(e.value.code)
    assert "did not serve" in message and "startup_failed" in message, message


def test_the_echo_server_answers_with_the_engines_own_response_bytes(catalog_dir, tmp_path):
    import grpc

    from recall_engine._proto import recall_pb2, recall_pb2_grpc
    from recall_engine.benchmarks.load import RequestPool
    from recall_engine.benchmarks.servers import (
        EchoServerProcess,
        ServerProcess,
        record_responses,
    )

    pool = RequestPool.build(
        catalog_dir, mix={"unseen": 0.5, "unseen_text": 0.5}, k=20, n=6, history_len=(3, 8)
    )
    requests = [req for _, req in pool.requests]
    assert all(3 <= len(r.history_item_ids) <= 8 for r in requests)
    assert any(r.text for r in requests) and any(not r.text for r in requests)
    with ServerProcess(catalog_dir) as engine:
        recorded = record_responses(engine.addr, requests)
    assert len(recorded) == len({r.SerializeToString() for r in requests})
    with EchoServerProcess(recorded, tmp_path) as echo, grpc.insecure_channel(echo.addr) as ch:
        stub = recall_pb2_grpc.RecallServiceStub(ch)
        for req in requests:
            got = stub.Recall(req, timeout=10)
            assert got.SerializeToString() == recorded[req.SerializeToString()]
            engine_answer = recall_pb2.RecallResponse.FromString(recorded[req.SerializeToString()])
            assert len(engine_answer.item_ids) > 0  # a real answer, not an empty echo


def test_bench_memory_per_host_reads_every_process_after_warm_up_and_after_requests(
    catalog_dir, tmp_path
):
    """``--processes 2 --requests N``: the real ``serve`` alone and with two workers,
    PSS per process; the requests reach every worker and are answered."""
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[artifacts]\nroot = "{catalog_dir}"\n[channels.popular]\nrequired = true\n[channels.cf]\n'
    )
    out = tmp_path / "host.json"
    args = ["bench", "memory", "--config", str(config), "--processes", "2"]
    assert main(args + ["--requests", "40", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    one, many = report["one"], report["many"]
    assert len(one["workers"]) == 1 and one["parent"] is None
    assert len(many["workers"]) == 2 and many["parent"]["pss_mib"] > 0
    for run, n in ((one, 1), (many, 2)):
        after = run["after_requests"]
        assert after["requests"] == {"ok": 40 * n}  # shed ones retried after the hint
        assert all(w["pss_mib"] > 0 for w in after["workers"])
    # the report's target figures are those of the host as it serves
    assert report["host_ratio"] == report["after_requests"]["host_ratio"]
    assert report["host_ratio"] == pytest.approx(
        many["after_requests"]["host_pss_mib"] / one["after_requests"]["host_pss_mib"]
    )


def test_the_native_floor_libraries_are_found_from_the_installed_distributions():
    from recall_engine.benchmarks.native_floor import floor_libraries

    libs = floor_libraries()
    assert "usearch" in libs.values() and "onnxruntime" in libs.values()
    # the extension modules the served path calls into
    assert any(n.startswith("compiled.") and libs[n] == "usearch" for n in libs)
    assert any(n.startswith("onnxruntime_pybind11_state.") for n in libs)


def test_bench_load_native_floor_profiles_the_server_it_drives(catalog_dir, tmp_path):
    """Issue 14: the floor (CPU inside usearch and ONNX Runtime) is measured in the same
    run as the server's CPU per request, with Linux perf over the measured window."""
    import shutil
    import subprocess

    if shutil.which("perf") is None:
        pytest.skip("Linux perf is not installed (make test installs linux-perf as root)")
    probe = subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-o", str(tmp_path / "p"), "--", "true"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"perf may not profile here: {probe.stderr.decode()[:200]}")
    out = tmp_path / "summary.json"
    args = ["bench", "load", "--serve", "--native-floor", "--artifacts", str(catalog_dir)]
    args += ["--mix", "unseen=1", "--history-len", "5-15", "--concurrency", "2"]
    args += ["--duration", "2", "--warmup", "0.5", "-k", "50", "--json", str(out)]
    assert main(args) == 0
    summary = json.loads(out.read_text())
    assert summary["errors"] == {} and summary["ok"] > 0
    floor = summary["native_floor"]
    # every history request runs cf's two-tower encoder (ONNX Runtime) and a usearch
    # search, and Python runs around them: a share strictly between 0 and 1
    assert 0 < floor["by_library"]["usearch"] < 1 and 0 < floor["by_library"]["onnxruntime"] < 1
    assert floor["share"] == pytest.approx(sum(floor["by_library"].values()), abs=1e-3)
    assert floor["server_to_floor"] == round(1 / floor["share"], 2) > 1
    server = summary["cpu_ms_per_request"]["server"]
    assert floor["ms_per_request"] == pytest.approx(floor["share"] * server, abs=2e-3)
    assert "libpython3.11.so.1.0" in floor["samples_top"]


def test_bench_load_native_floor_needs_a_server_pid():
    with pytest.raises(SystemExit, match="--native-floor profiles a server"):
        main(["bench", "load", "--addr", "127.0.0.1:1", "--native-floor", "--artifacts", "x"])


def test_native_floor_without_perf_says_what_to_install(monkeypatch, tmp_path):
    from recall_engine.benchmarks.native_floor import NativeProfile

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no perf on it
    with pytest.raises(SystemExit, match="linux-perf"):
        NativeProfile()


def test_native_floor_stops_with_a_reason_when_perf_recorded_nothing():
    """A PID perf cannot attach to (gone, or not ours to profile) leaves no samples: the
    run stops and says so instead of reporting a floor of nothing."""
    import shutil

    from recall_engine.benchmarks.native_floor import NativeProfile

    if shutil.which("perf") is None:
        pytest.skip("Linux perf is not installed (make test installs linux-perf as root)")
    profile = NativeProfile()
    try:
        profile.start([2**22 + 12345])  # above the kernel's largest PID: no such process
        with pytest.raises(SystemExit, match="perf recorded nothing"):
            profile.stop()
    finally:
        profile.close()

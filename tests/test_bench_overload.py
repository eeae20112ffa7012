"""Smoke test of ``recall-engine bench overload``: it serves a built artifacts folder
with ``serve`` in a child process and reports every point. No timing assertions: the
targets belong to the benchmark's own report (timed targets are not tests)."""

from __future__ import annotations

import json

import pytest

from recall_engine.cli.main import main
from recall_engine.config import default_config
from recall_engine.offline.build import build_all


def popular_only(tmp_path, demo_small):
    artifacts = tmp_path / "artifacts"
    build_all(
        demo_small.interactions,
        demo_small.items,
        artifacts,
        default_config(artifacts.resolve()),
        channels=["popular"],  # the optional channels are skipped at load: fast enough
    )
    return artifacts


def test_bench_overload_reports_goodput_sheds_and_deadlines_per_point(tmp_path, demo_small):
    artifacts = popular_only(tmp_path, demo_small)
    out = tmp_path / "overload.json"
    code = main(
        [
            "bench",
            "overload",
            "--artifacts",
            str(artifacts),
            "--concurrency",
            "1,4",
            "--traffic",
            "history,text",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--echo",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    points = {(p["traffic"], p["concurrency"]): p for p in report["points"]}
    assert set(points) == {("history", 1), ("history", 4), ("text", 1), ("text", 4)}
    for p in points.values():
        assert p["ok"] > 0 and not p["other"], p
        assert {"shed", "shed_ms", "deadline_exceeded", "share_of_peak"} <= set(p)
    assert max(p["share_of_peak"] for p in points.values() if p["traffic"] == "text") == 1.0
    assert report["settings"]["max_in_flight"] >= 4
    assert report["settings"]["fallback"] == "popular"
    # the echo server at the same points: the reference for the shed latency
    echo = {(p["traffic"], p["concurrency"]): p for p in report["echo"]}
    assert set(echo) == set(points)
    for p in echo.values():
        assert p["ok"] > 0 and not p["other"] and not p["shed"], p


def test_overload_settings_given_on_the_command_line_reach_the_served_engine(tmp_path, demo_small):
    """``--max-in-flight 1 --overload target_loop_lag_ms=0 --overload queue_ms=0``: a
    fixed bound of one request and no line, so four clients get shed; a key [overload]
    does not have is refused."""
    artifacts = popular_only(tmp_path, demo_small)
    out = tmp_path / "overload.json"
    args = ["bench", "overload", "--artifacts", str(artifacts), "--traffic", "history"]
    code = main(
        args
        + ["--concurrency", "4", "--duration", "1", "--warmup", "0.2", "--json", str(out)]
        + ["--max-in-flight", "1", "--overload", "target_loop_lag_ms = 0"]
        + ["--overload", "queue_ms = 0"]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["overrides"] == {"target_loop_lag_ms": 0, "queue_ms": 0, "max_in_flight": 1}
    assert report["settings"]["queue_ms"] == 0
    assert report["settings"]["max_in_flight"] == 1
    assert report["settings"]["target_loop_lag_ms"] == 0
    (point,) = report["points"]
    assert point["ok"] > 0 and point["shed"] > 0, point
    with pytest.raises(SystemExit, match="--overload 'max_inflight=2': expected KEY=VALUE"):
        main(args + ["--overload", "max_inflight=2"])
    with pytest.raises(SystemExit, match="--overload: overload.switch_interval_ms"):
        main(args + ["--overload", "switch_interval_ms=-1"])

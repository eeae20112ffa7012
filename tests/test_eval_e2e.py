"""End to end on a small synthetic catalogue: ``recall-engine eval`` writes its JSON,
report and plots with sane figures, and ``tune-weights`` writes a loadable variant."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from recall_engine.cli.main import main
from recall_engine.config.schema import load_config, parse_config
from recall_engine.offline.data.demo import write_demo
from tests.helpers import require

# `eval` and `tune-weights` run the reference baselines: the [eval] extra.
pytestmark = pytest.mark.usefixtures("eval_extra")


@pytest.fixture(scope="module")
def eval_extra() -> None:
    require("scipy", "implicit", "matplotlib", extra="eval")


# Two real (fast) channels, an optional one that fails to load, and an experiment.
CONFIG = """\
[channels.popular]
required = true

[channels.recent]
plugin = "popular"
params = { half_life_days = 7.0 }

[channels.broken]
plugin = "fail_load"

[plan]
fusion = "rrf"
weights = { popular = 1.0, recent = 1.0, broken = 1.0 }

[[experiments]]
name = "exp"

[[experiments.variants]]
name = "a"
traffic = 0.5
plan = { weights = { popular = 1.0, recent = 0.2 }, fusion_params = { rrf_k = 10 } }

[[experiments.variants]]
name = "b"
traffic = 0.5
plan = { fusion = "weighted_sum", weights = { popular = 0.5, recent = 1.0 } }
"""


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval_demo")
    interactions, items = write_demo(root / "data", n_items=300, n_users=200)
    config = root / "config.toml"
    config.write_text(CONFIG)
    return interactions, items, config


@pytest.fixture(scope="module")
def eval_run(demo_files, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    interactions, items, config = demo_files
    out = tmp_path_factory.mktemp("eval_out")
    rc = main(
        [
            "eval",
            "--interactions",
            str(interactions),
            "--items",
            str(items),
            "--config",
            str(config),
            "--k",
            "10,20,50",
            "--out",
            str(out),
            "--parity-users",
            "30",
        ]
    )
    return out, rc


def test_eval_writes_json_report_and_plots(eval_run):
    out, rc = eval_run
    assert rc == 0
    for name in (
        "eval.json",
        "report.md",
        "recall_at_k.png",
        "slice_cold_users.png",
        "slice_cold_items.png",
    ):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "## All metrics @20" in report and "| fused:exp/b (variant)" in report


def test_eval_covers_channels_variants_and_baselines(eval_run):
    result = json.loads((eval_run[0] / "eval.json").read_text())
    systems = result["systems"]
    assert {
        "popular",
        "recent",
        "fused:default",
        "fused:exp/a",
        "fused:exp/b",
        "popularity",
        "itemknn",
        "ease",
        "als",
    } == set(systems)
    assert result["channels"]["loaded"] == ["popular", "recent"]  # broken skipped
    parity = result["channels"]["engine_parity"]
    assert all(p["identical"] == p["users"] == 30 for p in parity.values()), parity


def test_eval_figures_are_in_range(eval_run):
    result = json.loads((eval_run[0] / "eval.json").read_text())
    n_users = result["protocol"]["evaluated_users"]
    assert n_users > 100
    for name, s in result["systems"].items():
        for k, m in s["metrics"].items():
            for metric in ("recall", "ndcg", "hit", "coverage"):
                assert 0.0 <= m[metric] <= 1.0, (name, k, metric)
            assert 0.0 <= m["novelty"] <= math.log2(200), (name, k)
        recalls = [s["metrics"][k]["recall"] for k in ("10", "20", "50")]
        assert recalls == sorted(recalls), name  # recall grows with K
    # The learned baselines beat popularity on the planted structure.
    rec = {n: result["systems"][n]["metrics"]["50"]["recall"] for n in ("popularity", "ease")}
    assert rec["ease"] > rec["popularity"]


def test_tune_weights_writes_a_loadable_variant(demo_files, tmp_path: Path):
    interactions, items, config = demo_files
    snippet, full = tmp_path / "variant.toml", tmp_path / "config.toml"
    rc = main(
        [
            "tune-weights",
            "--interactions",
            str(interactions),
            "--items",
            str(items),
            "--config",
            str(config),
            "--k",
            "20",
            "--rounds",
            "1",
            "--weights",
            "0,0.5,1",
            "--out",
            str(snippet),
            "--write-config",
            str(full),
        ]
    )
    assert rc == 0
    doc = tomllib.loads(CONFIG + '\n[[experiments]]\nname = "tuned"\n\n' + snippet.read_text())
    cfg = parse_config(doc, tmp_path)
    tuned = cfg.experiments[-1].variants[0]
    assert tuned.name == "tuned" and tuned.plan.fusion == "rrf"
    assert tuned.plan.weights["broken"] == 0.0  # no lists: not given weight
    assert max(tuned.plan.weights.values()) == 1.0
    assert tuned.plan.weights["popular"] > 0.0  # the fallback is kept (--keep)
    loaded = load_config(full)
    assert [v.name for v in loaded.experiments[-1].variants] == ["control", "tuned"]

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
        "fused:default/configured",  # without the weights the build learned
        "fused:exp/a",
        "fused:exp/b",
        "popularity",
        "itemknn",
        "ease",
        "als",
    } == set(systems)
    assert result["channels"]["loaded"] == ["popular", "recent"]  # broken skipped
    # the temporary build learned its fusion weights, as `recall-engine build` does, and
    # the engine's lists match the offline fusion under them (parity below)
    fit = [b for b in result["channels"]["built"] if b["channel"] == "fusion.learned"]
    assert len(fit) == 1 and fit[0]["version"], result["channels"]["built"]
    parity = result["channels"]["engine_parity"]
    assert all(p["identical"] == p["users"] == 30 for p in parity.values()), parity
    assert set(parity) == {n.removeprefix("fused:") for n in systems if n.startswith("fused:")}
    # no validation user holds out a new item here: no cold gate, the plan's quota for all
    fit = result["channels"]["fusion_fit"]
    assert fit["cold"] is None and fit["validation"]["cold_gate"]["chosen"] is None


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


# A log where ten new items were first seen last: each the newest interaction of six
# users, so leave-last-one-out holds them out and no training row has them (cold).
# "fresh" (a fixed list, as a content channel would find them) returns them. The plan's
# weights as written (learned_weights = false): a fit on this log turns "fresh" off (the
# carve has no held-out row its items could match), and a channel the fit turns off is not
# called, so it brings the quota nothing (docs/reports/2026-12-05-issue-15-fusion-and-new-items.md,
# "fusion weights the build learns per request segment").
NEW_ITEMS = [f"new-{n:02d}" for n in range(10)]
COLD_CONFIG = f"""\
[channels.popular]
required = true

[channels.fresh]
plugin = "fixed"
params = {{ items = {NEW_ITEMS + ["item-0001", "item-0002"]!r} }}

[plan]
fusion = "rrf"
weights = {{ popular = 1.0, fresh = 0.05 }}
learned_weights = false
"""


def demo_with_new_items(root: Path, waves: dict[int, list[str]]) -> tuple[Path, Path]:
    """The demo log and items with new items appended: per ``waves`` entry (seconds after
    a user's last row -> ten items), one row of the first 60 users each, and the items."""
    interactions, items = write_demo(root / "data", n_items=300, n_users=200)
    lines = interactions.read_text().splitlines()
    last: dict[str, int] = {}
    for line in lines[1:]:
        user, _, stamp = line.split(",")[:3]
        last[user] = max(last.get(user, 0), int(stamp))
    users = sorted(last)[:60]
    extra = [
        f"{u},{new[n % 10]},{last[u] + after},1,view"
        for after, new in waves.items()
        for n, u in enumerate(users)
    ]
    interactions.write_text("\n".join(lines + extra) + "\n")
    with items.open("a") as fh:
        for new in waves.values():
            fh.writelines(f"{i},A new item {i},Something new,news\n" for i in new)
    return interactions, items


def eval_with_new_items(
    root: Path, waves: dict[int, list[str]], config_text: str, *args: str
) -> tuple[Path, int]:
    """``eval`` (leave-last-one-out, K 5/10/20, 60 parity users) over the demo log with
    ``waves`` of new items and ``config_text``; more ``args``. Returns its output folder
    and exit code."""
    interactions, items = demo_with_new_items(root, waves)
    config = root / "config.toml"
    config.write_text(config_text)
    out = root / "out"
    rc = main(
        ["eval", "--interactions", str(interactions), "--items", str(items)]
        + ["--config", str(config), "--k", "5,10,20", "--out", str(out)]
        + ["--protocol", "loo", "--parity-users", "60", *args]
    )
    return out, rc


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return eval_with_new_items(
        tmp_path_factory.mktemp("eval_cold"),
        {3600: NEW_ITEMS},
        COLD_CONFIG,
        *["--cold-quotas", "0.2", "--baselines", "popularity,itemknn", "--bootstrap", "200"],
    )


def test_eval_protocol_flag_and_new_outputs(cold_run):
    out, rc = cold_run
    assert rc == 0
    for name in (
        "segments_history_length.png",
        "segments_item_popularity.png",
        "segments_items.png",
        "cold_quota.png",
    ):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "eval.json").read_text())
    assert result["protocol"]["split"]["kind"] == "loo"
    assert result["protocol"]["test_items"] == result["protocol"]["evaluated_users"]
    report = (out / "report.md").read_text()
    assert "leave-last-one-out" in report
    for heading in ("## Segments", "## Paired bootstrap", "## Cold items in the fused list"):
        assert heading in report


def test_cold_quota_variant_brings_cold_items_and_the_engine_agrees(cold_run):
    result = json.loads((cold_run[0] / "eval.json").read_text())
    assert "fused:default+cold0.2" in result["systems"]
    # Engine.recall under the cold plan returns what the offline fusion computed
    parity = result["channels"]["engine_parity"]
    assert parity["default+cold0.2"] == {"users": 60, "identical": 60}, parity
    cold = result["segments"]["items"]["cold"]
    assert cold["users"] == 60 and cold["test_items"] == 60
    for k in ("5", "10", "20"):
        with_quota = cold["systems"]["fused:default+cold0.2"]["metrics"][k]["recall"]
        without = cold["systems"]["fused:default"]["metrics"][k]["recall"]
        assert with_quota >= without
    assert cold["systems"]["fused:default+cold0.2"]["metrics"]["20"]["recall"] > 0
    assert cold["systems"]["fused:default"]["metrics"]["20"]["recall"] == 0
    rows = {r["system"]: r for r in result["cold_quota"]["rows"]}
    assert rows["fused:default+cold0.2"]["cold_quota"] == 0.2
    assert rows["fused:default"]["warm_recall_change"] == 0


def test_segments_add_up_and_bootstrap_covers_every_pair(cold_run):
    result = json.loads((cold_run[0] / "eval.json").read_text())
    p = result["protocol"]
    segs = result["segments"]
    assert sum(s["users"] for s in segs["history_length"].values()) == p["evaluated_users"]
    assert sum(s["test_items"] for s in segs["item_popularity"].values()) == p["test_items"]
    assert "cold" in segs["item_popularity"]
    cmp = result["comparisons"]
    assert cmp["best_baseline"] in ("popularity", "itemknn")
    pairs = {(r["system"], r["reference"], r["metric"]) for r in cmp["rows"]}
    variants = [n for n, s in result["systems"].items() if s["kind"] == "variant"]
    refs = [n for n, s in result["systems"].items() if s["kind"] != "variant"]
    # every variant against every channel and baseline, and all but fused:default against it
    assert len(pairs) == (len(variants) * len(refs) + len(variants) - 1) * 2
    for r in cmp["rows"]:
        assert r["ci"][0] <= r["diff"] <= r["ci"][1] and r["users"] == p["evaluated_users"]


# The same kind of log with two waves of new items: for users 0-59 a "carve" item right
# before a "test" item. Leave-last-one-out holds the test items out; the carve the build
# fits on holds the carve items out, new to its training rows, so the fit has evidence
# about new items and learns a cold gate, which the engine then serves.
GATE_ITEMS = [f"carve-new-{n:02d}" for n in range(10)]
GATE_CONFIG = COLD_CONFIG.replace(
    repr(NEW_ITEMS + ["item-0001", "item-0002"]),
    repr(GATE_ITEMS + NEW_ITEMS + ["item-0001", "item-0002"]),
).replace("learned_weights = false", "cold_quota = 0.1")


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return eval_with_new_items(
        tmp_path_factory.mktemp("eval_gate"),
        {1800: GATE_ITEMS, 3600: NEW_ITEMS},
        GATE_CONFIG,
        *["--baselines", "popularity", "--bootstrap", "50"],
    )


def test_a_learned_cold_gate_is_served_as_eval_fuses_it_and_compared_with_one_quota(gate_run):
    out, rc = gate_run
    assert rc == 0
    result = json.loads((out / "eval.json").read_text())
    fit = result["channels"]["fusion_fit"]
    gate = fit["validation"]["cold_gate"]
    assert gate["users_with_cold_items"]["temporal"] >= 10, gate["users_with_cold_items"]
    assert fit["cold"] is not None and fit["cold"] == gate["chosen"]
    assert len(gate["tried"]) == 24  # 6 youth shares x 4 quotas
    # the default plan without the gate (one quota for every request, learned_cold =
    # false) is compared; the engine serves both as the offline fusion computed them
    assert "fused:default/flat-cold" in result["systems"]
    parity = result["channels"]["engine_parity"]
    assert parity["default"] == {"users": 60, "identical": 60}, parity
    assert parity["default/flat-cold"] == {"users": 60, "identical": 60}, parity

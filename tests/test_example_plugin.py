"""The example third-party plugin, installed with pip, found through its entry point,
served over gRPC, and passing its own test run (the shipped contract suite)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from recall_engine._proto import recall_pb2
from recall_engine.sdk.testing import ChannelContract
from recall_engine.serving.registry import discover
from tests.harness import catalog_of, make_config, serve
from tests.helpers import ROOT

EXAMPLE = ROOT / "examples" / "recall-engine-example-plugin"


@pytest.fixture(scope="module")
def example_installed():
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(EXAMPLE),
        ],
        check=True,
    )
    importlib.invalidate_caches()
    yield


def test_example_plugin_is_discovered_through_its_entry_point(example_installed):
    spec = discover()["same_category"]
    assert spec.dist == "recall-engine-example-plugin"
    assert spec.value == "recall_engine_example.channel:SameCategoryChannel"


def test_example_plugin_serves_candidates_over_grpc(example_installed, tmp_path):
    cats = {
        "a1": ("jazz",),
        "a2": ("jazz",),
        "a3": ("jazz",),
        "b1": ("space",),
        "b2": ("space",),
        "c1": ("jazz", "space"),
    }
    config = make_config({"channels": {"same_category": {"params": {"recent": 2}}}}, tmp_path)
    with serve(config, catalog_of(list(cats), cats)) as s:
        resp = s.stub.Recall(
            recall_pb2.RecallRequest(user_id="u", k=10, history_item_ids=["b1", "a1"])
        )
        # newest history item a1 (jazz) weighs 1, b1 (space) 1/2; c1 has both
        assert list(resp.item_ids) == ["c1", "a2", "a3", "b2"]
        status = {c.channel: c.status for c in resp.channels}
        assert status == {"same_category": recall_pb2.CHANNEL_STATUS_OK}
        listed = s.stub.ListChannels(recall_pb2.ListChannelsRequest()).channels
        assert [(c.name, c.plugin) for c in listed] == [("same_category", "same_category")]


def test_example_plugins_own_tests_run_the_shipped_contract_suite_and_pass(
    example_installed, tmp_path
):
    """``python -m pytest`` in the example's folder, as its author would run it: every
    check of recall_engine.sdk.testing.ChannelContract runs against its channel and
    passes, beside its own tests."""
    report = tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {
        (case.get("classname", "").rpartition(".")[2], case.get("name")): [c.tag for c in case]
        for case in cases
    }
    contract = {n for n in dir(ChannelContract) if n.startswith("test_")}
    ran = {name for (cls, name), _ in outcome.items() if cls == "TestSameCategoryContract"}
    assert ran == contract
    assert all(tags == [] for tags in outcome.values()), outcome  # no failure, error, skip
    assert len(outcome) > len(contract)  # and the example's own tests

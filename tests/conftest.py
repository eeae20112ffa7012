"""Shared fixtures: real entry-point registration of test plugins, synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

FAKE_ENTRY_POINTS = """\
[recall_engine.channels]
fixed = tests_fake_plugins:FixedChannel
fixed_b = tests_fake_plugins:FixedChannel
hang = tests_fake_plugins:HangChannel
boom = tests_fake_plugins:BoomChannel
fail_load = tests_fake_plugins:FailLoadChannel
not_a_channel = tests_fake_plugins:NotAChannel
broken_import = tests_fake_plugins_missing_module:Whatever
"""


def _write_dist(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="session", autouse=True)
def fake_plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the fake plugins as a real distribution (a .dist-info on sys.path)."""
    site = tmp_path_factory.mktemp("fake_site")
    (site / "tests_fake_plugins.py").write_text((TESTS / "fake_plugins.py").read_text())
    _write_dist(site, "recall_engine_test_plugins", FAKE_ENTRY_POINTS)
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))


@pytest.fixture()
def duplicate_plugin(fake_plugins: Path):
    """A second distribution registering the name 'fixed' again."""
    site = fake_plugins.parent / "dup_site"
    _write_dist(site, "recall_engine_dup_plugin",
                "[recall_engine.channels]\nfixed = tests_fake_plugins:BoomChannel\n")
    sys.path.insert(0, str(site))
    yield
    sys.path.remove(str(site))

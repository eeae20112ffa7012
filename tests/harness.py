"""A real gRPC server on a free port, in a background thread, for tests; and
``recall-engine serve`` itself in a child process (:class:`ServeProcess`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
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


class ServeProcess:
    """``recall-engine serve --config PATH --log-json`` in a child process. Its JSON log
    lines are kept in ``events`` and read for the ports it listens on (``port``,
    ``metrics_port``: the last process's); the constructor returns once every process
    (``serve --processes auto`` starts one per core) logged ``serving``.
    ``fake_site``: a folder put first on the child's ``PYTHONPATH`` (test plugins).
    ``processes``: ``--processes`` (default: serve's own, one per core)."""

    def __init__(
        self,
        config: Path,
        *,
        fake_site: Path | None = None,
        cwd: Path | None = None,
        start_s: float = 60.0,
        need_metrics: bool = False,
        processes: int | None = None,
    ) -> None:
        env = dict(os.environ)
        if fake_site is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(fake_site), os.getcwd()])
        argv = ["serve", "--config", str(config), "--log-json"]
        argv += ["--processes", str(processes)] if processes else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recall_engine", *argv],
            cwd=cwd,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[str] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.processes, self.serving = 1, 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self._ready.wait(start_s) and self.port is not None
        if not started or (need_metrics and self.metrics_port is None):
            self.stop()
            raise AssertionError("server did not start:\n" + "\n".join(self.events[-40:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.events.append(line.rstrip())
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "processes_started":  # serve --processes N (auto)
                self.processes = int(event["count"])
            elif event.get("event") == "server_listening":
                self.port = int(event["addr"].rsplit(":", 1)[1])
            elif event.get("event") == "metrics_listening":
                self.metrics_port = int(event["port"])
            elif event.get("event") == "serving":
                self.serving += 1
                if self.serving >= self.processes:  # ready once every process serves
                    self._ready.set()
        self._ready.set()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def scrape(self) -> str:
        """The text of its ``/metrics``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        """SIGINT (a graceful stop), then SIGKILL if it is still there after 30 s; the
        log reader is joined and the pipe closed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

"""gRPC server wiring: services, health, reflection, TLS, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recall_engine._proto import admin_pb2, admin_pb2_grpc, recall_pb2, recall_pb2_grpc
from recall_engine.config.schema import Config, TLSConfig
from recall_engine.observability import metrics
from recall_engine.observability.logs import get_logger
from recall_engine.serving.admin import AdminServicer
from recall_engine.serving.engine import Engine
from recall_engine.serving.process_group import GroupFollowError, ProcessGroup, follow
from recall_engine.serving.servicer import RecallServicer

log = get_logger(__name__)

RECALL_SERVICE = recall_pb2.DESCRIPTOR.services_by_name["RecallService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    engine: Engine

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", RECALL_SERVICE, ADMIN_SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING, let in-flight calls finish (up to ``grace``), close."""
        await self.set_serving(False)
        await self.server.stop(grace)
        self.engine.close()


def _credentials(tls: TLSConfig) -> grpc.ServerCredentials | None:
    if not tls.cert:
        return None
    key = tls.key.read_bytes() if tls.key else b""
    ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(key, tls.cert.read_bytes())], root_certificates=ca, require_client_auth=ca is not None
    )


async def create_server(
    engine: Engine,
    addr: str,
    *,
    reload_config: Callable[[], Config] | None = None,
    worker_addr: str | None = None,
    group: ProcessGroup | None = None,
) -> Running:
    """Bind ``addr`` (port 0 picks a free port) and ``worker_addr`` if given (this
    process's own address beside the port ``serve --processes N`` shares), register every
    service, start. Health says NOT_SERVING until the caller marks it serving."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    recall_pb2_grpc.add_RecallServiceServicer_to_server(RecallServicer(engine), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(engine, reload_config or (lambda: engine.config), group), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (RECALL_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    creds = _credentials(engine.config.tls)
    port = _bind(server, addr, creds)
    if worker_addr:
        _bind(server, worker_addr, creds)
    await server.start()
    running = Running(server, port, health_servicer, engine)
    await running.set_serving(False)
    return running


def _bind(server: grpc.aio.Server, addr: str, creds: grpc.ServerCredentials | None) -> int:
    port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
    if port == 0:
        raise OSError(f"could not bind {addr}")
    return port


def freeze_heap() -> int:
    """Move everything loaded so far (catalogue, channel tables) out of the garbage
    collector's sight (``gc.freeze``) and return how many objects that was.

    A million-item catalogue is a million long-lived Python objects; a full collection
    walks all of them (about 0.4 s at 1M items on the benchmark machine) and stops every
    request meanwhile. Frozen objects are never scanned, so full collections stay short.
    A SIGHUP reload freezes what it loaded too. ``RECALL_ENGINE_NO_GC_FREEZE=1`` turns
    this off (to measure it)."""
    if os.environ.get("RECALL_ENGINE_NO_GC_FREEZE"):
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _follow_others(
    engine: Engine, group: ProcessGroup | None, read_config: Callable[[], Config]
) -> None:
    """Every ``server.catalog_sync_ms``, apply what the other processes of the group
    did on admin calls: catalogue updates (``Engine.sync_catalog``), then artifact and
    config reloads (:mod:`recall_engine.serving.process_group`). A stat call per file when
    nothing changed."""
    while True:
        await asyncio.sleep(max(engine.config.server.catalog_sync_ms, 1) / 1000)
        try:
            applied = await asyncio.to_thread(engine.sync_catalog)
        except Exception as e:  # noqa: BLE001 - keep serving; say why, try again later
            log.error("catalog_sync_failed", error=str(e))
        else:
            if applied:
                log.info("catalog_synced", operations=applied)
        if group is None:
            continue
        try:
            done = await asyncio.to_thread(lambda: follow(engine, group.read_others(), read_config))
        except GroupFollowError as e:
            log.error("group_reload_failed", error=str(e), done=e.done)
        except ValueError as e:  # a malformed control log
            log.error("group_reload_failed", error=str(e), done=[])
        else:
            if done:
                log.info("group_reloaded", done=done, gc_frozen_objects=freeze_heap())


async def serve(
    config: Config,
    *,
    reload_config: Callable[[], Config],
    ready: Callable[[Running], None] | None = None,
    worker_addr: str | None = None,
) -> None:
    """Run until SIGTERM/SIGINT. SIGHUP reloads the config. Channels load after the
    port is bound, so health is observable (NOT_SERVING) while they warm up."""
    engine = Engine(config)
    group = ProcessGroup.from_env()
    running = await create_server(
        engine,
        config.server.addr,
        reload_config=reload_config,
        worker_addr=worker_addr,
        group=group,
    )
    host = config.server.addr.rpartition(":")[0]
    log.info("server_listening", addr=f"{host}:{running.port}", worker_addr=worker_addr)
    if config.server.metrics_addr:
        mport = metrics.start_http(config.server.metrics_addr)
        log.info("metrics_listening", port=mport)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.to_thread(engine.load)
    except Exception:
        await running.server.stop(0)
        raise
    frozen = freeze_heap()
    await running.set_serving(True)
    log.info(
        "serving", channels=[cc.name for cc, _ in engine.channel_infos()], gc_frozen_objects=frozen
    )
    if ready:
        ready(running)

    stop = asyncio.Event()
    follow = (
        loop.create_task(_follow_others(engine, group, reload_config))
        if config.server.catalog_sync_ms
        else None
    )

    def on_hup() -> None:
        async def reload() -> None:
            try:
                gen = await asyncio.to_thread(lambda: engine.reload_config(reload_config()))
                log.info("sighup_reload", generation=gen, gc_frozen_objects=freeze_heap())
            except Exception as e:  # noqa: BLE001 - keep serving the old config
                log.error("sighup_reload_failed", error=str(e))

        loop.create_task(reload())

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    if follow is not None:
        follow.cancel()
    log.info("shutting_down", grace_s=engine.config.server.grace_s)
    await running.stop(engine.config.server.grace_s)
    log.info("stopped")

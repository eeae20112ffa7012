"""gRPC server wiring: services, health, reflection, TLS, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recall_engine import __version__
from recall_engine._proto import admin_pb2, admin_pb2_grpc, recall_pb2, recall_pb2_grpc
from recall_engine.config import Config, ServerConfig, TLSConfig, TracingConfig
from recall_engine.observability import metrics, tracing
from recall_engine.observability.logs import get_logger
from recall_engine.serving.admin import AdminServicer
from recall_engine.serving.auth import AdminAuthInterceptor
from recall_engine.serving.engine import Engine
from recall_engine.serving.malformed import MalformedRequestInterceptor
from recall_engine.serving.process_group import (
    GroupFollowError,
    ProcessGroup,
    follow,
    open_replication,
)
from recall_engine.serving.remote_artifacts import fetcher, follow_remote, open_remote
from recall_engine.serving.servicer import RecallServicer, ShedInterceptor
from recall_engine.serving.trace_interceptor import TracingInterceptor
from recall_engine.serving.workers import INDEX_ENV, RESTARTS_ENV

log = get_logger(__name__)

RECALL_SERVICE = recall_pb2.DESCRIPTOR.services_by_name["RecallService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
ADMIN_METHODS = tuple(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
# For liveness probes: SERVING from before the port opens until the process exits. The
# other names ("" included) are readiness: NOT_SERVING while channels load and while
# draining, when a liveness probe must not restart the process.
LIVENESS_SERVICE = "liveness"


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    engine: Engine
    admin_server: grpc.aio.Server | None = None
    admin_port: int | None = None

    async def set_serving(self, serving: bool) -> None:
        await _set_health(self.health, serving)

    async def stop(self, grace: float, drain: float = 0.0) -> None:
        """Health NOT_SERVING; keep accepting calls for ``drain`` seconds so load
        balancers see it and move traffic away; then let in-flight calls finish (up to
        ``grace``) and close."""
        await self.set_serving(False)
        if drain > 0:
            log.info("draining", drain_s=drain)
            await asyncio.sleep(drain)
        servers = [self.server] + ([self.admin_server] if self.admin_server else [])
        await asyncio.gather(*(s.stop(grace) for s in servers))
        self.engine.close()


async def _set_health(servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", RECALL_SERVICE, ADMIN_SERVICE):
        await servicer.set(name, status)
    metrics.SERVING.set(1 if serving else 0)


def server_options(cfg: ServerConfig, share_port: bool = False) -> list[tuple[str, int]]:
    """gRPC core options from ``[server]``: connection limits and lifetimes.

    ``share_port``: SO_REUSEPORT, for the processes of ``serve --processes N``, which
    bind one port together. Off otherwise (gRPC turns it on by default): a second server
    started on a taken address by mistake must fail to bind, not silently take half the
    calls from the one already serving there.

    Idle connections are closed after ``max_connection_idle_s`` (an idle client
    reconnects transparently); every connection is recycled after
    ``max_connection_age_s`` (plus ``grace_s`` for calls in flight) so that clients
    rebalance over replicas that came up later; at most ``max_connections`` are open at
    once and ``max_concurrent_streams`` calls run per connection."""
    opts = [
        ("grpc.so_reuseport", 1 if share_port else 0),
        ("grpc.max_receive_message_length", cfg.max_receive_bytes),
        ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", cfg.max_connections),
    ]
    if cfg.max_connection_idle_s:
        opts.append(("grpc.max_connection_idle_ms", int(cfg.max_connection_idle_s * 1000)))
    if cfg.max_connection_age_s:
        opts.append(("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)))
        opts.append(("grpc.max_connection_age_grace_ms", int(cfg.grace_s * 1000)))
    return opts


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
    service, start. AdminService is served on ``server.admin_addr`` alone when that is
    set, else beside RecallService. Health says NOT_SERVING from before the port opens
    until the caller marks it serving."""
    cfg = engine.config.server
    options = server_options(cfg, share_port=group is not None)
    # auth first: an unauthenticated admin call is refused before anything parses it
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ShedInterceptor(engine),  # first: a shed Recall costs nothing else
        AdminAuthInterceptor(lambda: engine.config.admin.token),
        MalformedRequestInterceptor(),
    ]
    if tracing.ENABLED:  # outermost: the call's span covers the other interceptors
        interceptors.insert(0, TracingInterceptor())
    server = grpc.aio.server(interceptors=interceptors, options=options)
    health_servicer = health.aio.HealthServicer()
    await _set_health(health_servicer, False)  # before any port opens
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    admin = AdminServicer(engine, reload_config or (lambda: engine.config), group)
    metrics.admin_auth_series(ADMIN_METHODS)  # a first refused admin call is a change
    recall_pb2_grpc.add_RecallServiceServicer_to_server(RecallServicer(engine), server)
    admin_server = None
    if cfg.admin_addr:
        admin_server = grpc.aio.server(interceptors=interceptors, options=options)
        _add_common(admin_server, health_servicer, admin, recall=False)
        _add_common(server, health_servicer, None)
    else:
        _add_common(server, health_servicer, admin)
    creds = _credentials(engine.config.tls)
    port = _bind(server, addr, creds)
    if worker_addr:
        _bind(server, worker_addr, creds)
    admin_port = (
        _bind(admin_server, cfg.admin_addr, creds) if admin_server and cfg.admin_addr else None
    )
    await server.start()
    if admin_server is not None:
        await admin_server.start()
    return Running(server, port, health_servicer, engine, admin_server, admin_port)


def _add_common(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    admin: AdminServicer | None,
    *,
    recall: bool = True,
) -> None:
    """Health and reflection on every server; AdminService where ``admin`` is given."""
    services = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    if recall:
        services.append(RECALL_SERVICE)
    if admin is not None:
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        services.append(ADMIN_SERVICE)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(services, server)


def _bind(server: grpc.aio.Server, addr: str, creds: grpc.ServerCredentials | None) -> int:
    try:
        port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
    except RuntimeError as e:  # newer gRPC raises where older ones returned 0
        raise OSError(f"could not bind {addr} (taken by another process?): {e}") from None
    if port == 0:
        raise OSError(f"could not bind {addr} (taken by another process?)")
    return port


def start_tracing(cfg: TracingConfig) -> None:
    """Set up tracing from ``[tracing]`` (nothing when ``exporter = "none"``). Raises
    :class:`~recall_engine.observability.tracing.TracingUnavailable`, naming the
    ``[tracing]`` extra, when it is on and OpenTelemetry is not installed."""
    if not cfg.enabled:
        return
    tracing.configure(
        exporter=cfg.exporter,
        endpoint=cfg.endpoint,
        sampling_ratio=cfg.sampling_ratio,
        service_name=cfg.service_name,
        service_version=__version__,
        install_global=True,
    )
    log.info(
        "tracing_on",
        exporter=cfg.exporter,
        endpoint=cfg.endpoint,
        sampling_ratio=cfg.sampling_ratio,
        service_name=cfg.service_name,
    )


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
    engine: Engine,
    group: ProcessGroup | None,
    read_config: Callable[[], Config],
    fetch: Callable[[str, str], object] | None = None,
) -> None:
    """Every ``server.catalog_sync_ms``, apply what the other processes of the group
    did on admin calls: catalogue updates (``Engine.sync_catalog``), then artifact and
    config reloads (:mod:`recall_engine.serving.process_group`). A stat call per file when
    nothing changed. One failed round (a malformed line, an unreadable file) is logged
    and the next round tries again: the loop itself never ends on an error."""
    while True:
        await asyncio.sleep(max(engine.config.server.catalog_sync_ms, 1) / 1000)
        try:
            applied = await asyncio.to_thread(engine.sync_catalog)
        except Exception as e:  # noqa: BLE001 - keep serving; say why, try again later
            log.error("catalog_sync_failed", error=str(e), error_type=type(e).__name__)
        else:
            if applied:
                log.info("catalog_synced", operations=applied)
        if group is None:
            continue
        try:
            done = await asyncio.to_thread(
                lambda: follow(engine, group.read_others(), read_config, fetch)
            )
        except GroupFollowError as e:
            log.error("group_reload_failed", error=str(e), done=e.done)
        except Exception as e:  # noqa: BLE001 - a malformed or unreadable control log
            log.error("group_reload_failed", error=str(e), error_type=type(e).__name__, done=[])
        else:
            if done:
                log.info("group_reloaded", done=done, gc_frozen_objects=freeze_heap())


class Tasks:
    """The server's background tasks: referenced (asyncio keeps only weak references to
    tasks), and every failure logged. ``supervise`` restarts a loop that ends with an
    error, after a short backoff."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def supervise(
        self, name: str, loop_fn: Callable[[], Coroutine[Any, Any, None]], backoff_s: float = 1.0
    ) -> asyncio.Task[None]:
        async def run() -> None:
            while True:
                try:
                    await loop_fn()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - log, wait, start the loop again
                    log.error("background_task_failed", task=name, error=repr(e), restart=True)
                    await asyncio.sleep(backoff_s)

        return self.spawn(name, run())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), error=repr(task.exception()))

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def serve(
    config: Config,
    *,
    reload_config: Callable[[], Config],
    ready: Callable[[Running], None] | None = None,
    worker_addr: str | None = None,
) -> None:
    """Run until SIGTERM/SIGINT. SIGHUP reloads the config. Channels load after the
    port is bound, so health is observable (NOT_SERVING) while they warm up (a worker of
    ``serve --processes N`` binds once they have loaded: see :func:`_serve`). SIGTERM
    drains: NOT_SERVING for ``server.drain_s`` while calls are still answered, then the
    listeners close after at most ``server.grace_s`` more; SIGINT skips the drain."""
    metrics.WORKER_RESTARTS.set(int(os.environ.get(RESTARTS_ENV, "0") or 0))
    start_tracing(config.tracing)  # before the port opens: a missing extra stops start-up
    try:
        await _serve(config, reload_config=reload_config, ready=ready, worker_addr=worker_addr)
    finally:
        tracing.shutdown()  # the spans still queued are exported


async def _serve(
    config: Config,
    *,
    reload_config: Callable[[], Config],
    ready: Callable[[Running], None] | None,
    worker_addr: str | None,
) -> None:
    # [artifacts] root = "s3://...": the published bundles, pulled into the local cache
    remote = await asyncio.to_thread(open_remote, config)
    # [cluster] log = "nats": the catalogue and the reload announcements on the update stream
    replication = await asyncio.to_thread(open_replication, config)
    engine = Engine(config, catalog=replication.catalog if replication else None)
    group = replication.group if replication else ProcessGroup.from_env()

    async def listen() -> Running:
        running = await create_server(
            engine,
            config.server.addr,
            reload_config=reload_config,
            worker_addr=worker_addr,
            group=group,
        )
        host = config.server.addr.rpartition(":")[0]
        log.info("server_listening", addr=f"{host}:{running.port}", worker_addr=worker_addr)
        if running.admin_port is not None:
            admin_host = (config.server.admin_addr or "").rpartition(":")[0]
            log.info("admin_listening", addr=f"{admin_host}:{running.admin_port}")
        return running

    # One process listens before it loads, so health says NOT_SERVING while it warms
    # up. A worker of serve --processes N listens once it has loaded: on the port it
    # shares, the kernel would hand a loading worker its share of new connections
    # (after a restart: of every client that reconnects), each of whose calls would
    # then wait for it while the other workers serve.
    early = os.environ.get(INDEX_ENV) is None
    running = await listen() if early else None
    if config.server.metrics_addr:
        try:
            mport = metrics.start_http(config.server.metrics_addr)
        except OSError as e:  # the port is taken: say which, and close what is open
            if running is not None:
                await running.stop(0)
            raise RuntimeError(f"server.metrics_addr {config.server.metrics_addr}: {e}") from e
        log.info("metrics_listening", port=mport)
    loop = asyncio.get_running_loop()
    log.info("loading", channels=sorted(config.channels), listening=running is not None)
    try:
        await asyncio.to_thread(engine.load)
    except Exception:
        if running is not None:
            await running.stop(0)
        raise
    if running is None:
        running = await listen()
    frozen = freeze_heap()
    await running.set_serving(True)
    log.info(
        "serving",
        channels=[cc.name for cc, _ in engine.channel_infos()],
        gc_frozen_objects=frozen,
        # whether the host's other serving processes' requests are counted (host_load.py)
        host_load="group" if engine.admission.host.shared else "process",
    )
    if ready:
        ready(running)
    if remote is not None:  # a new pointer (or an announcement) swaps the new version in
        follow_remote(remote, engine, config, group)

    tasks = Tasks()
    stop = asyncio.Event()
    drain_s = config.server.drain_s
    if config.server.catalog_sync_ms:
        tasks.supervise(
            "follow_others", lambda: _follow_others(engine, group, reload_config, fetcher(remote))
        )

    async def reload() -> None:
        try:
            gen = await asyncio.to_thread(lambda: engine.reload_config(reload_config()))
            log.info("sighup_reload", generation=gen, gc_frozen_objects=freeze_heap())
        except Exception as e:  # noqa: BLE001 - keep serving the old config
            log.error("sighup_reload_failed", error=str(e))

    def on_int() -> None:
        nonlocal drain_s
        drain_s = 0.0
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, on_int)
    loop.add_signal_handler(signal.SIGHUP, lambda: tasks.spawn("sighup_reload", reload()))
    await stop.wait()
    await tasks.cancel_all()
    if remote is not None:
        await asyncio.to_thread(remote.stop)
    log.info("shutting_down", drain_s=drain_s, grace_s=engine.config.server.grace_s)
    await running.stop(engine.config.server.grace_s, drain=drain_s)
    if replication is not None:
        await asyncio.to_thread(replication.close)
    log.info("stopped")

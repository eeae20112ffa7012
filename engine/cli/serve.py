"""``recall-engine serve``: serve a config, a built artifacts folder, or the demo."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from pathlib import Path

from recall_engine.config import Config, ConfigError, default_config, load_config
from recall_engine.observability import metrics
from recall_engine.observability.logs import configure, get_logger
from recall_engine.runtime.object_store import is_s3_url
from recall_engine.serving.cores import AUTO_MAX, auto_processes
from recall_engine.serving.host_load import create_slots
from recall_engine.serving.workers import (
    GROUP_DIR_ENV,
    INDEX_ENV,
    PARENT_ENV,
    WorkerPool,
    die_with_parent,
    mark_serving,
    reserve_port,
    served_marks,
)

DEMO_DIR = Path("demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (see deploy/config.example.toml)")
    p.add_argument(
        "--artifacts",
        help="serve what `recall-engine build` wrote here (a folder, or s3://BUCKET/PREFIX: "
        "pulled into a local cache and followed) with the default config",
    )
    p.add_argument("--addr", help="HOST:PORT to bind (overrides server.addr)")
    p.add_argument("--metrics-addr", help="HOST:PORT for /metrics ('' disables)")
    p.add_argument(
        "--demo-dir",
        type=Path,
        default=DEMO_DIR,
        help="where the built-in demo is built when nothing is configured (default: ./demo)",
    )
    p.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON logs (default: JSON unless stderr is a terminal)",
    )
    p.add_argument(
        "--processes",
        type=_processes,
        default="auto",
        help="server processes sharing the port (SO_REUSEPORT), or 'auto' (the default): "
        f"one per usable core (CPU affinity and cgroup CPU quota), at most {AUTO_MAX}; "
        "Python serves about one core per process. With server.worker_port_base set, "
        "process i also listens alone on that port + i, for clients that balance per call",
    )
    p.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)  # set by --processes


def _processes(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, not {text!r}")
    return count


def _read(args: argparse.Namespace, *, check_params: bool = True) -> Config:
    if args.config:
        config = load_config(args.config)
        if check_params:  # a typo in [channels.*.params] is a config error too
            from recall_engine.serving.registry import check_plugin_params

            check_plugin_params(config)
    elif args.artifacts:
        root = args.artifacts
        config = default_config(root if is_s3_url(root) else Path(root).resolve())
    else:
        config = default_config((args.demo_dir / "artifacts").resolve())
    server = config.server
    if args.addr:
        server = dataclasses.replace(server, addr=args.addr)
    if args.metrics_addr is not None:
        server = dataclasses.replace(server, metrics_addr=args.metrics_addr)
    return dataclasses.replace(config, server=server)


def _reread(args: argparse.Namespace) -> Config:
    """:func:`_read` for a reload (SIGHUP, ReloadConfig): a file that does not load is a
    failed config reload on the metrics; the engine counts the rest of the outcomes."""
    try:
        return _read(args)
    except ConfigError:
        metrics.RELOADS.labels("config", "failed").inc()
        raise


def run(args: argparse.Namespace) -> int:
    configure(json=args.log_json)
    log = get_logger("recall_engine.serve")
    parent = os.environ.get(PARENT_ENV)
    if parent:  # a worker of serve --processes N: go when the parent goes
        die_with_parent(int(parent))
    if args.processes == "auto":
        args.processes = auto_processes()
        if args.processes > 1:
            log.info("processes", count=args.processes, chosen="auto: one per usable core")
    try:
        if args.processes > 1 and args.config:
            config = _read(args, check_params=False)
            _check_params_apart(config)
        else:
            config = _read(args)
    except ConfigError as e:
        log.error("config_invalid", error=str(e))
        return 2
    configure(level=config.server.log_level, json=args.log_json)
    if not args.config and not args.artifacts:
        from recall_engine.offline.demo_build import ensure_demo

        ensure_demo(args.demo_dir)
    if args.processes > 1:
        return _run_processes(args, config)
    from recall_engine.serving.server import serve

    worker_addr = None
    if args.worker_port is not None or config.server.worker_port_base:
        problem = _worker_ports_problem(config, 1)
        if problem:
            log.error("config_invalid", error=problem)
            return 2
        port = args.worker_port if args.worker_port is not None else config.server.worker_port_base
        worker_addr = f"{config.server.addr.rpartition(':')[0]}:{port}"
    try:
        asyncio.run(
            serve(
                config,
                reload_config=lambda: _reread(args),
                ready=lambda _running: mark_serving(),
                worker_addr=worker_addr,
            )
        )
    except Exception as e:  # noqa: BLE001 - start-up failure: say why, exit non-zero
        log.error("startup_failed", error=str(e))
        return 1
    return 0


def _check_params_apart(config: Config) -> None:
    """``check_plugin_params`` in a forked child: checking imports every enabled plugin
    (ONNX Runtime, usearch, tokenizers: ≈ 35 MiB) and the parent of ``--processes N``
    serves nothing, so it keeps none of that (its memory counts once per host,
    docs/scale-out.md). Raises :class:`ConfigError` with the child's message."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: check, report, exit without running the parent's cleanup
        os.close(read_end)
        code, message = 0, b""
        try:
            from recall_engine.serving.registry import check_plugin_params

            check_plugin_params(config)
        except ConfigError as e:
            code, message = 2, str(e).encode()
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            code, message = 1, f"{type(e).__name__}: {e}".encode()
        os.write(write_end, message)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message_text = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 2:
        raise ConfigError(message_text)
    if code != 0:
        raise RuntimeError(f"checking the channels' params failed ({code}): {message_text}")


def _run_processes(args: argparse.Namespace, config: Config) -> int:
    """Start ``args.processes`` copies of this server on the same port (the kernel
    spreads connections over them) and keep them up (:mod:`recall_engine.serving.workers`)."""
    import shutil
    import sys
    import tempfile

    log = get_logger("recall_engine.serve")
    problem = _worker_ports_problem(config, args.processes)
    if problem:
        log.error("config_invalid", error=problem)
        return 2
    host, _, port = config.server.addr.rpartition(":")
    base = config.server.worker_port_base
    # hold the port while the workers run (port 0: pick it once, here); a port someone
    # holds is refused here, as one process's bind is (the workers would share it)
    try:
        reserved = reserve_port(host, int(port))
    except OSError as e:
        log.error("startup_failed", error=f"server.addr {e.strerror}")
        return 1
    port = str(reserved.getsockname()[1])
    addr = f"{host}:{port}"
    argv = _without(_without(sys.argv[1:], "--processes"), "--addr")
    group_dir = tempfile.mkdtemp(prefix="recall-engine-group-")  # admin reloads fan out
    create_slots(group_dir, args.processes)  # each worker's requests in flight

    def command(i: int, _restarts: int) -> tuple[list[str], dict[str, str]]:
        child_args = [*argv, "--processes", "1", "--addr", addr]
        if config.server.metrics_addr:
            mhost, _, mport = config.server.metrics_addr.rpartition(":")
            child_port = int(mport) + i if int(mport) else 0
            child_args += ["--metrics-addr", f"{mhost}:{child_port}"]
        if not args.config and not args.artifacts:
            child_args += ["--demo-dir", str(args.demo_dir)]
        if base:
            child_args += ["--worker-port", str(base + i)]
        env = {**os.environ, INDEX_ENV: str(i), GROUP_DIR_ENV: group_dir}
        return [sys.executable, "-m", "recall_engine", *child_args], env

    try:
        return WorkerPool(args.processes, command, served=served_marks(group_dir)).run(
            addr=addr,
            group_dir=group_dir,
            worker_addrs=[f"{host}:{base + i}" for i in range(args.processes)] if base else [],
        )
    finally:
        shutil.rmtree(group_dir, ignore_errors=True)
        reserved.close()


def _worker_ports_problem(config: Config, processes: int) -> str | None:
    """Why ``server.worker_port_base`` cannot serve ``processes`` processes, or None."""
    base = config.server.worker_port_base
    if not base:
        return None
    shared = int(config.server.addr.rpartition(":")[2])
    last = base + processes - 1
    if last > 65535:
        return f"server.worker_port_base: {base} + {processes} processes runs past port 65535"
    if base <= shared <= last:
        return (
            f"server.worker_port_base: ports {base}-{last} overlap the shared "
            f"server.addr port {shared}"
        )
    return None


def _without(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out

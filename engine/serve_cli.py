"""``recall-engine serve``: serve a config, a built artifacts folder, or the demo."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path

from .config import Config, ConfigError, default_config, load_config
from .logs import configure, get_logger

DEMO_DIR = Path("demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (see deploy/config.example.toml)")
    p.add_argument("--artifacts", type=Path,
                   help="serve what `recall-engine build` wrote here with the default config")
    p.add_argument("--addr", help="HOST:PORT to bind (overrides server.addr)")
    p.add_argument("--metrics-addr", help="HOST:PORT for /metrics ('' disables)")
    p.add_argument("--demo-dir", type=Path, default=DEMO_DIR,
                   help="where the built-in demo is built when nothing is configured "
                        "(default: ./demo)")
    p.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                   help="JSON logs (default: JSON unless stderr is a terminal)")


def _read(args: argparse.Namespace) -> Config:
    if args.config:
        config = load_config(args.config)
    elif args.artifacts:
        config = default_config(args.artifacts.resolve())
    else:
        config = default_config((args.demo_dir / "artifacts").resolve())
    server = config.server
    if args.addr:
        server = dataclasses.replace(server, addr=args.addr)
    if args.metrics_addr is not None:
        server = dataclasses.replace(server, metrics_addr=args.metrics_addr)
    return dataclasses.replace(config, server=server)


def run(args: argparse.Namespace) -> int:
    configure(json=args.log_json)
    log = get_logger("recall_engine.serve")
    try:
        config = _read(args)
    except ConfigError as e:
        log.error("config_invalid", error=str(e))
        return 2
    if not args.config and not args.artifacts:
        from .demo_build import ensure_demo

        ensure_demo(args.demo_dir)
    from .server import serve

    try:
        asyncio.run(serve(config, reload_config=lambda: _read(args)))
    except Exception as e:  # noqa: BLE001 - start-up failure: say why, exit non-zero
        log.error("startup_failed", error=str(e))
        return 1
    return 0

"""``recall-engine build``: channel artifacts from interactions and items."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from recall_engine.cli._data_flags import add_data_arguments, load_inputs
from recall_engine.config import Config, ConfigError, default_config, load_config
from recall_engine.observability.logs import configure
from recall_engine.offline.build import build_all
from recall_engine.offline.data.interactions import DataError
from recall_engine.runtime.artifacts import ArtifactError
from recall_engine.runtime.catalog import CatalogInUse
from recall_engine.runtime.object_store import S3BundleStore, is_s3_url, parse_s3_url
from recall_engine.serving.registry import PluginError

if TYPE_CHECKING:
    from recall_engine.offline.ray_build import RayExecutor


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument(
        "--out",
        required=True,
        help="artifacts folder to write, or s3://BUCKET/PREFIX to publish to (built in a "
        "temporary folder, uploaded, then the current pointers moved)",
    )
    p.add_argument(
        "--endpoint-url",
        help="--out s3://: an S3-compatible endpoint (default: the config's "
        "[artifacts] endpoint_url, else boto3's own: AWS_ENDPOINT_URL or AWS)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config: which channels and their params (default: all built-in)",
    )
    p.add_argument("--channels", default="", help="comma-separated subset of channels to build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--no-fusion-fit",
        action="store_true",
        help="do not learn the fusion weights per request segment (by default a full build "
        "builds the channels once more on a validation carve of the interactions and "
        "fits them: docs/evaluation.md)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="encode items as Ray Data pipelines on a Ray cluster: auto, HOST:PORT or "
        "ray://HOST:10001 (needs the [ray] extra; docs/scale-out.md 'Builds on Ray')",
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        help="--ray: encoder actors (default: the cluster's CPUs but one, / --ray-actor-cpus)",
    )
    p.add_argument("--ray-actor-cpus", type=float, default=1.0, help="--ray: CPUs per actor")


def run(args: argparse.Namespace) -> int:
    configure(json=False if sys.stderr.isatty() else None)
    progress = not args.no_progress and sys.stderr.isatty()
    remote = is_s3_url(args.out)
    out = Path(tempfile.mkdtemp(prefix="recall-engine-build-")) if remote else Path(args.out)
    ray = contextlib.ExitStack()
    try:
        if remote:
            _check_url(args.out)  # a bad URL stops us before any work
        config = load_config(args.config) if args.config else default_config(out.resolve())
        executor = ray.enter_context(_ray_executor(args)) if args.ray else None
        interactions, items = load_inputs(args, progress)
        built = build_all(
            interactions,
            items,
            out,
            config,
            channels=[c for c in args.channels.split(",") if c] or None,
            seed=args.seed,
            progress=progress,
            executor=executor,
            fit_fusion=not args.no_fusion_fit,
        )
        if remote:
            _publish(args, config, out, [b.channel for b in built if b.version])
    except (
        ConfigError,
        DataError,
        PluginError,
        FileNotFoundError,
        CatalogInUse,
        ArtifactError,
    ) as e:
        print(f"recall-engine build: {e}", file=sys.stderr)
        return 2
    finally:
        ray.close()
        if remote:
            shutil.rmtree(out, ignore_errors=True)
    verb = "built and published" if remote else "built"
    print(f"{verb} {len(items)} items, {len(interactions)} interactions into {args.out}")
    for b in built:
        state = f"version {b.version}" if b.version else f"skipped ({b.skipped})"
        print(f"  {b.channel:<10} {state:<28} {b.seconds:7.1f} s  items={b.item_count}")
    return 0


def _ray_executor(args: argparse.Namespace) -> RayExecutor:
    """Connects on entry (a missing [ray] extra or no cluster: ConfigError, exit 2)."""
    from recall_engine.offline.ray_build import RayExecutor, RaySettings

    return RayExecutor(
        RaySettings(args.ray, actors=args.ray_actors, actor_cpus=args.ray_actor_cpus)
    )


def _check_url(url: str) -> None:
    try:
        parse_s3_url(url, "--out")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _publish(args: argparse.Namespace, config: Config, out: Path, channels: list[str]) -> None:
    """Upload what was built into ``out`` to ``args.out``: every file, then the
    pointers (:meth:`S3BundleStore.publish`)."""
    endpoint = args.endpoint_url
    if endpoint is None and config.remote_artifacts is not None:
        endpoint = config.remote_artifacts.endpoint_url
    store = S3BundleStore(args.out, endpoint_url=endpoint, setting="--out")
    store.publish(out, channels)

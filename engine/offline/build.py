"""``recall-engine build``: interactions + items → a catalogue and one artifact bundle
per enabled channel whose plugin can build (``Channel.build``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recall_engine.config import Config
from recall_engine.observability.logs import get_logger
from recall_engine.offline.data.interactions import Interactions
from recall_engine.runtime.artifacts import ArtifactStore
from recall_engine.runtime.catalog import Catalog, write_first_seen
from recall_engine.sdk.capabilities import Buildable
from recall_engine.sdk.channel import BuildContext, BuildExecutor, ItemRecord, LocalExecutor
from recall_engine.sdk.vector_channel import using_executor
from recall_engine.serving.registry import (
    PluginError,
    check_plugin_params,
    discover,
    load_factory,
    resolve,
)

log = get_logger(__name__)


@dataclass(slots=True, frozen=True)
class BuiltChannel:
    channel: str
    version: str | None
    seconds: float
    item_count: int | None
    skipped: str = ""


def build_all(
    interactions: Interactions,
    items: Sequence[ItemRecord],
    out: Path,
    config: Config,
    *,
    channels: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    executor: BuildExecutor | None = None,
    fit_fusion: bool = True,
) -> list[BuiltChannel]:
    """Write ``out/catalog`` (with ``first_seen.npz``: which items the log has, since
    when) and a new current bundle under ``out/<channel>`` for every enabled channel (or
    just ``channels``; an empty list builds the catalogue alone) whose plugin defines
    ``build``. ``executor`` runs the channels' batch work (``BuildContext.executor``;
    default: this process; ``recall-engine build --ray``:
    :class:`recall_engine.offline.ray_build.RayExecutor`).

    A full build (``channels`` None) then fits the fusion weights per request segment on
    a validation carve of ``interactions`` (:mod:`recall_engine.offline.fusion_fit`:
    the channels are built once more, on the carve) and writes them as
    ``out/fusion.learned``; ``fit_fusion=False`` (``build --no-fusion-fit``) skips it."""
    check_plugin_params(config)  # a typo in [channels.*.params] stops us before any work
    out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(items, folder=out / "catalog")
    catalog.save(out / "catalog")
    # which items had interactions, and since when: the fusion's cold quota reads it
    write_first_seen(
        out / "catalog",
        interactions.item_ids,
        interactions.timestamps if interactions.has_timestamps else None,
    )
    store = ArtifactStore(out)
    plugins = discover(blocked=config.plugins.blocked)
    results: list[BuiltChannel] = []
    for name, cc in config.channels.items():
        if not cc.enabled or (channels is not None and name not in channels):
            continue
        try:
            factory = load_factory(resolve(plugins, cc.plugin))
        except PluginError as e:
            if cc.required:
                raise
            log.error("build_skipped", channel=name, error=str(e))
            results.append(BuiltChannel(name, None, 0.0, None, str(e)))
            continue
        if not isinstance(factory, Buildable):
            results.append(BuiltChannel(name, None, 0.0, None, "plugin has no build step"))
            continue
        t0 = time.perf_counter()
        log.info("build_started", channel=name, plugin=cc.plugin)
        with store.new_version(name, make_current=True) as writer:
            ctx = BuildContext(
                name,
                interactions,
                catalog,
                writer.path,
                cc.params,
                seed,
                progress,
                executor=executor or LocalExecutor(),
            )
            with using_executor(ctx.executor):
                fields = factory.build(ctx) or {}
            writer.update(**fields)
            bundle = writer.commit()
        seconds = time.perf_counter() - t0
        log.info("build_finished", channel=name, version=bundle.version, seconds=round(seconds, 2))
        results.append(
            BuiltChannel(name, bundle.version, seconds, bundle.manifest.get("item_count"))
        )
    if fit_fusion and channels is None:
        from recall_engine.offline.fusion_fit import BUNDLE
        from recall_engine.offline.fusion_fit import fit_fusion as fit

        t0 = time.perf_counter()
        version = fit(interactions, items, out, config, seed=seed)
        results.append(
            BuiltChannel(
                BUNDLE,
                version,
                time.perf_counter() - t0,
                None,
                "" if version else "nothing to fit (see the fusion_fit_skipped log line)",
            )
        )
    return results

"""The built-in demo: what ``recall-engine serve`` builds and serves when nothing is
configured (``make serve``). Deterministic synthetic catalogue and interaction log
(``recall_engine.offline.data.demo``), built once into ``DEMO/artifacts`` and reused."""

from __future__ import annotations

import time
from pathlib import Path

from recall_engine.config import default_config
from recall_engine.observability.logs import get_logger

log = get_logger(__name__)

COMPLETE = ".demo-complete"


def ensure_demo(demo_dir: Path, *, progress: bool | None = None) -> Path:
    """Build the demo artifacts under ``demo_dir/artifacts`` unless a complete build is
    already there; return the artifacts folder."""
    from recall_engine.offline.build import build_all
    from recall_engine.offline.data.demo import write_demo
    from recall_engine.offline.data.interactions import load_interactions
    from recall_engine.offline.data.items import load_items

    artifacts = demo_dir / "artifacts"
    if (artifacts / COMPLETE).exists():
        return artifacts
    t0 = time.perf_counter()
    log.info("demo_build_started", folder=str(demo_dir))
    interactions_path, items_path = write_demo(demo_dir / "data")
    interactions, _ = load_interactions(interactions_path)
    items, _ = load_items(items_path)
    built = build_all(
        interactions, items, artifacts, default_config(artifacts.resolve()), progress=bool(progress)
    )
    if any(b.version is None and b.skipped != "plugin has no build step" for b in built):
        log.warning(
            "demo_incomplete", skipped={b.channel: b.skipped for b in built if b.version is None}
        )
        return artifacts
    (artifacts / COMPLETE).write_text("".join(f"{b.channel} {b.version}\n" for b in built))
    log.info(
        "demo_build_finished",
        seconds=round(time.perf_counter() - t0, 1),
        channels={b.channel: b.version for b in built},
    )
    return artifacts

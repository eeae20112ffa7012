"""Restart time after N online upserts: with the vectors the channel saved, and without.

Builds the demo catalogue's ``CHANNEL`` (``llm`` or ``content``) into a temporary folder,
loads the engine, sends N upserts through ``Engine.upsert_items`` (each one encoded and
written to the update log), closes it, then times a restart twice: as served (the
channel reuses the vectors it saved beside the catalogue) and with those saved vectors
moved away (every online item is encoded again, the behaviour before they were saved).

    python bench/restart_cost.py 1200 llm
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("upserts", type=int, help="online upserts before the restart")
    p.add_argument("channel", choices=("llm", "content"))
    args = p.parse_args(argv)

    from recall_engine.config import parse_config
    from recall_engine.offline.build import build_all
    from recall_engine.offline.data.demo import make_demo
    from recall_engine.runtime.catalog import Catalog
    from recall_engine.runtime.catalog_files import VECTORS_DIR
    from recall_engine.sdk.types import ItemRecord
    from recall_engine.serving.engine import Engine

    root = Path(tempfile.mkdtemp(prefix="restart-cost-"))
    try:
        demo = make_demo(n_items=2000, n_users=500, seed=1)
        params = {"epochs": 1} if args.channel == "content" else {}
        cfg = parse_config(
            {
                "server": {"metrics_addr": ""},
                "artifacts": {"root": str(root)},
                "channels": {args.channel: {"params": params}},
            },
            root,
        )
        build_all(demo.interactions, demo.items, root, cfg)
        engine = Engine(cfg, catalog=Catalog.load(root / "catalog"))
        engine.load()
        t0 = time.perf_counter()
        for n in range(args.upserts):
            item = ItemRecord(f"new{n}", f"space rocket number {n}", "astronauts", ("space",))
            engine.upsert_items([item])
        per_upsert = (time.perf_counter() - t0) / max(args.upserts, 1)
        engine.close()

        def restart() -> float:
            t = time.perf_counter()
            e = Engine(cfg, catalog=Catalog.load(root / "catalog"))
            e.load()
            e.close()
            return time.perf_counter() - t

        with_saved = restart()
        shutil.move(root / "catalog" / VECTORS_DIR, root / "vectors.off")
        encoding = restart()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"{args.channel}, {args.upserts} upserts ({per_upsert * 1000:.1f} ms each): restart "
        f"{with_saved:.2f} s with saved vectors, {encoding:.2f} s encoding them again"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``recall-engine bench memory``: resident memory per channel, and per million items.

Each part is measured in a fresh Python process, so nothing one channel allocated is
counted against another: the process loads the catalogue (``ARTIFACTS/catalog``, shared
by every channel), then the one channel exactly as the engine loads it (its config,
``load()`` and ``warmup()``), reading its resident set size (``VmRSS`` in
``/proc/self/status``) after each step. A channel's figure is the growth over the
catalogue; "per 1M items" divides by the items the channel reports (``info().item_count``).
The baseline (interpreter plus imports) is reported apart. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
from pathlib import Path

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")

from recall_engine.benchmarks.load import _config
from recall_engine.runtime.catalog import Catalog
from recall_engine.serving.engine import Engine

config = _config(Path(sys.argv[1]), Path(sys.argv[2]) if sys.argv[2] else None)
name = sys.argv[3]
base = rss_mib()
folder = config.artifacts_root / "catalog"
catalog = Catalog.load(folder) if Catalog.exists(folder) else Catalog()
after_catalog = rss_mib()
out = {"baseline_mib": base, "catalog_mib": after_catalog - base, "catalog_items": len(catalog)}
if name != "-":
    engine = Engine(config, catalog=catalog)
    t0 = time.perf_counter()
    slots, failed = engine._load_channels(config, [name], {})  # noqa: SLF001
    if name in failed:
        raise SystemExit(f"channel {name}: {failed[name]}")
    info = slots[name].channel.info()
    out.update(channel_mib=rss_mib() - after_catalog, items=info.item_count,
               seconds=time.perf_counter() - t0,
               details={k: v for k, v in info.details.items()
                        if k in ("index_dtype", "dims", "precision", "index_simd")})
print(json.dumps(out))
"""


def measure(artifacts: Path, config: Path | None, channel: str) -> dict:
    """One fresh process: catalogue, then ``channel`` (``"-"``: catalogue only)."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(artifacts), str(config) if config else "", channel],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {channel}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts", type=Path, help="artifacts folder; default: --config's artifacts.root"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config (channel params such as precision or ef); default: the "
        "built-in channels over --artifacts",
    )
    p.add_argument("--channels", help="comma-separated channels (default: every enabled one)")
    p.add_argument("--json", type=Path, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    from recall_engine.benchmarks.load import _config

    if args.artifacts is None and args.config is None:
        raise SystemExit("give --artifacts DIR or --config FILE")
    config = _config(args.artifacts or Path("."), args.config)
    artifacts = args.artifacts or config.artifacts_root
    names = (
        [c for c in args.channels.split(",") if c]
        if args.channels
        else [n for n, c in config.channels.items() if c.enabled]
    )
    catalog = measure(artifacts, args.config, "-")
    rows = {name: measure(artifacts, args.config, name) for name in names}
    print(f"baseline (interpreter + imports): {catalog['baseline_mib']:.0f} MiB")
    print("| part | items | RSS MiB | MiB per 1M items | notes |\n|---|---:|---:|---:|---|")
    n = catalog["catalog_items"]
    print(
        f"| catalogue (shared) | {n:,} | {catalog['catalog_mib']:,.0f} | "
        f"{catalog['catalog_mib'] * 1e6 / max(n, 1):,.0f} | |"
    )
    for name, r in rows.items():
        per_m = r["channel_mib"] * 1e6 / max(r["items"], 1)
        notes = ", ".join(f"{k} {v}" for k, v in r["details"].items())
        print(f"| {name} | {r['items']:,} | {r['channel_mib']:,.0f} | {per_m:,.0f} | {notes} |")
    if args.json:
        args.json.write_text(json.dumps({"catalog": catalog, "channels": rows}, indent=2))
    return 0

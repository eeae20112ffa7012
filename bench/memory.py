"""``recall-engine bench memory``: resident memory per channel, and per million items.

Each part is measured in a fresh Python process, so nothing one channel allocated is
counted against another: the process loads the catalogue (``ARTIFACTS/catalog``, shared
by every channel), then the one channel exactly as the engine loads it (its config,
``load()`` and ``warmup()``), reading its resident set size (``VmRSS`` in
``/proc/self/status``) after each step. A channel's figure is the growth over the
catalogue; "per 1M items" divides by the items the channel reports (``info().item_count``).
The baseline (interpreter plus imports) is reported apart. Linux only.

``--processes N`` (N >= 2) measures what a host holds instead: it starts the real
``recall-engine serve --config CONFIG`` once alone and once with ``--processes N``, waits
until every worker logged ``serving`` (channels loaded and warmed up), and reads each
process's ``/proc/<pid>/smaps_rollup``. RSS counts a shared page in every process that
maps it; PSS (proportional set size) divides it among them, so the PSS of all processes
adds up to what the host holds. Reported: per process RSS, PSS and private (USS)
memory; the host's PSS for one process and for N (workers and the parent); their ratio;
and the memory each extra process adds. Memory-mapped index pages count once a search
has touched them, so a host that has searched its whole index holds up to the index
files' size more (listed as "mapped index files").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def smaps_rollup(pid: int) -> dict[str, float]:
    """``Rss``, ``Pss`` and ``Private`` (clean + dirty: USS) of ``pid`` in MiB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) / 1024
    return {
        "rss_mib": fields.get("Rss", 0.0),
        "pss_mib": fields.get("Pss", 0.0),
        "private_mib": fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0),
    }


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_memory(config: Path, processes: int, timeout_s: float = 1800.0) -> dict:
    """Start ``recall-engine serve --config CONFIG --processes N`` (the real command),
    wait until each of its ``N`` workers logged ``serving``, read every process's
    memory, then stop it (SIGINT, then SIGKILL after 60 s). For N = 1 the server is the
    one process."""
    argv = [
        sys.executable,
        "-m",
        "recall_engine.cli.main",
        "serve",
        "--config",
        str(config),
        "--addr",
        f"127.0.0.1:{_free_port()}",
        "--metrics-addr",
        "",
        "--log-json",
    ]
    if processes > 1:
        argv += ["--processes", str(processes)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                log.seek(0)
                ready = sum('"event": "serving"' in line for line in log)
                if ready >= processes:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-3000:]
                    raise RuntimeError(f"serve did not become ready ({proc.returncode}): {tail}")
                time.sleep(0.5)
            time.sleep(2.0)  # let the last worker finish what followed its log line
            workers = _children(proc.pid) if processes > 1 else [proc.pid]
            out: dict[str, Any] = {
                "processes": processes,
                "workers": [{"pid": w, **smaps_rollup(w)} for w in workers],
                "parent": {"pid": proc.pid, **smaps_rollup(proc.pid)} if processes > 1 else None,
            }
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)
                proc.kill()
                proc.wait()
    parts = out["workers"] + ([out["parent"]] if out["parent"] else [])
    out["host_pss_mib"] = sum(p["pss_mib"] for p in parts)
    return out


def _mapped_index_mib(artifacts: Path) -> float:
    """Size of the current bundles' usearch files (what ``memory_map`` shares)."""
    total = 0
    for current in artifacts.glob("*/current"):
        version = current.read_text().strip()
        total += sum(f.stat().st_size for f in (current.parent / version).rglob("*.usearch"))
    return total / 2**20


def run_processes(config: Path, processes: int, artifacts: Path) -> dict:
    """One process alone, then ``processes`` of them: the host figures and targets."""
    one = serve_memory(config, 1)
    many = serve_memory(config, processes)
    single = one["host_pss_mib"]
    extra = (many["host_pss_mib"] - single) / max(processes - 1, 1)
    result = {
        "one": one,
        "many": many,
        "host_ratio": many["host_pss_mib"] / single,
        "extra_process_mib": extra,
        "mapped_index_files_mib": _mapped_index_mib(artifacts),
    }
    print("| serve | process | RSS MiB | PSS MiB | private MiB |\n|---|---|---:|---:|---:|")
    for label, run in (("alone", one), (f"--processes {processes}", many)):
        rows = [("worker", w) for w in run["workers"]]
        rows += [("parent", run["parent"])] if run["parent"] else []
        for kind, r in rows:
            print(
                f"| {label} | {kind} {r['pid']} | {r['rss_mib']:,.0f} | {r['pss_mib']:,.0f} | "
                f"{r['private_mib']:,.0f} |"
            )
    print(
        f"host PSS: {single:,.0f} MiB alone, {many['host_pss_mib']:,.0f} MiB with "
        f"--processes {processes} ({result['host_ratio']:.2f} x); each extra process "
        f"{extra:,.0f} MiB; mapped index files {result['mapped_index_files_mib']:,.0f} MiB"
    )
    return result


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
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="N >= 2: measure `serve --config CONFIG` alone and with --processes N "
        "(per-process and per-host memory, PSS from /proc/PID/smaps_rollup)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")


def run(args: argparse.Namespace) -> int:
    from recall_engine.benchmarks.load import _config

    if args.artifacts is None and args.config is None:
        raise SystemExit("give --artifacts DIR or --config FILE")
    config = _config(args.artifacts or Path("."), args.config)
    artifacts = args.artifacts or config.artifacts_root
    if args.processes > 1:
        if args.config is None:
            raise SystemExit("--processes needs --config (the file `serve` reads)")
        result = run_processes(args.config, args.processes, Path(artifacts))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
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

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


def serve_memory(
    config: Path,
    processes: int,
    timeout_s: float = 1800.0,
    *,
    requests: int = 0,
    artifacts: Path | None = None,
) -> dict:
    """Start ``recall-engine serve --config CONFIG --processes N`` (the real command),
    wait until each of its ``N`` workers logged ``serving``, read every process's
    memory, then stop it (SIGINT, then SIGKILL after 60 s). For N = 1 the server is the
    one process. ``requests`` > 0: then send that many Recall requests to each worker
    (:func:`touch`: the pages a serving host holds) and read the memory again, as
    ``after_requests``."""
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
            out = _read(processes, workers, proc.pid)
            if requests > 0:
                log.seek(0)
                listening = [json.loads(x) for x in log if '"event": "server_listening"' in x]
                addrs = sorted({e.get("worker_addr") or e["addr"] for e in listening})
                sent = touch(addrs, requests, artifacts or config.parent, processes)
                time.sleep(1.0)
                out["after_requests"] = {**_read(processes, workers, proc.pid), **sent}
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)
                proc.kill()
                proc.wait()
    return out


def _read(processes: int, workers: list[int], parent: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "processes": processes,
        "workers": [{"pid": w, **smaps_rollup(w)} for w in workers],
        "parent": {"pid": parent, **smaps_rollup(parent)} if processes > 1 else None,
    }
    parts = out["workers"] + ([out["parent"]] if out["parent"] else [])
    out["host_pss_mib"] = sum(p["pss_mib"] for p in parts)
    return out


def touch(addrs: list[str], requests: int, artifacts: Path, processes: int) -> dict[str, Any]:
    """Send ``requests`` Recall requests per worker (half with a history of 20 catalogue
    items, half with a title as free text, k = 200), four at a time, over connections to
    ``addrs`` (each worker's own address, or the one shared port with one connection per
    thread and worker, which the kernel spreads over them); a request shed with
    ``RESOURCE_EXHAUSTED`` is sent again after the server's retry hint, as a client
    does (up to 50 times). Returns how many were answered, and the others by status."""
    import concurrent.futures

    import grpc

    from recall_engine._proto import recall_pb2_grpc
    from recall_engine.benchmarks.overload import build_pool

    total = requests * processes
    pool = build_pool(artifacts, "history", 200, 20, 0, (total + 1) // 2)
    pool += build_pool(artifacts, "text", 200, 20, 1, total // 2)
    lanes = [addrs[i % len(addrs)] for i in range(max(4, len(addrs)) * max(1, processes))]
    channels = [grpc.insecure_channel(a) for a in lanes]
    stubs = [recall_pb2_grpc.RecallServiceStub(c) for c in channels]
    counts: dict[str, int] = {"ok": 0}

    def one(i: int) -> str:
        for _ in range(50):
            try:
                stubs[i % len(stubs)].Recall(pool[i], timeout=10)
                return "ok"
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return e.code().name
                hint = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms", "10")
                time.sleep(int(hint) / 1000)
        return "RESOURCE_EXHAUSTED"

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            for outcome in ex.map(one, range(len(pool))):
                counts[outcome] = counts.get(outcome, 0) + 1
    finally:
        for c in channels:
            c.close()
    return {"requests": counts}


def _mapped_index_mib(artifacts: Path) -> float:
    """Size of the current bundles' usearch files (what ``memory_map`` shares)."""
    total = 0
    for current in artifacts.glob("*/current"):
        version = current.read_text().strip()
        total += sum(f.stat().st_size for f in (current.parent / version).rglob("*.usearch"))
    return total / 2**20


def run_processes(config: Path, processes: int, artifacts: Path, requests: int = 0) -> dict:
    """One process alone, then ``processes`` of them: the host figures and targets, once
    the workers are ready and (``requests`` > 0) again after they served that many
    requests each."""
    one = serve_memory(config, 1, requests=requests, artifacts=artifacts)
    many = serve_memory(config, processes, requests=requests, artifacts=artifacts)
    result: dict[str, Any] = {
        "one": one,
        "many": many,
        "mapped_index_files_mib": _mapped_index_mib(artifacts),
    }
    stages = [("ready", one, many)]
    if requests > 0:
        stages.append(
            (f"after {requests} requests each", one["after_requests"], many["after_requests"])
        )
    print("| serve | when | process | RSS MiB | PSS MiB | private MiB |")
    print("|---|---|---|---:|---:|---:|")
    for when, a, b in stages:
        for label, run in (("alone", a), (f"--processes {processes}", b)):
            rows = [("worker", w) for w in run["workers"]]
            rows += [("parent", run["parent"])] if run["parent"] else []
            for kind, r in rows:
                print(
                    f"| {label} | {when} | {kind} {r['pid']} | {r['rss_mib']:,.0f} | "
                    f"{r['pss_mib']:,.0f} | {r['private_mib']:,.0f} |"
                )
    for when, a, b in stages:
        single, host = a["host_pss_mib"], b["host_pss_mib"]
        extra = (host - single) / max(processes - 1, 1)
        key = "ready" if when == "ready" else "after_requests"
        result[key] = {"host_ratio": host / single, "extra_process_mib": extra}
        print(
            f"{when}: host PSS {single:,.0f} MiB alone, {host:,.0f} MiB with --processes "
            f"{processes} ({host / single:.2f} x); each extra process {extra:,.0f} MiB"
        )
    if requests > 0:
        print(
            f"requests: alone {one['after_requests']['requests']}, "
            f"--processes {processes} {many['after_requests']['requests']}"
        )
    print(f"mapped index files {result['mapped_index_files_mib']:,.0f} MiB")
    # the figures the targets read: the host as it serves (after requests), else ready
    final = result.get("after_requests", result["ready"])
    result["host_ratio"], result["extra_process_mib"] = (
        final["host_ratio"],
        final["extra_process_mib"],
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
    p.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="with --processes: Recall requests sent to each worker (half history, half "
        "text) before the memory is read again, so that the index pages a serving host "
        "holds are counted (default: 1000; 0: only after warm-up)",
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
        result = run_processes(args.config, args.processes, Path(artifacts), args.requests)
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

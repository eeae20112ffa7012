"""Vector index benchmark: usearch HNSW (f32, f16, i8) against exact NumPy search.

Data: ``--n`` seeded unit vectors of ``--dim`` dimensions. ``--data clustered`` (the
default) draws them around ``n / 1000`` random centres with about 0.7 cosine similarity
to their centre, which is closer to real embeddings (topics) than ``--data uniform``
(isotropic noise, the worst case for any graph index). Queries come from the same
distribution but are not catalogue items.

For each dtype it reports build time (string ids included, through
:class:`recall_engine.runtime.index.VectorIndex`), batch throughput (all queries in one call,
every core), single-query throughput and latency (one call per query, the serving path),
recall@k against the exact top-k, and memory: usearch's own count and the growth of the
process's resident set while building. The exact baseline is a float32 matrix product
plus ``argpartition``.

    recall-engine bench index --n 1000000 --dim 384 --queries 1000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 50_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=1_000_000, help="catalogue size")
    parser.add_argument("--dim", type=int, default=384, help="vector dimensions")
    parser.add_argument("--queries", type=int, default=1000, help="queries (batch and single)")
    parser.add_argument("--k", type=int, default=100, help="neighbours per query (recall@k)")
    parser.add_argument("--dtypes", default="f32,f16,i8", help="comma-separated usearch dtypes")
    parser.add_argument(
        "--expansion-search", default="64,256", help="comma-separated HNSW ef values to search with"
    )
    parser.add_argument("--connectivity", type=int, default=16)
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="usearch threads (0: all cores)")
    parser.add_argument("--data", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")


def run(args: argparse.Namespace) -> int:
    from recall_engine.runtime.index import VectorIndex

    log = _Log()
    vectors = make_vectors(args.n, args.dim, args.seed, args.data)
    queries = make_vectors(
        args.queries,
        args.dim,
        args.seed + 1,
        args.data,
        centres_seed=args.seed,
        n_centres=_centres(args.n),
    )
    log("data", n=args.n, dim=args.dim, data=args.data)

    exact_rows, truth = _bench_exact(vectors, queries, args.k)
    log("exact", **exact_rows[0])
    rows = list(exact_rows)
    ids = [str(i) for i in range(args.n)]
    for dtype in args.dtypes.split(","):
        rss = _rss()
        index = VectorIndex(
            args.dim,
            metric="cos",
            dtype=dtype,
            exact_below=0,
            connectivity=args.connectivity,
            expansion_add=args.expansion_add,
            threads=args.threads,
        )
        started = time.perf_counter()
        for lo in range(0, args.n, CHUNK):
            index.add(ids[lo : lo + CHUNK], vectors[lo : lo + CHUNK])
        build_s = time.perf_counter() - started
        memory = {"index_mib": index.memory_usage / 2**20, "rss_growth_mib": (_rss() - rss) / 2**20}
        log("built", dtype=dtype, build_s=round(build_s, 1), **memory)
        for ef in (int(v) for v in args.expansion_search.split(",")):
            index.expansion_search = ef
            row = {
                "method": f"usearch {dtype}",
                "ef": ef,
                "build_s": build_s,
                **memory,
                **_bench_search(index.search, queries, args.k, truth),
            }
            log("searched", **row)
            rows.append(row)
        del index
        gc.collect()

    print(markdown(rows, args))
    if args.json:
        args.json.write_text(json.dumps({"args": _jsonable(vars(args)), "rows": rows}, indent=2))
    return 0


# -- data ----------------------------------------------------------------------------
def _centres(n: int) -> int:
    return max(1, n // 1000)


def make_vectors(
    n: int,
    dim: int,
    seed: int,
    data: str,
    *,
    centres_seed: int | None = None,
    n_centres: int | None = None,
) -> np.ndarray:
    """``n`` float32 unit vectors, generated in chunks to bound peak memory."""
    rng = np.random.default_rng((seed, 1))
    out = np.empty((n, dim), dtype=np.float32)
    centres = None
    if data == "clustered":
        crng = np.random.default_rng((seed if centres_seed is None else centres_seed, 2))
        count = n_centres or _centres(n)
        centres = crng.standard_normal((count, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for lo, hi in _chunks(n):
        block = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        if centres is not None:
            # noise of norm ~1 around a unit centre: ~0.7 cosine to the centre
            block /= np.sqrt(dim)
            block += centres[rng.integers(0, len(centres), hi - lo)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:hi] = block
    return out


def _chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


# -- exact ---------------------------------------------------------------------------
def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the ``k`` largest dot products per query, best first."""
    best_idx = np.zeros((len(queries), 0), dtype=np.int64)
    best_val = np.zeros((len(queries), 0), dtype=np.float32)
    for lo, hi in _chunks(len(vectors)):
        scores = queries @ vectors[lo:hi].T
        take = min(k, hi - lo)
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        vals = np.take_along_axis(scores, part, axis=1)
        best_val = np.concatenate([best_val, vals], axis=1)
        best_idx = np.concatenate([best_idx, part + lo], axis=1)
        if best_val.shape[1] > k:
            keep = np.argpartition(-best_val, k - 1, axis=1)[:, :k]
            best_val = np.take_along_axis(best_val, keep, axis=1)
            best_idx = np.take_along_axis(best_idx, keep, axis=1)
    order = np.argsort(-best_val, axis=1, kind="stable")
    return np.take_along_axis(best_idx, order, axis=1)


def _bench_exact(
    vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    started = time.perf_counter()
    truth = exact_top_k(vectors, queries, k)
    batch_s = time.perf_counter() - started
    single = min(len(queries), 20)
    latencies = []
    for q in queries[:single]:
        started = time.perf_counter()
        scores = vectors @ q
        top = np.argpartition(-scores, k - 1)[:k]
        top[np.argsort(-scores[top])]
        latencies.append(time.perf_counter() - started)
    row = {
        "method": "exact numpy f32",
        "ef": None,
        "build_s": 0.0,
        "index_mib": vectors.nbytes / 2**20,
        "rss_growth_mib": vectors.nbytes / 2**20,
        "batch_qps": len(queries) / batch_s,
        **_latency(latencies),
        "recall": 1.0,
    }
    return [row], truth


# -- usearch -------------------------------------------------------------------------
def _bench_search(search: Any, queries: np.ndarray, k: int, truth: np.ndarray) -> dict[str, float]:
    search(queries[:8], k)  # warm up threads and caches
    started = time.perf_counter()
    hits = search(queries, k)
    batch_s = time.perf_counter() - started
    latencies = []
    for q in queries:
        started = time.perf_counter()
        search(q, k)
        latencies.append(time.perf_counter() - started)
    found = [np.asarray(ids, dtype=np.int64) for ids, _ in hits]
    recall = float(
        np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)])
    )
    return {"batch_qps": len(queries) / batch_s, **_latency(latencies), "recall": recall}


def _latency(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "single_qps": 1e3 / float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


# -- output --------------------------------------------------------------------------
def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"n={args.n:,} dim={args.dim} data={args.data} queries={args.queries} "
        f"k={args.k} connectivity={args.connectivity} "
        f"expansion_add={args.expansion_add}",
        "",
        "| method | ef | build s | batch q/s | single q/s | p50 ms | p99 ms | "
        f"recall@{args.k} | index MiB | RSS growth MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['ef'] or '-'} | {r['build_s']:.1f} | {r['batch_qps']:,.0f} | "
            f"{r['single_qps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['recall']:.3f} | {r['index_mib']:,.0f} | {r['rss_growth_mib']:,.0f} |"
        )
    return "\n".join(lines)


def _rss() -> int:
    """Resident set size in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items() if not callable(v)}


class _Log:
    """Progress lines on stderr: long runs take minutes per phase."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, event: str, **fields: Any) -> None:
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        print(
            f"[{time.perf_counter() - self.started:7.1f}s] {event} {shown}",
            file=sys.stderr,
            flush=True,
        )


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)

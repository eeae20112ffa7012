"""Try HNSW build settings on a served index's own vectors and recorded queries.

``bench/index_recall.py --save-queries DIR`` records the query vectors a channel really
searches with; this rebuilds the channel's index from its stored vectors with other
connectivity (M) / expansion_add (efConstruction) settings and reports, for each and
for the served index itself, recall@n against exact search by request kind and the CPU
time of one search at each ``--ef``:

    python bench/index_recall.py --config bench/load-1m.toml --interactions \\
        build/catalog-1m/data/sample_interactions.csv --requests 300 --save-queries /tmp/q
    python bench/index_tune.py --index build/catalog-1m/llm/<version>/index \\
        --queries /tmp/q/llm.npz --builds 16:128,32:128 --ef 128,256,512

A 1M × 384 build takes 3–5 minutes on two cores and holds the vectors in float32 beside
it (1.5 GB).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="a VectorIndex folder")
    p.add_argument(
        "--queries",
        type=Path,
        required=True,
        help="an .npz from bench/index_recall.py --save-queries",
    )
    p.add_argument(
        "--builds",
        default="16:128,32:128",
        help="comma-separated connectivity:expansion_add to build and try",
    )
    p.add_argument("--ef", default="128,256,512", help="comma-separated expansion_search")
    p.add_argument("--threads", type=int, default=0, help="build threads (0: all cores)")
    args = p.parse_args()
    efs = [int(x) for x in args.ef.split(",")]
    builds = [tuple(int(v) for v in b.split(":")) for b in args.builds.split(",") if b]

    from recall_engine.runtime.index import VectorIndex

    served = VectorIndex.load(args.index)  # in memory, as served
    raw = served._index  # noqa: SLF001 - the usearch index itself
    saved = np.load(args.queries)
    queries, kinds, sizes = saved["vectors"], saved["kinds"].tolist(), saved["n"].tolist()
    exact = raw.search(queries, max(sizes), exact=True, threads=0).keys

    def measure(index, label: str) -> None:
        for ef in efs:
            index.expansion_search = ef
            by_kind: dict[str, list[float]] = defaultdict(list)
            cpu = 0.0
            for row, (q, kind, n) in enumerate(zip(queries, kinds, sizes, strict=True)):
                t = time.process_time()
                found = index.search(q, n, threads=1).keys
                cpu += time.process_time() - t
                by_kind[kind].append(len(np.intersect1d(found[:n], exact[row][:n])) / n)
            every = np.mean([v for vs in by_kind.values() for v in vs])
            kinds_text = ", ".join(f"{k} {np.mean(v):.3f}" for k, v in by_kind.items())
            print(
                f"| {label} | {ef} | {every:.3f} | {kinds_text} | "
                f"{1000 * cpu / len(queries):.3f} |",
                flush=True,
            )

    print(f"{len(queries)} queries, {len(raw):,} items × {raw.ndim}, {served.dtype}")
    print("| index | ef | recall@n | by kind | CPU ms per search |")
    print("|---|---:|---:|---|---:|")
    measure(raw, f"served (M {raw.connectivity})")
    if not builds:
        return 0
    from usearch.index import Index

    keys = np.asarray(raw.keys)
    vectors = np.asarray(raw.vectors, dtype=np.float32)
    for connectivity, expansion_add in builds:
        t = time.perf_counter()
        index = Index(
            ndim=raw.ndim,
            metric=served.metric,
            dtype=served.dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
        )
        index.add(keys, vectors, threads=args.threads)
        label = f"M {connectivity}, expansion_add {expansion_add}"
        print(
            f"({label}: built in {time.perf_counter() - t:.0f} s, "
            f"{index.memory_usage / 2**20:,.0f} MiB)",
            flush=True,
        )
        measure(index, label)
        del index
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

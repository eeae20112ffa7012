"""Recall of the served vector indexes against exact search, on the served data.

``recall-engine bench index`` measures HNSW recall on generated vectors; this measures it
where it matters: the engine loaded from a config (as ``recall-engine serve`` would), the
``bench load`` request pool (known users' histories, unseen users' sampled histories,
free-text queries), every channel's own ``recall``. Each ``VectorIndex.search`` that a
channel makes is recorded (its query vector and how many it asked for); then every
recorded query is searched again at each ``--ef`` (HNSW's expansion_search) and exactly
(usearch's brute-force scan over the same stored vectors), and the table gives
recall@n (the share of the exact top n that the graph search found, n as the channel
asked) by request kind; the mean score lost (the exact top n's mean score minus the
graph's: how much worse the misses are, in the metric's own units, cosine for cos); the
CPU time of one graph search; and how varied the exact answers are (distinct items over
all top-n slots: a model that sends every query to the same items scores near
1 / queries, and any search finds those).

    python bench/index_recall.py --config bench/load-1m.toml \\
        --interactions build/catalog-1m/data/sample_interactions.csv --ef 128,256,512

Exact search is over the vectors as stored (bf16 at 1M), so this is the graph's loss;
the dtype's own loss against float32 is in docs/vectors.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> int:
    from recall_engine.benchmarks.load import add_in_process_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_in_process_arguments(p, requests=200)
    p.add_argument("--ef", default="128,256,512", help="comma-separated expansion_search")
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--save-queries",
        type=Path,
        metavar="DIR",
        help="also write each channel's recorded queries to DIR/<channel>.npz "
        "(kinds, vectors, n), to tune an index offline on them",
    )
    args = p.parse_args()
    efs = [int(x) for x in args.ef.split(",")]

    from recall_engine.benchmarks.load import engine_with_inputs
    from recall_engine.runtime.index import VectorIndex

    engine, inputs = engine_with_inputs(
        args.config, mix=args.mix, requests=args.requests, interactions=args.interactions
    )
    state = engine._state  # noqa: SLF001 - a benchmark looks inside on purpose

    results: dict[str, dict] = {}
    for name, slot in state.slots.items():
        channel = slot.channel
        indexes = [v for v in vars(channel).values() if isinstance(v, VectorIndex)]
        if not indexes:
            continue
        index = indexes[0]
        recorded = record_searches(channel, slot.config.k, index, inputs)
        if args.save_queries:
            args.save_queries.mkdir(parents=True, exist_ok=True)
            np.savez(
                args.save_queries / f"{name}.npz",
                kinds=[k for k, _, _ in recorded],
                vectors=np.stack([q for _, q, _ in recorded]),
                n=[n for _, _, n in recorded],
            )
        results[name] = measure(index, recorded, efs)
        print(
            f"{name}: {len(recorded)} searches, {len(index):,} items, "
            f"{index.dim} dims, {index.dtype}",
            flush=True,
        )
    engine.close()

    print(
        "| channel | ef | recall@n, all | by kind | mean score lost | CPU ms per search "
        "| distinct exact |"
    )
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, measured in results.items():
        for row in (v for v in measured.values() if isinstance(v, dict)):
            kinds = ", ".join(f"{k} {v:.3f}" for k, v in row["by_kind"].items())
            print(
                f"| {name} | {row['ef']} | {row['recall']:.3f} | {kinds} | "
                f"{row['score_lost']:.4f} | {row['cpu_ms']:.3f} | "
                f"{measured['distinct_exact']:.3f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def record_searches(channel, k: int, index, inputs) -> list[tuple[str, np.ndarray, int]]:
    """Run ``channel.recall`` on every input it accepts; return each search it made on
    ``index`` as (request kind, query vector, how many it asked for)."""
    recorded: list[tuple[str, np.ndarray, int]] = []
    kind_now = ""

    def record(vectors, n, *a, _search=index.search, **kw):
        rows = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        recorded.extend((kind_now, row.copy(), n) for row in rows)
        return _search(vectors, n, *a, **kw)

    index.search = record  # an instance attribute shadows the method
    try:
        for kind, inp in inputs:
            if channel.accepts(inp.query):
                kind_now = kind
                channel.recall(inp.query, k)
    finally:
        del index.search
    return recorded


def measure(index, recorded: list[tuple[str, np.ndarray, int]], efs: list[int]) -> dict:
    from recall_engine.runtime.index import SCORES

    raw = index._index  # noqa: SLF001 - the usearch index itself, no filters
    queries = np.stack([q for _, q, _ in recorded])
    n = max(k for _, _, k in recorded)
    truth = raw.search(queries, n, exact=True, threads=0)
    exact, score = truth.keys, SCORES[index.metric]
    best = [float(score(truth.distances[row][:k]).mean()) for row, (_, _, k) in enumerate(recorded)]
    # how varied the exact answers are: distinct items over all queries' top-n slots
    # (near 1/len(recorded) when every query gets the same items)
    tops = [exact[row][:k] for row, (_, _, k) in enumerate(recorded)]
    distinct = len(np.unique(np.concatenate(tops))) / sum(len(t) for t in tops)
    out: dict = {"distinct_exact": distinct}
    saved = raw.expansion_search
    try:
        for ef in efs:
            raw.expansion_search = ef
            by_kind: dict[str, list[float]] = defaultdict(list)
            cpu, lost = 0.0, []
            for row, (kind, q, k) in enumerate(recorded):
                t = time.process_time()
                found = raw.search(q, k, threads=1)
                cpu += time.process_time() - t
                by_kind[kind].append(len(np.intersect1d(found.keys[:k], exact[row][:k])) / k)
                got = score(found.distances[:k])
                lost.append(best[row] - float(got.mean()) if len(got) else best[row])
            every = [v for vs in by_kind.values() for v in vs]
            out[f"ef{ef}"] = {
                "ef": ef,
                "recall": float(np.mean(every)),
                "score_lost": float(np.mean(lost)),
                "cpu_ms": 1000 * cpu / len(recorded),
                "by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()},
            }
    finally:
        raw.expansion_search = saved
    return out


if __name__ == "__main__":
    raise SystemExit(main())

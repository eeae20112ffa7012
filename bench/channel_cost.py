"""CPU time of each channel per call, by request kind, in process, on one thread.

The A/B tool behind docs/performance.md: it loads the engine from a config (as
``recall-engine serve`` would), builds the ``bench load`` request pool (known users
replaying their histories, unseen users with sampled histories, free-text queries),
then calls every channel's ``recall`` directly, channel by channel, and reports
``time.process_time()`` per call (all threads of the process, so the MicroBatcher's
encoder thread counts) for each request kind, and per request of the mix (a channel
that does not accept a request costs it nothing). No gRPC, no fusion, no fan-out: the
channels alone, with warm caches; ``bench load --in-process`` measures them together.

    python bench/channel_cost.py --config bench/load-1m.toml \\
        --interactions build/catalog-1m/data/sample_interactions.csv [--json out.json]

``--category NAME`` (repeatable) puts a category filter on every request, to measure
the filtered paths (``--mix known=1,unseen=1 --requests 30`` keeps it short); the table
then also says how many answers came back shorter than the channel's k.

Run it from two checkouts (or two configs) alternately to compare a change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main() -> int:
    from recall_engine.benchmarks.load import add_in_process_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_in_process_arguments(p, requests=1000)
    p.add_argument("--rounds", type=int, default=2, help="measured passes (the last counts)")
    p.add_argument(
        "--category",
        action="append",
        default=[],
        help="filter every request to this category (repeatable)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from recall_engine.benchmarks.load import engine_with_inputs

    engine, inputs = engine_with_inputs(
        args.config, mix=args.mix, requests=args.requests, interactions=args.interactions
    )
    state = engine._state  # noqa: SLF001 - a benchmark looks inside on purpose
    if args.category:
        cats = frozenset(args.category)
        inputs = [
            (kind, dataclasses.replace(inp, query=dataclasses.replace(inp.query, categories=cats)))
            for kind, inp in inputs
        ]
    result: dict[str, dict[str, float]] = {}
    try:
        for _ in range(args.rounds):
            for name, slot in state.slots.items():
                k = slot.config.k
                calls = [
                    (kind, inp.query) for kind, inp in inputs if slot.channel.accepts(inp.query)
                ]
                for _, query in calls[:100]:  # warm-up
                    slot.channel.recall(query, k)
                spent: dict[str, list[float]] = {}
                short = 0
                for kind, query in calls:
                    c0 = time.process_time()
                    got = slot.channel.recall(query, k)
                    spent.setdefault(kind, []).append(time.process_time() - c0)
                    short += len(got) < k
                total = sum(sum(v) for v in spent.values())
                result[name] = {
                    **{kind: round(1000 * sum(v) / len(v), 3) for kind, v in spent.items()},
                    "per_request": round(1000 * total / len(inputs), 3),
                    "short": short,
                }
    finally:
        engine.close()
    print(
        "| channel | CPU ms per request of the mix | by kind (ms per call) | answers short of k |"
    )
    print("|---|---:|---|---:|")
    for name, r in result.items():
        kinds = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("per_request", "short"))
        print(f"| {name} | {r['per_request']} | {kinds} | {r['short']} |")
    total = round(sum(r["per_request"] for r in result.values()), 3)
    print(f"| all channels | {total} | | |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Item-encoding throughput of a build: this process against a local Ray cluster.

Builds ``CHANNEL`` (``content``, or ``llm`` from an exported MiniLM folder given with
``--model-dir``) from the demo catalogue of ``N`` items in this process, opens the
encoder of that bundle the way the channel's build does, and times ``encode_all`` over
the same items twice: with the local executor, and with a
:class:`~recall_engine.offline.ray_build.RayExecutor` on a ``ray.cluster_utils.Cluster``
of two nodes on this machine (``--actors`` actors of ``--actor-cpus`` CPUs each). Prints
items/s for each, the Ray run's time to its first chunk (the actors starting: a process
each, the encoder's bytes fetched from the object store and opened) and its rate after
that, and the largest difference between the two runs' vectors.

Ray listens on every interface: run it as root in a namespace with only loopback up::

    unshare --net --pid --fork --kill-child --mount-proc sh -c \\
        'ip link set lo up && exec python bench/ray_build.py content 20000'
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any


class _Timed:
    """Passes ``map`` through, noting when the first result came back."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.started = self.first = 0.0
        self.first_rows = 0

    def map(self, fn: Callable[[list[Any]], Any], chunks: Iterable[list[Any]]) -> Iterator[Any]:
        chunks = list(chunks)
        self.started = time.perf_counter()
        for i, result in enumerate(self.inner.map(fn, chunks)):
            if i == 0:
                self.first, self.first_rows = time.perf_counter(), len(chunks[0])
            yield result


def _encoder(channel: str, bundle: Path) -> tuple[Callable[[list[Any]], Any], int, Any]:
    """The chunk function, dimension and size key the channel's build hands encode_all."""
    if channel == "content":
        from recall_engine.plugins.content import _run
        from recall_engine.plugins.content.terms import Vocabulary, item_terms
        from recall_engine.runtime.encoders import OnnxModel

        model = OnnxModel(bundle / "encoder")
        vocab = Vocabulary.load(bundle / "vocabulary.json")
        return lambda chunk: _run(model, vocab, [item_terms(it) for it in chunk]), 16, None
    from recall_engine.plugins.llm import BUILD_BATCH, LLMParams, item_text, open_text_encoder

    params = LLMParams()
    encoder = open_text_encoder(
        bundle / "encoder",
        replace(params, max_batch=BUILD_BATCH),
        params.item_max_tokens,
        precision="fp32",
    )
    return (
        lambda chunk: encoder.encode([item_text(it) for it in chunk]),
        encoder.dim,
        lambda it: len(item_text(it)),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("channel", choices=("content", "llm"))
    p.add_argument("items", type=int, help="demo catalogue size")
    p.add_argument("--model-dir", help="llm: an exported sentence-encoder folder to copy")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--actor-cpus", type=float, default=1.0)
    args = p.parse_args(argv)

    import numpy as np
    import ray
    from ray.cluster_utils import Cluster

    from recall_engine.config import parse_config
    from recall_engine.offline.build import build_all
    from recall_engine.offline.data.demo import make_demo
    from recall_engine.offline.ray_build import RayExecutor, RaySettings
    from recall_engine.runtime.artifacts import ArtifactStore
    from recall_engine.sdk.vector_channel import encode_all, using_executor

    root = Path(tempfile.mkdtemp(prefix="ray-build-bench-"))
    try:
        demo = make_demo(n_items=args.items, n_users=300, seed=1)
        if args.channel == "content":
            params: dict[str, Any] = {"epochs": 1, "max_steps": 10, "dim": 16}
        else:
            params = {"model_dir": args.model_dir, "variants": []}
        config = parse_config(
            {
                "artifacts": {"root": str(root)},
                "channels": {args.channel: {"plugin": args.channel, "params": params}},
            },
            root,
        )
        build_all(demo.interactions, demo.items, root, config)
        bundle = ArtifactStore(root).open(args.channel).path
        encode, dim, size = _encoder(args.channel, bundle)
        items = list(demo.items)

        started = time.perf_counter()
        local = encode_all(encode, items, dim, size=size)
        local_s = time.perf_counter() - started

        node: dict[str, Any] = {"num_cpus": 2, "object_store_memory": 200 * 2**20}
        cluster = Cluster(initialize_head=True, head_node_args=node)
        try:
            cluster.add_node(**node)
            cluster.wait_for_nodes(timeout=120)
            settings = RaySettings(cluster.address, actors=args.actors, actor_cpus=args.actor_cpus)
            with RayExecutor(settings) as executor:
                timed = _Timed(executor)
                with using_executor(timed):
                    remote = encode_all(encode, items, dim, size=size)
                ended = time.perf_counter()
        finally:
            ray.shutdown()
            cluster.shutdown()
        ray_s = ended - timed.started
        steady = (len(items) - timed.first_rows) / max(ended - timed.first, 1e-9)
        print(
            json.dumps(
                {
                    "channel": args.channel,
                    "items": len(items),
                    "chunks": -(-len(items) // 256),
                    "actors": args.actors,
                    "actor_cpus": args.actor_cpus,
                    "local_items_per_s": round(len(items) / local_s, 1),
                    "local_s": round(local_s, 2),
                    "ray_items_per_s": round(len(items) / ray_s, 1),
                    "ray_s": round(ray_s, 2),
                    "ray_first_chunk_s": round(timed.first - timed.started, 2),
                    "ray_items_per_s_after_first_chunk": round(steady, 1),
                    "max_abs_diff": float(np.abs(local - remote).max()),
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

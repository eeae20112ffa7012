"""How hard a set of vectors is for nearest-neighbour search, next to real embeddings.

The 1M benchmark catalogue's llm vectors are synthetic (a real MiniLM vector of the same
topic plus noise); this says whether they are easier or harder to search than real
MiniLM embeddings, with two standard measures computed the same way on both:

* **local intrinsic dimensionality** (LID, the maximum-likelihood estimate over each
  point's 20 nearest neighbours; Amsaleg et al., KDD 2015): higher is harder;
* **relative contrast** (mean distance to all points over distance to the nearest;
  He, Kumar and Chang, ICML 2012): nearer 1 is harder.

Real embeddings: MiniLM (the served llm encoder) over MovieLens movie titles, genres and
plots (``ml-1m-melu-movie-text/movies_extrainfos.dat``). Synthetic: a random sample of
the same size from a served index. Both sets are compared at the same size, since both
measures depend on density.

    python bench/embedding_hardness.py \\
        --encoder build/catalog-1m/llm/<version>/encoder \\
        --index build/catalog-1m/llm/<version>/index \\
        --movies ../shared/data/ml-1m-melu-movie-text/movies_extrainfos.dat
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", type=Path, required=True, help="exported sentence encoder")
    p.add_argument("--index", type=Path, required=True, help="a VectorIndex folder")
    p.add_argument("--movies", type=Path, required=True, help="movies_extrainfos.dat")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from recall_engine.runtime.encoders import TextEncoder
    from recall_engine.runtime.index import VectorIndex

    texts = movie_texts(args.movies)
    real = TextEncoder(args.encoder, precision="int8").encode(texts)
    index = VectorIndex.load(args.index, view=True)
    raw = index._index  # noqa: SLF001 - its stored vectors
    rows = np.random.default_rng(args.seed).choice(len(raw), len(texts), replace=False)
    synthetic = np.asarray(raw.vectors[np.sort(rows)], dtype=np.float32)
    print(
        "| vectors | n | dims | cosine to 1st / 10th / 100th neighbour | LID@20 (median) "
        "| relative contrast (median) |\n|---|---:|---:|---|---:|---:|"
    )
    for name, x in (
        (f"real MiniLM, MovieLens movies ({args.movies.name})", real),
        (f"{args.index} (random sample)", synthetic),
    ):
        s = hardness(x)
        print(
            f"| {name} | {len(x):,} | {x.shape[1]} | {s['nn1']:.3f} / {s['nn10']:.3f} / "
            f"{s['nn100']:.3f} | {s['lid']:.1f} | {s['contrast']:.2f} |"
        )
    return 0


def movie_texts(path: Path) -> list[str]:
    """``title. genres. plot`` per movie (fields 1, 5 and the last of the ``::`` file)."""
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            fields = line.rstrip("\r\n").split("::")
            if len(fields) > 5:
                texts.append(f"{fields[1]}. {fields[5]}. {fields[-1]}")
    if not texts:
        raise SystemExit(f"{path}: no movies read")
    return texts


def hardness(x: np.ndarray, k: int = 100, lid_k: int = 20) -> dict[str, float]:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = -np.sort(-sims, axis=1)[:, :k]
    dist = np.sqrt(np.maximum(2 - 2 * top, 1e-12))  # unit vectors: Euclidean distance
    lid = -1 / np.mean(np.log(dist[:, :lid_k] / dist[:, lid_k - 1 : lid_k]), axis=1)
    np.fill_diagonal(sims, np.nan)
    mean_dist = np.nanmean(np.sqrt(np.maximum(2 - 2 * sims, 0)), axis=1)
    return {
        "nn1": float(top[:, 0].mean()),
        "nn10": float(top[:, 9].mean()),
        "nn100": float(top[:, k - 1].mean()),
        "lid": float(np.median(lid)),
        "contrast": float(np.median(mean_dist / dist[:, 0])),
    }


if __name__ == "__main__":
    raise SystemExit(main())

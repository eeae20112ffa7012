"""Would a learned fusion model beat cf alone by the margin issue 15 asks of ML-1M?

Issue 15 accepts two forms of learned fusion: weights per request segment (what the
build fits, ``offline/fusion_fit.py``) or a small model over the channels' ranks and
scores. On ML-1M the segment fit keeps cf alone, since no weighting gains 2 % on its
carve. This probe asks whether a model could gain more, before anyone builds one into
the served path. It runs on the same carve the build fits on: each channel built on
the carve's training rows, one request per validation user. The model ranks the union of
the four channels' top 200 by the predicted chance that an item is held out.

Per candidate, the features are:

- per channel: the RRF term, whether the channel returned the item, and the log of its
  rank;
- the log of the item's training count;
- the log of the history length, and that times cf's term.

It is trained per target (next, temporal, random) with 2-fold cross-validation over
users. Two models: logistic regression, and gradient-boosted trees
(scikit-learn's ``HistGradientBoostingClassifier``). Each prints its recall@100 on each
target against cf alone's.

    python bench/fusion_model_probe.py --dataset ml-1m:RATINGS,MOVIES,TEXT \\
        [--protocol temporal] [--cache build/probe-ml1m.pkl]

The channel build on the carve takes about 5 minutes for ML-1M users 1–2999 on 2 cores;
``--cache`` keeps the lists for a rerun. Result:
docs/reports/2026-12-05-issue-15-fusion-and-new-items.md, "a learned fusion model, probed".
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recall_engine.config import default_config
from recall_engine.evaluation.split import PROTOCOLS, SplitKind, make_split
from recall_engine.offline import fusion_fit
from recall_engine.offline.data.movielens import load_dataset

DEPTH = 200
K = 100
RRF_K = 60


def carve_lists(dataset: str, protocol: SplitKind, seed: int) -> dict[str, Any]:
    """The carve of the split's training rows, every channel's list per validation user,
    and the training counts per item."""
    interactions, items = load_dataset(dataset)[:2]
    train = make_split(interactions, protocol, seed=seed).train
    carve = fusion_fit.carve(train, seed=seed)
    config = default_config(Path("build/probe-artifacts").resolve())
    t0 = time.perf_counter()
    lists = fusion_fit._carve_lists(carve, items, config, seed, DEPTH)
    print(f"carve lists in {time.perf_counter() - t0:.0f} s", flush=True)
    ids, counts = np.unique(np.asarray(carve.train.item_ids), return_counts=True)
    return {
        "lists": {
            c: [(list(x.item_ids), np.asarray(x.scores)) for x in v] for c, v in lists.items()
        },
        "targets": carve.targets,
        "history": [len(q.history) for q in carve.queries],
        "counts": dict(zip(ids.tolist(), counts.tolist(), strict=True)),
    }


def features(data: dict[str, Any], u: int) -> tuple[list[str], np.ndarray]:
    """User ``u``'s candidates (the union of the lists) and their feature rows."""
    channels = list(data["lists"])
    index: dict[str, int] = {}
    for c in channels:
        for i in data["lists"][c][u][0]:
            index.setdefault(i, len(index))
    x = np.zeros((len(index), 3 * len(channels) + 3))
    for ci, c in enumerate(channels):
        for rank, i in enumerate(data["lists"][c][u][0], start=1):
            row = index[i]
            x[row, 3 * ci] = 1.0 / (RRF_K + rank)
            x[row, 3 * ci + 1] = 1.0
            x[row, 3 * ci + 2] = np.log(rank)
    ids = list(index)
    history = np.log1p(data["history"][u])
    x[:, -3] = np.log1p([data["counts"].get(i, 0) for i in ids])
    x[:, -2] = history
    x[:, -1] = x[:, 3 * channels.index("cf")] * history
    return ids, x


def recall(ranked: dict[int, list[str]], truth: Sequence[frozenset[str]]) -> float:
    got = [len(set(ranked[u][:K]) & truth[u]) / len(truth[u]) for u in ranked if truth[u]]
    return float(np.mean(got))


def probe(data: dict[str, Any], make: Callable[[], Any], seed: int) -> dict[str, Any]:
    n = len(data["history"])
    rows = [features(data, u) for u in range(n)]
    perm = np.random.default_rng(seed).permutation(n)
    folds = (perm[: n // 2], perm[n // 2 :])
    cf = {u: data["lists"]["cf"][u][0] for u in range(n)}
    out = {}
    for target, truth in data["targets"].items():
        ranked: dict[int, list[str]] = {}
        for fit_on, score_on in ((0, 1), (1, 0)):
            xs = [rows[u][1] for u in folds[fit_on]]
            ys = [np.fromiter((i in truth[u] for i in rows[u][0]), bool) for u in folds[fit_on]]
            model = make().fit(np.vstack(xs), np.concatenate(ys))
            for u in folds[score_on]:
                ids, x = rows[u]
                p = model.predict_proba(x)[:, 1]
                ranked[int(u)] = [ids[j] for j in np.argsort(-p, kind="stable")]
        mine, base = recall(ranked, truth), recall(cf, truth)
        out[target] = {
            "model": round(mine, 4),
            "cf": round(base, 4),
            "gain": f"{mine / base - 1:+.1%}",
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="as `recall-engine eval --dataset`")
    ap.add_argument("--protocol", default="temporal", choices=PROTOCOLS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, help="keep the carve's lists here for a rerun")
    args = ap.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    if args.cache and args.cache.exists():
        data = pickle.loads(args.cache.read_bytes())
    else:
        data = carve_lists(args.dataset, args.protocol, args.seed)
        if args.cache:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            args.cache.write_bytes(pickle.dumps(data))
    print(f"{len(data['history'])} validation users, channels {list(data['lists'])}")
    models: dict[str, Callable[[], Any]] = {
        "logistic regression": lambda: LogisticRegression(max_iter=2000),
        "gradient-boosted trees": lambda: HistGradientBoostingClassifier(
            max_iter=200, random_state=args.seed
        ),
    }
    for name, make in models.items():
        print(name, probe(data, make, args.seed), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

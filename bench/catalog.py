"""``recall-engine bench catalog``: a synthetic catalogue of N items (up to a million and
more) built into a real artifacts folder that ``recall-engine serve --artifacts DIR``
serves with every built-in channel (``popular``, ``cf``, ``content``, ``llm``).

    recall-engine bench catalog --items 1000000 --out build/catalog-1m

What is real and what is synthetic (also written to ``DIR/bench_catalog.json``):

* **Items** are synthetic, made from the demo's vocabulary
  (:data:`recall_engine.offline.data.demo.TOPICS`: eight topics, four sub-tags each, the same
  title and sentence templates and slot fillers), so titles, texts and free-text queries
  are real English about one topic. Categories are ``(topic, sub-tag)``; each text ends
  with a ``Year: YYYY`` field line. Unlike the demo, titles are not made unique (the
  demo's uniqueness check is quadratic in N): at 1M items a title recurs about ten
  times, with different texts.
* **Interactions** are synthetic, generated vectorised with the demo's structure: users
  with one (60 %) or two favourite topics and a favourite sub-tag per topic, sessions of
  3–10 items that mostly stay on one (topic, sub-tag), Zipf-like (1/rank) popularity
  inside each (topic, sub-tag), 5 % cold items per (topic, sub-tag) that nobody touches,
  12 % "like" events (weight 3), 120 days of timestamps. Two simplifications: no planted
  co-consumed pairs, and every item that the Zipf draws never reached (and that is not
  cold) gets one interaction from a user who favours its topic, so that the ``cf``
  channel knows 95 % of the catalogue. Defaults: ``--users N/5``, about ``--per-user
  20`` interactions each (about 4.6M rows for 1M items).
* **catalog, popular, content**: the real build code (``build_all``, each plugin's own
  ``build``) with the parameters in :data:`BUILD_PARAMS`: ``content`` trains for 400
  steps (a step budget, so the bundle is the same on any machine), then encodes
  *every* item with its exported ONNX encoder into a bf16 index (every index here is
  bf16: half of f32's memory, the recall of f32 and about twice f16's search speed on
  CPUs with AVX-512 BF16; docs/vectors.md).
* **cf**: the item-to-item half is the real ``CFChannel.build`` on the whole log (cosine,
  100 neighbours per item instead of 200). The two-tower half runs the plugin's own
  trainer and exporter, but when the log holds more than ``--cf-train-samples`` (default
  400,000) next-item samples it trains on the whole histories of a random sample of
  users holding about that many, for one epoch of 4,096-row batches at learning rate
  0.01 (the default 5 epochs of 512 over 4.4M samples would take most of a day on two
  cores). The build checks the model on 2,000 next items of users it did not train on
  (``held_out_check`` in the bundle's ``cf`` manifest field: hit@100 and how varied the
  top 100s are). At the default learning rate (2e-3) this budget left the model
  degenerate, every user sent to the same ≈ 190 items (hit@100 0.14, distinct 0.008;
  0.01 gives 0.27 and 0.068; docs/reports/, round 4). The item index covers every
  item the log knows. At small N (fewer samples than the cap) ``cf`` is the real build
  throughout.
* **llm**: the bundle is the one ``LLMChannel.build`` writes (the MiniLM encoder exported
  to ONNX, or copied from ``--llm-model-dir``; ``index/``; ``signatures.npz`` through
  :func:`recall_engine.sdk.vector_channel.write_vectors`), but only ``--llm-real`` items
  (default 8,192, a sample stratified over the 32 topic/sub-tag groups) are embedded by
  MiniLM. Every other item's vector is synthetic: the MiniLM vector of a random real item
  of the same (topic, sub-tag) plus Gaussian noise (cosine about 0.8 to it),
  unit-normalised. The bundle ships MiniLM's int8 variant too, for serving free-text
  queries with ``precision = "int8"`` (``bench/load-1m.toml``). Embedding a million texts
  with MiniLM takes about two hours on two cores. The index is built with usearch's
  default ``expansion_add = 128`` (:data:`LLM_INDEX_OPTIONS`). Serving is
  entirely real: free-text queries go through MiniLM under ONNX Runtime, history queries
  average stored vectors, and both search the usearch index. With ``--items`` at most
  ``--llm-real`` the llm channel is the real build throughout.

``DIR/data/sample_interactions.csv`` holds the interactions of up to 5,000 users, for
``recall-engine bench load --interactions`` (known users with real histories);
``DIR/bench_catalog.json`` records sizes, seconds per step and the parameters.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Build parameters per channel (``[channels.<name>.params]``), chosen for a million
#: items on two cores; recorded in every bundle's manifest and in bench_catalog.json.
BUILD_PARAMS: dict[str, dict[str, Any]] = {
    "popular": {},
    "cf": {
        "method": "cosine",
        "neighbours": 100,
        "auto_mix": False,  # the configured modes as before: no validation carve at 1M
        "epochs": 1,
        "batch_size": 4096,
        "learning_rate": 0.01,
        "index_dtype": "bf16",
    },
    # a step budget (about one epoch of the 200,000 sampled pairs), not a clock: the
    # same bundle on any machine
    "content": {"index_dtype": "bf16", "max_steps": 400},
    "llm": {"index_dtype": "bf16", "variants": ["int8"]},
}
CHANNELS = tuple(BUILD_PARAMS)
LLM_REAL = 8192
#: HNSW build setting for the synthetic-llm index. Until round 4 it was half of this (64),
#: to build faster; at 1M that found 0.470 of the exact top 100 at ef 128 against 0.538
#: with 128, for 8 % more distance computations per search (raising ef to 256 instead
#: buys less for 43 % more; bench/index_tune.py, docs/reports/, round 4).
LLM_INDEX_OPTIONS = {"expansion_add": 128}
#: Two-tower training samples (next-item targets) above which ``cf`` trains on a sample
#: of users: one step over a million-row embedding table costs about a CPU second.
CF_TRAIN_SAMPLES = 400_000
#: Noise norm around a real MiniLM vector: cosine 1 / sqrt(1 + 0.75^2) = 0.8 to it.
LLM_NOISE = 0.75
KNOWN_USERS = 5000
PER_USER = 20
END_TIME = 1_704_067_200  # 2024-01-01T00:00:00Z, as the demo
SPAN = 120 * 86_400
FAVOURITE_SHARE = 0.85
SUBTAG_SHARE = 0.7
SESSION_FOCUS = 0.85
COLD_SHARE = 0.05
LIKE_SHARE = 0.12


@dataclass(slots=True, frozen=True, eq=False)
class SyntheticCatalog:
    """Items, their (topic, sub-tag) group index and the interaction log."""

    items: list  # list[ItemRecord], catalogue order
    groups: np.ndarray  # int, per item: topic * 4 + sub-tag
    interactions: Any  # recall_engine.offline.data.interactions.Interactions
    cold: int  # items nobody interacted with


# --------------------------------------------------------------------------- items


def make_items(n_items: int, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """``n_items`` items in the demo's topics (see the module docstring); returns the
    items and each one's group (``topic * 4 + sub-tag``). Random choices are drawn as
    arrays up front: the loop only formats strings."""
    from recall_engine.offline.data.demo import TOPICS, _capitalise, _title_case, _with_article
    from recall_engine.sdk.channel import ItemRecord

    names = list(TOPICS)
    topic = np.arange(n_items) % len(names)
    rng.shuffle(topic)
    sub = rng.integers(0, 4, n_items)
    phrase_a = rng.integers(0, 8, n_items)
    phrase_b = (phrase_a + rng.integers(1, 8, n_items)) % 8  # a different phrase
    picks = rng.random((n_items, 6)).argsort(axis=1)  # a random order of six sentences
    n_sentences = rng.integers(1, 4, n_items)
    draws = rng.integers(0, 1 << 30, (n_items, 4))  # adjective, person, place, title
    years = rng.integers(1990, 2025, n_items)
    width = max(4, len(str(n_items)))
    items = []
    for i in range(n_items):
        t = TOPICS[names[topic[i]]]
        subtag = list(t.subtags)[sub[i]]
        phrases = t.subtags[subtag]
        adj = t.adjectives[draws[i, 0] % len(t.adjectives)]
        who = t.people[draws[i, 1] % len(t.people)]
        slots = {
            "thing": phrases[phrase_a[i]],
            "other": phrases[phrase_b[i]],
            "adj": adj,
            "who": who,
            "where": t.places[draws[i, 2] % len(t.places)],
            "a_adj": _with_article(adj),
            "A_adj": _capitalise(_with_article(adj)),
            "Who": _capitalise(who),
        }
        title = _title_case(t.titles[draws[i, 3] % len(t.titles)].format(**slots))
        chosen = sorted(picks[i, : n_sentences[i]].tolist())
        text = " ".join(t.sentences[k].format(**slots) for k in chosen)
        items.append(
            ItemRecord(
                f"item-{i + 1:0{width}d}",
                title,
                f"{text}\nYear: {years[i]}",
                (names[topic[i]], subtag),
            )
        )
    return items, topic * 4 + sub


# --------------------------------------------------------------------------- interactions


def make_interactions(
    groups: np.ndarray, item_ids: np.ndarray, n_users: int, per_user: int, rng: np.random.Generator
) -> tuple[Any, int]:
    """The synthetic log (see the module docstring), in time order; returns it and the
    number of cold items."""
    from recall_engine.offline.data.interactions import Interactions

    n_groups = int(groups.max()) + 1
    n_topics = n_groups // 4
    # per group: non-cold members by popularity rank; 5 % cold
    ranked, cold_total = [], 0
    for g in range(n_groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        n_cold = round(COLD_SHARE * len(members)) if len(members) > 20 else 0
        cold_total += n_cold
        ranked.append(members[n_cold:])
    fav1 = rng.integers(0, n_topics, n_users)
    fav2 = np.where(
        rng.random(n_users) < 0.4, (fav1 + rng.integers(1, n_topics, n_users)) % n_topics, fav1
    )
    pref_sub = rng.integers(0, 4, (n_users, n_topics))
    sigma = 0.6
    counts = np.clip(
        np.round(rng.lognormal(np.log(per_user) - sigma**2 / 2, sigma, n_users)), 5, 6 * per_user
    ).astype(np.int64)
    user = np.repeat(np.arange(n_users), counts)
    n = len(user)
    local = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    session_len = rng.integers(3, 11, n_users)
    sessions_per_user = -(-counts // session_len)
    session = (
        np.repeat(np.cumsum(sessions_per_user) - sessions_per_user, counts)
        + local // session_len[user]
    )
    n_sessions = int(sessions_per_user.sum())
    s_user = np.repeat(np.arange(n_users), sessions_per_user)
    s_topic = _user_topics(s_user, fav1, fav2, n_topics, rng)
    s_sub = np.where(
        rng.random(n_sessions) < SUBTAG_SHARE,
        pref_sub[s_user, s_topic],
        rng.integers(0, 4, n_sessions),
    )
    stray = rng.random(n) >= SESSION_FOCUS
    row_topic = np.where(stray, _user_topics(user, fav1, fav2, n_topics, rng), s_topic[session])
    row_sub = np.where(stray, rng.integers(0, 4, n), s_sub[session])
    row_group = row_topic * 4 + row_sub
    items = np.empty(n, dtype=np.int64)
    for g in range(n_groups):
        rows = np.flatnonzero(row_group == g)
        m = len(ranked[g])
        # inverse CDF of P(rank r) ~ 1 / (r + 1): floor((m + 1) ** u) - 1
        r = np.floor(np.power(m + 1.0, rng.random(len(rows)))).astype(np.int64) - 1
        items[rows] = ranked[g][np.clip(r, 0, m - 1)]
    # timestamps: sessions start leaning recent (Beta(2, 1)), items 20 s - 10 min apart
    start = END_TIME - SPAN + SPAN * rng.beta(2.0, 1.0, n_sessions)
    gaps = np.cumsum(rng.integers(20, 601, n))
    first = np.r_[0, np.flatnonzero(np.diff(session)) + 1]
    offset = gaps - np.repeat(gaps[first], np.diff(np.r_[first, n]))
    times = start[session].astype(np.int64) + offset
    # items the draws never reached get one interaction from a user of their topic
    seen = np.zeros(len(groups), dtype=bool)
    seen[items] = True
    missing = np.concatenate([m[~seen[m]] for m in ranked])
    by_topic = [np.flatnonzero((fav1 == t) | (fav2 == t)) for t in range(n_topics)]
    extra_user = np.empty(len(missing), dtype=np.int64)
    for t in range(n_topics):
        rows = np.flatnonzero(groups[missing] // 4 == t)
        pool = by_topic[t] if len(by_topic[t]) else np.arange(n_users)
        extra_user[rows] = pool[rng.integers(0, len(pool), len(rows))]
    user = np.r_[user, extra_user]
    items = np.r_[items, missing]
    times = np.r_[times, END_TIME - SPAN + rng.integers(0, SPAN, len(missing))]
    order = np.lexsort((user, times))
    likes = rng.random(len(order)) < LIKE_SHARE
    width = max(4, len(str(n_users)))
    user_ids = np.char.add("user-", np.char.zfill(np.arange(1, n_users + 1).astype(str), width))
    log = Interactions(
        user_ids[user[order]],
        item_ids[items[order]],
        times[order],
        np.where(likes, 3.0, 1.0).astype(np.float32),
        np.where(likes, "like", "view"),
    )
    return log, cold_total


def _user_topics(
    users: np.ndarray, fav1: np.ndarray, fav2: np.ndarray, n_topics: int, rng: np.random.Generator
) -> np.ndarray:
    """One topic per entry: a favourite of the user (85 %), else any topic."""
    fav = np.where(rng.random(len(users)) < 0.5, fav1[users], fav2[users])
    return np.where(
        rng.random(len(users)) < FAVOURITE_SHARE, fav, rng.integers(0, n_topics, len(users))
    )


def make_catalog(
    n_items: int, n_users: int, *, per_user: int = PER_USER, seed: int = 0
) -> SyntheticCatalog:
    if n_items < 64 or n_users < 1:
        raise ValueError(f"--items must be >= 64 and --users >= 1, got {n_items}, {n_users}")
    rng = np.random.default_rng(seed)
    items, groups = make_items(n_items, rng)
    item_ids = np.asarray([it.item_id for it in items])
    log, cold = make_interactions(groups, item_ids, n_users, per_user, rng)
    return SyntheticCatalog(items, groups, log, cold)


# --------------------------------------------------------------------------- llm vectors


def build_llm(ctx: Any, groups: np.ndarray, real: int, seed: int) -> dict[str, Any]:
    """What ``LLMChannel.build`` does, with MiniLM run on ``real`` items only and
    synthetic vectors for the others (see the module docstring)."""
    from recall_engine.plugins.llm import (
        build_encoder,
        item_text,
        manifest_fields,
    )
    from recall_engine.sdk.vector_channel import encode_all, write_vectors

    params, manifest, encoder = build_encoder(ctx)
    items = list(ctx.catalog)
    rng = np.random.default_rng(seed)
    real_rows = stratified_sample(groups, real, rng)
    t0 = time.perf_counter()
    chosen = [items[i] for i in real_rows.tolist()]
    embedded = encode_all(
        lambda chunk: encoder.encode([item_text(it) for it in chunk]),
        chosen,
        encoder.dim,
        size=lambda it: len(item_text(it)),
        progress=ctx.progress,
        desc=f"{ctx.name}: embedding real items",
    )
    embed_s = time.perf_counter() - t0
    vectors = synthetic_vectors(groups, real_rows, _unit_rows(embedded), rng)
    fields = write_vectors(
        ctx.out, items, vectors, dtype=params["index_dtype"], index_options=LLM_INDEX_OPTIONS
    )
    synthetic = {
        "real_items": len(real_rows),
        "synthetic_items": len(items) - len(real_rows),
        "method": "MiniLM vector of a random real item of the same topic/sub-tag "
        f"+ Gaussian noise of norm {LLM_NOISE}, unit-normalised",
        "embed_seconds": round(embed_s, 1),
        "index_options": LLM_INDEX_OPTIONS,
    }
    return {**fields, **manifest_fields(params, manifest, encoder, synthetic_vectors=synthetic)}


def stratified_sample(groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """About ``n`` row indices, the same share of every group (at least one each),
    sorted."""
    share = min(1.0, n / len(groups))
    out = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        take = max(1, round(share * len(members)))
        out.append(rng.choice(members, min(take, len(members)), replace=False))
    return np.sort(np.concatenate(out))


def synthetic_vectors(
    groups: np.ndarray,
    real_rows: np.ndarray,
    real: np.ndarray,
    rng: np.random.Generator,
    chunk: int = 65_536,
) -> np.ndarray:
    """Real rows keep their vectors; every other row is a random real vector of its
    group plus noise of norm about :data:`LLM_NOISE`, unit-normalised."""
    n, dim = len(groups), real.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    is_real = np.zeros(n, dtype=bool)
    is_real[real_rows] = True
    by_group = {int(g): np.flatnonzero(groups[real_rows] == g) for g in np.unique(groups)}
    proto = np.empty(n, dtype=np.int64)
    for g, members in by_group.items():
        rows = np.flatnonzero(groups == g)
        proto[rows] = members[rng.integers(0, len(members), len(rows))]
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) * (LLM_NOISE / dim**0.5)
        out[lo:hi] = _unit_rows(real[proto[lo:hi]] + noise)
    out[real_rows] = real
    return out


def _unit_rows(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- cf on a budget


def build_cf(ctx: Any, train_samples: int) -> dict[str, Any]:
    """``CFChannel.build`` with the two-tower model trained on a sample of users.

    The item-to-item part *is* ``CFChannel.build`` (run with ``two_tower = false``: the
    vocabulary and neighbour lists from the whole log); the two-tower part then runs the
    plugin's own ``two_tower.train`` on whole histories of random users, about
    ``train_samples`` next-item targets, and ``two_tower.export`` (ONNX encoder and the
    item index over the whole vocabulary) into the same bundle."""
    from dataclasses import replace

    from recall_engine.plugins.cf import CFChannel, parse_params, two_tower
    from recall_engine.plugins.cf.channel import MANIFEST_FIELD
    from recall_engine.plugins.cf.histories import training_log

    params = parse_params(ctx.name, ctx.params)
    fields = CFChannel.build(replace(ctx, params={**ctx.params, "two_tower": False}))
    vocab, data = training_log(ctx.interactions)
    sample, users = sample_users(data, train_samples, np.random.default_rng(ctx.seed))
    model, report = two_tower.train(vocab, sample, params, seed=ctx.seed, progress=ctx.progress)
    check = next_item_check(model, data, users, params.sequence_length, seed=ctx.seed)
    hashes = two_tower.export(model, vocab, params, ctx.out, seed=ctx.seed)
    info = dict(fields[MANIFEST_FIELD])
    info["modes"] = [*info["modes"], "two_tower"]
    info.update(
        encoder=params.encoder,
        sequence_length=params.sequence_length,
        train_samples=report.samples,
        train_steps=report.steps,
        train_seconds=round(report.seconds, 2),
        final_loss=round(report.final_loss, 4),
        train_users=int(len(sample.starts) - 1),
        held_out_check=check,
        sampled="two-tower trained on a sample of users (bench catalog)",
    )
    return {
        **fields,
        "dims": params.dim,
        "metric": "ip",
        "model_hashes": hashes,
        "build_params": params.as_dict(),
        MANIFEST_FIELD: info,
    }


def sample_users(data: Any, samples: int, rng: np.random.Generator) -> tuple[Any, np.ndarray]:
    """A :class:`TrainingLog` of whole histories of random users holding about
    ``samples`` next-item targets (a user with n interactions gives n - 1), and those
    users (indices into ``data``), sorted."""
    from recall_engine.plugins.cf.histories import TrainingLog

    lengths = np.diff(data.starts)
    order = rng.permutation(len(lengths))
    take = order[: int(np.searchsorted(np.cumsum(lengths[order] - 1), samples)) + 1]
    take = np.sort(take)
    rows = np.concatenate([np.arange(data.starts[u], data.starts[u + 1]) for u in take])
    kept = lengths[take]
    starts = np.r_[0, np.cumsum(kept)].astype(np.int64)
    return TrainingLog(
        np.repeat(np.arange(len(take)), kept),
        data.items[rows],
        data.weights[rows],
        starts,
        len(take),
    ), take


def next_item_check(
    model: Any,
    data: Any,
    trained_users: np.ndarray,
    length: int,
    *,
    k: int = 100,
    n: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """How good the sampled two-tower model is, on users it was not trained on: for
    ``n`` random next-item targets of other users, the share whose target is in the top
    ``k`` the model ranks for the history before it (exact search over every item), and
    how varied those top-``k`` lists are (distinct items over all slots)."""
    import torch

    from recall_engine.plugins.cf.two_tower import NextItemSamples

    samples = NextItemSamples(data, length)
    owner = np.searchsorted(data.starts, samples.targets, side="right") - 1
    held_out = np.flatnonzero(~np.isin(owner, trained_users))
    rows = np.random.default_rng(seed).choice(held_out, min(n, len(held_out)), replace=False)
    ids, mask, target = samples.batch(rows)
    with torch.no_grad():
        items = model.item_vectors()
        users = model(ids, mask)
        # 128 users at a time: all 2,000 against a million items would be 7.6 GB of scores
        top = np.concatenate(
            [
                torch.topk(users[i : i + 128] @ items.T, k, dim=1).indices.numpy()
                for i in range(0, len(users), 128)
            ]
        )
    hit = float(np.mean([t in row for t, row in zip(target.numpy(), top, strict=True)]))
    return {
        f"next_item_hit_at_{k}": round(hit, 4),
        f"distinct_top_{k}": round(len(np.unique(top)) / top.size, 4),
        "users": len(rows),
    }


# --------------------------------------------------------------------------- build


def build_catalog(
    out: Path,
    n_items: int,
    *,
    n_users: int | None = None,
    per_user: int = PER_USER,
    seed: int = 0,
    llm_real: int = LLM_REAL,
    llm_model_dir: str | None = None,
    cf_train_samples: int = CF_TRAIN_SAMPLES,
    channels: Sequence[str] = CHANNELS,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate the catalogue and log, build every channel into ``out``, write
    ``out/bench_catalog.json``; returns what it wrote there."""
    from recall_engine.config import parse_config
    from recall_engine.observability.logs import get_logger
    from recall_engine.offline.build import build_all
    from recall_engine.runtime.artifacts import ArtifactStore
    from recall_engine.sdk.channel import BuildContext

    log = get_logger(__name__)
    unknown = set(channels) - set(CHANNELS)
    if unknown:
        raise ValueError(f"--channels: unknown {sorted(unknown)} (known: {', '.join(CHANNELS)})")
    n_users = n_users or max(1, n_items // 5)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = make_catalog(n_items, n_users, per_user=per_user, seed=seed)
    seconds["generate"] = round(time.perf_counter() - t0, 1)
    log.info(
        "catalog_generated",
        items=n_items,
        users=n_users,
        interactions=len(data.interactions),
        seconds=seconds["generate"],
    )
    params = {name: dict(p) for name, p in BUILD_PARAMS.items()}
    if llm_model_dir:
        params["llm"]["model_dir"] = str(llm_model_dir)
    synthetic_llm = "llm" in channels and n_items > llm_real
    samples = len(data.interactions) - len(np.unique(data.interactions.user_ids))
    sampled_cf = "cf" in channels and samples > cf_train_samples
    config = parse_config(
        {
            "artifacts": {"root": str(out.resolve())},
            "channels": {
                name: {"required": name == "popular", "params": p} for name, p in params.items()
            },
            "plan": {"fusion": "rrf"},
        },
        Path("."),
    )
    real_build = [
        c for c in channels if not (c == "llm" and synthetic_llm or c == "cf" and sampled_cf)
    ]
    t0 = time.perf_counter()
    built = build_all(
        data.interactions,
        data.items,
        out,
        config,
        channels=real_build,
        seed=seed,
        progress=progress,
    )
    for b in built:
        if b.version is None:
            raise RuntimeError(f"channel {b.channel} was not built: {b.skipped}")
        seconds[b.channel] = round(b.seconds, 1)
    custom = {
        "cf": (sampled_cf, lambda ctx: build_cf(ctx, cf_train_samples)),
        "llm": (synthetic_llm, lambda ctx: build_llm(ctx, data.groups, llm_real, seed)),
    }
    if sampled_cf or synthetic_llm:
        from recall_engine.runtime.catalog import Catalog

        catalog = Catalog.load(out / "catalog")
        for name, (wanted, builder) in custom.items():
            if not wanted:
                continue
            t1 = time.perf_counter()
            log.info("build_started", channel=name, plugin=name, shortcut=True)
            with ArtifactStore(out).new_version(name, make_current=True) as writer:
                writer.update(
                    **builder(
                        BuildContext(
                            name,
                            data.interactions,
                            catalog,
                            writer.path,
                            config.channels[name].params,
                            seed,
                            progress,
                        )
                    )
                )
            seconds[name] = round(time.perf_counter() - t1, 1)
            log.info("build_finished", channel=name, seconds=seconds[name])
    seconds["total_build"] = round(time.perf_counter() - t0 + seconds["generate"], 1)
    report = {
        "items": n_items,
        "users": n_users,
        "interactions": len(data.interactions),
        "cold_items": data.cold,
        "seed": seed,
        "seconds": seconds,
        "build_params": params,
        "llm": (
            "synthetic vectors except for a stratified sample of "
            f"{min(llm_real, n_items)} MiniLM-embedded items"
        )
        if synthetic_llm
        else "real: every item embedded by MiniLM",
        "cf": (
            f"two-tower trained on a sample of users holding about {cf_train_samples} "
            f"of the {samples} next-item samples"
        )
        if sampled_cf
        else "real build on the whole log",
        "channels": list(channels),
    }
    report = _merge_previous(out / "bench_catalog.json", report)
    _write_sample(out / "data" / "sample_interactions.csv", data.interactions)
    (out / "bench_catalog.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _merge_previous(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``--channels`` rebuilt some channels of a catalogue generated with the same size
    and seed: keep what the earlier report says of the others."""
    from recall_engine.runtime.files import read_json_object

    try:
        previous = read_json_object(path)
    except (FileNotFoundError, ValueError):  # none yet, or not a report: start afresh
        return report
    same = ("items", "users", "interactions", "seed")
    if any(previous.get(key) != report[key] for key in same):
        return report
    rebuilt = set(report["channels"])
    kept = [c for c in previous.get("channels", []) if c not in rebuilt]
    merged = dict(report)
    merged["channels"] = [c for c in CHANNELS if c in rebuilt or c in kept]
    merged["seconds"] = {
        **{c: previous["seconds"][c] for c in kept if c in previous.get("seconds", {})},
        **report["seconds"],
    }
    for name in ("llm", "cf"):
        if name in kept and name in previous:
            merged[name] = previous[name]
    return merged


def _write_sample(path: Path, log: Any, users: int = KNOWN_USERS) -> None:
    """The interactions of the first ``users`` users (for ``bench load --interactions``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = np.unique(log.user_ids)[:users]
    rows = np.flatnonzero(np.isin(log.user_ids, keep))
    events = log.events[rows] if log.events is not None else [""] * len(rows)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["user_id", "item_id", "timestamp", "weight", "event"])
        w.writerows(
            zip(
                log.user_ids[rows].tolist(),
                log.item_ids[rows].tolist(),
                log.timestamps[rows].tolist(),
                (f"{x:g}" for x in log.weights[rows].tolist()),
                list(events),
                strict=True,
            )
        )


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, required=True, help="catalogue size N")
    p.add_argument("--out", type=Path, required=True, help="artifacts folder to write")
    p.add_argument("--users", type=int, help="users in the log (default: N / 5)")
    p.add_argument(
        "--per-user",
        type=int,
        default=PER_USER,
        help="mean interactions per user (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--llm-real",
        type=int,
        default=LLM_REAL,
        help="items embedded by MiniLM; the rest get synthetic vectors (default: %(default)s)",
    )
    p.add_argument(
        "--llm-model-dir",
        help="an exported sentence-encoder folder to copy "
        "instead of exporting MiniLM (needs no PyTorch)",
    )
    p.add_argument(
        "--cf-train-samples",
        type=int,
        default=CF_TRAIN_SAMPLES,
        help="above this many next-item samples the cf two-tower model trains "
        "on a sample of users (default: %(default)s)",
    )
    p.add_argument(
        "--channels",
        default=",".join(CHANNELS),
        help="comma-separated channels to build (default: all)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import sys

    from recall_engine.observability.logs import configure

    configure(json=False if sys.stderr.isatty() else None)
    report = build_catalog(
        args.out,
        args.items,
        n_users=args.users,
        per_user=args.per_user,
        seed=args.seed,
        llm_real=args.llm_real,
        llm_model_dir=args.llm_model_dir,
        cf_train_samples=args.cf_train_samples,
        channels=[c for c in args.channels.split(",") if c],
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(
        f"built {report['items']} items, {report['users']} users, "
        f"{report['interactions']} interactions into {args.out}"
    )
    for step, s in report["seconds"].items():
        print(f"  {step:<12} {s:8.1f} s")
    return 0

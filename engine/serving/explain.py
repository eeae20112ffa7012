"""``RecallRequest.explain``: why each returned candidate is in the list.

Two parts, both computed after fusion, for the returned candidates only, and only when
the request asks (the engine checks one flag otherwise):

* the fusion arithmetic, per candidate and taking-part channel: the weight, the rank and
  raw score, the normalised score or reciprocal-rank term, and their product, computed
  exactly as :mod:`recall_engine.serving.fusion` does (same float64 operations, same
  channel order), so for ``rrf`` and ``weighted_sum`` the terms add up to the fused
  score; and whether the cold-item quota placed the item (the strategy alone, fused
  again without the quota, left it out);
* the evidence of every channel that returned a candidate and implements
  :class:`~recall_engine.sdk.capabilities.Explainable`, run on a few workers of its own
  (serving/explain_workers.py) within most of what is left of the request's deadline. A
  channel that raises or runs late gives no evidence and is named in
  :attr:`Explanation.channel_errors`; the rest still explain. When every worker is
  busy (a hung ``explain``), requests get no evidence at once rather than queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recall_engine.observability.logs import get_logger
from recall_engine.sdk.capabilities import Explainable
from recall_engine.sdk.channel import Channel
from recall_engine.sdk.types import Evidence, Query
from recall_engine.serving import fusion
from recall_engine.serving.explain_workers import EXPLAIN_PENDING, EXPLAIN_WORKERS, WORKERS
from recall_engine.serving.fusion import ColdMask, Fused, RankedList

log = get_logger(__name__)

__all__ = [
    "EXPLAIN_PENDING",
    "EXPLAIN_WORKERS",
    "CandidateExplanation",
    "Explanation",
    "FusionTerm",
    "channel_evidence",
    "explain",
    "pending_explains",
]


@dataclass(slots=True, frozen=True)
class FusionTerm:
    """What one channel added to a candidate's fused score: ``value = weight *
    normalized``, where ``normalized`` is ``1 / (rrf_k + rank)`` for rrf, the score
    normalised over the channel's whole list for weighted_sum, 0 for quota."""

    channel: str
    weight: float
    rank: int
    raw_score: float
    normalized: float
    value: float


@dataclass(slots=True, frozen=True)
class CandidateExplanation:
    """One candidate: its terms in channel order, their sum (float32, as the fused
    scores are), whether the cold quota placed it, a readable formula, and the evidence
    of the channels that returned it and can explain (channel -> evidence)."""

    terms: tuple[FusionTerm, ...]
    terms_sum: float
    placed_by_cold_quota: bool
    formula: str
    evidence: Mapping[str, Evidence]


@dataclass(slots=True, frozen=True)
class Explanation:
    """Every returned candidate explained (parallel to ``Fused.item_ids``), with the
    strategy, its checked params and the cold quota it ran with."""

    fusion: str
    params: Mapping[str, Any]
    cold_quota: float
    cold_slots: int
    candidates: tuple[CandidateExplanation, ...]
    channel_errors: Mapping[str, str]


# --------------------------------------------------------------------------- evidence


#: Evidence is gathered in this share of what is left of the request's deadline; the
#: rest is for the fusion arithmetic, the response and its way back, so that a slow or
#: hung ``explain`` never makes the caller's deadline pass.
EVIDENCE_SHARE = 0.8
LATE = "no evidence within the request's deadline"
BUSY = (
    "no evidence: every explain worker is busy (some channel's explain is slow or hung; "
    "the candidates and the fusion arithmetic are whole)"
)


def pending_explains() -> int:
    """Evidence jobs running or waiting in this process (tests, debugging)."""
    return WORKERS.pending()


async def channel_evidence(
    channels: Mapping[str, Channel],
    query: Query,
    fused: Fused,
    budget_s: float,
    release: Callable[[], None] = lambda: None,
) -> tuple[dict[str, Mapping[str, Evidence]], dict[str, str]]:
    """Ask every channel of ``channels`` that is :class:`Explainable` about the fused
    candidates it returned, one after another on one of the explain workers
    (serving/explain_workers.py), within :data:`EVIDENCE_SHARE` of ``budget_s``
    seconds. Returns channel -> item -> evidence, and channel -> why for those that
    gave none: their explain raised, ran past the time (evidence that came in before
    stays), or every worker was busy. A job whose time is up when a worker takes it, or
    between two channels, asks no further channel. ``release`` runs once the job is
    done or refused (the engine's slot release: a channel is never closed under a late
    explain)."""
    asked = {
        name: [fused.item_ids[i] for i in fused.provenance[name][0]]
        for name, channel in channels.items()
        if name in fused.provenance and isinstance(channel, Explainable)
    }
    if not asked:
        release()
        return {}, {}
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    stop_at = time.perf_counter() + max(budget_s, 0.0) * EVIDENCE_SHARE
    evidence: dict[str, Mapping[str, Evidence]] = {}
    errors: dict[str, str] = {}
    lock = threading.Lock()  # the job writes, the request reads once it stops waiting

    def run() -> None:
        try:
            for name, items in asked.items():
                if time.perf_counter() >= stop_at:
                    return  # the request is answered without it: ask nothing more
                try:
                    got = channels[name].explain(query, items)  # type: ignore[attr-defined]
                    found = {i: got[i] for i in items if i in got}
                    with lock:
                        evidence[name] = found
                except Exception as e:  # noqa: BLE001 - one channel's fault, its error
                    why = f"explain raised {type(e).__name__}: {e}"
                    with lock:
                        errors[name] = why
                    log.warning("channel_explain_failed", channel=name, error=why)
        finally:
            release()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, finished)

    if not WORKERS.try_submit(functools.partial(contextvars.copy_context().run, run)):
        release()
        log.warning("channel_explain_busy", channels=sorted(asked), pending=pending_explains())
        return {}, dict.fromkeys(asked, BUSY)
    await asyncio.wait({finished}, timeout=max(stop_at - time.perf_counter(), 0.0))
    with lock:
        got, failed = dict(evidence), dict(errors)
    late = {n: LATE for n in asked if n not in got and n not in failed}
    return got, {**failed, **late}


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


# --------------------------------------------------------------------------- arithmetic


def explain(
    strategy: str,
    lists: Sequence[RankedList],
    weights: Mapping[str, float],
    k: int,
    fused: Fused,
    *,
    priority: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
    cold_quota: float = 0.0,
    cold: ColdMask | None = None,
    evidence: Mapping[str, Mapping[str, Evidence]] | None = None,
    channel_errors: Mapping[str, str] | None = None,
) -> Explanation:
    """The :class:`Explanation` of ``fused``, the result of
    ``fusion.fuse(strategy, lists, weights, k, priority=..., params=..., cold_quota=...,
    cold=...)`` with these same arguments."""
    checked = fusion.validate_params(strategy, params or {})
    active = sorted(
        (lst for lst in lists if weights.get(lst.channel, 0.0) > 0),
        key=lambda lst: (_order(priority, lst.channel), lst.channel),
    )
    per_channel = [
        _channel_terms(strategy, checked, lst, float(weights[lst.channel])) for lst in active
    ]
    cold_slots = fusion.cold_slots(cold_quota, k)
    placed: set[str] = set()
    if cold_slots and cold is not None and fused.item_ids:
        alone = fusion.fuse(strategy, lists, weights, k, priority=priority, params=params)
        placed = set(fused.item_ids) - set(alone.item_ids)
    evidence = evidence or {}
    out = []
    for position, item in enumerate(fused.item_ids):
        terms = tuple(t[item] for t in per_channel if item in t)
        total = 0.0
        for t in terms:  # float64, in channel order: as fusion adds them
            total += t.value
        out.append(
            CandidateExplanation(
                terms=terms,
                terms_sum=float(np.float32(total)),
                placed_by_cold_quota=item in placed,
                formula=_formula(strategy, checked, terms, total, position, k),
                evidence={
                    t.channel: evidence[t.channel][item]
                    for t in terms
                    if item in evidence.get(t.channel, {})
                },
            )
        )
    return Explanation(
        fusion=strategy,
        params=checked,
        cold_quota=float(cold_quota),
        cold_slots=cold_slots,
        candidates=tuple(out),
        channel_errors=dict(channel_errors or {}),
    )


def _order(priority: Sequence[str], channel: str) -> int:
    return priority.index(channel) if channel in priority else len(priority)


def _channel_terms(
    strategy: str, params: Mapping[str, Any], lst: RankedList, weight: float
) -> dict[str, FusionTerm]:
    """Item -> term for every item of one channel's list (the normalisers are fitted on
    the whole list, so the whole list is read)."""
    raw = np.array(lst.scores, dtype=np.float64)
    ranks = np.arange(1, len(raw) + 1, dtype=np.int64)
    if strategy == "rrf":
        rrf_k = float(params["rrf_k"])
        normalized = 1.0 / (rrf_k + ranks)
        values = weight / (rrf_k + ranks)  # fusion's own expression, to the last bit
    elif strategy == "weighted_sum" and len(raw):
        normalize = fusion._NORMALIZERS[params["normalization"]]
        scale = float(np.abs(raw).max())
        normalized = normalize(raw / scale if scale > 0 else raw)
        values = weight * normalized
    else:  # quota: the position sets the score, not the channels' scores
        normalized = values = np.zeros(len(raw))
    return {
        item: FusionTerm(lst.channel, weight, int(r), float(s), float(n), float(v))
        for item, r, s, n, v in zip(
            lst.item_ids,
            ranks.tolist(),
            raw.tolist(),
            normalized.tolist(),
            values.tolist(),
            strict=True,
        )
    }


def _formula(
    strategy: str,
    params: Mapping[str, Any],
    terms: Sequence[FusionTerm],
    total: float,
    position: int,
    k: int,
) -> str:
    if strategy == "rrf":
        rrf_k = float(params["rrf_k"])
        parts = [f"{t.weight:g}/({rrf_k:g}+{t.rank}) [{t.channel}]" for t in terms]
    elif strategy == "weighted_sum":
        parts = [f"{t.weight:g}*{t.normalized:.4f} [{t.channel}]" for t in terms]
    else:
        return f"quota: ({k}-{position})/{k} by position"
    return " + ".join(parts) + f" = {total:.6g}"

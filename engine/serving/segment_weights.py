"""Which fusion weights a request gets: the plan's, or those the build learned for its
history length (:mod:`recall_engine.runtime.learned_weights`).

Learned weights apply when the plan asks for them (``learned_weights``, on in the
default plan; off in a variant that sets its own weights), the artifacts hold them, they
were learned for the plan's strategy, and the request is one the fit could learn from:
a history and no free text (text requests are what the text channels are for, and the
interaction log has none to learn their weights from). A channel the fit did not see
(added since the build) keeps the plan's weight; a channel the plan turns off stays off.

New items. The fit scores warm items only (a held-out item the carve's channels never
saw cannot be found by the collaborative ones), so it may set the text channels to 0,
and a channel at 0 is not called: the plan's cold quota (``cold_quota``, slots kept for
items without interactions) would have no new item to take, and new items would be
buried again. So when the plan keeps cold slots, a channel the plan weighs but the fit
set to 0 still takes part, at :data:`SCOUT_SHARE` of the smallest learned weight: an item
only it returns scores below every item of the channels the fit chose (RRF: a rank-1
term of ``SCOUT_SHARE·w/(rrf_k+1)`` against at least ``w/(rrf_k+depth)``, depth ≤ 5,000
at ``rrf_k`` 60), so it fills no warm slot by itself, but the cold quota can take what it
returned. The engine's fallback (``[overload] fallback``, ``popular``) never scouts: it
ranks items by their interactions, so it returns no new item, and at weight 0 it stays
held in reserve, called only when nothing else answers.

Which requests get cold slots. A bundle whose fit learned a cold gate (``"cold"`` in
``weights.json``, :class:`~recall_engine.runtime.learned_weights.ColdGate`) replaces the
plan's ``cold_quota`` for the requests learned weights cover: those whose newest history
items are young (their median age at most the gate's) get the gate's quota, the others
none, and only the former scout. New items are found by users who take what just came
out; a slot given to everyone else costs a warm hit and rarely finds one. The plan's
``cold_quota`` still turns cold slots on and off (0: none for anyone), and requests
outside the learned ones (text, no history, hand-set variants) keep it, as do plans with
``learned_cold = false`` (a variant that writes its own ``cold_quota``, unless it says
otherwise).

What a scout is asked (:func:`plan_scouts`). Only its cold items can reach the list, so
a scout is asked for cold items alone: those its full list of ``channel_k`` would hold,
each with the rank it would hold there (``RecallsColdItems``: an exact scan over the new
items' vectors instead of a search of ``channel_k`` over the whole index, ranks
estimated from sampled scores; other channels answer in full and the engine keeps their
cold items). Fused as before, then: the same items at the same ranks, so an item both
text channels rank high still gets both terms. Two exceptions: when the chosen channels'
depths add up to less than ``k``, a scout's warm items may fill what they leave, so it
is asked in full, as a weighted channel is; and when the request's ``k`` leaves no cold
slot, or the catalogue holds no cold item, it is not called at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from recall_engine.config import Plan
from recall_engine.runtime.learned_weights import LearnedWeights, history_age_days
from recall_engine.sdk.types import Query
from recall_engine.serving.fusion import cold_slots

__all__ = ["SCOUT_SHARE", "RequestFusion", "describe", "plan_scouts", "request_weights"]

SCOUT_SHARE = 0.01  # a scouting channel's weight, as a share of the smallest learned one

#: per item id, days since its first interaction (-1: new); None: nothing known
ItemAges = Callable[[Sequence[str]], "np.ndarray | None"]


class RequestFusion(NamedTuple):
    """How one request's lists are fused: ``weights`` (a fresh dict), which of the
    weighted channels are ``scouts``, and its ``cold_quota``."""

    weights: dict[str, float]
    scouts: frozenset[str]
    cold_quota: float


def request_weights(
    plan: Plan,
    learned: LearnedWeights | None,
    query: Query,
    fallback: str | None = None,
    ages: ItemAges | None = None,
) -> RequestFusion:
    """The weights, scouts and cold quota to fuse ``query``'s lists with under ``plan``
    (module doc); ``fallback``: the engine's fallback channel, which does not scout;
    ``ages``: the catalogue's :meth:`~recall_engine.runtime.catalog.Catalog.item_ages_days`,
    for a learned cold gate (without it, such a request gets no cold slot)."""
    weights = dict(plan.weights)
    none: frozenset[str] = frozenset()
    as_planned = RequestFusion(weights, none, plan.cold_quota)
    if (
        learned is None
        or not plan.learned_weights
        or learned.fusion != plan.fusion
        or query.text
        or not query.history
    ):
        return as_planned
    seg = learned.for_history(len(query.history))
    if seg is None:
        return as_planned
    out = {n: (seg.get(n, w) if w > 0 else 0.0) for n, w in weights.items()}
    chosen = [w for w in out.values() if w > 0]
    if not chosen:
        # learned all-zero over this plan's channels (it cannot be: the fit keeps one
        # > 0, but a plan may enable only channels the fit set to 0): the plan's weights
        return as_planned
    quota = plan.cold_quota
    if quota > 0 and learned.cold is not None and plan.learned_cold:  # the gate (module doc)
        gate = learned.cold
        found = ages(query.history[-gate.recent :]) if ages is not None else None
        quota = gate.quota_for(None if found is None else history_age_days(found))
    scouts = []
    if quota > 0:  # scouts for the cold slots (module doc)
        scout = SCOUT_SHARE * min(chosen)
        for n, w in weights.items():
            if w > 0 and out[n] == 0 and n != fallback:
                out[n] = scout
                scouts.append(n)
    return RequestFusion(out, frozenset(scouts), quota)


def plan_scouts(
    plan: Plan,
    weights: dict[str, float],
    scouts: frozenset[str],
    k: int,
    cold_items: int | None,
    cold_quota: float | None = None,
) -> tuple[dict[str, float], frozenset[str]]:
    """What ``request_weights``' scouts are asked for a request of ``k`` (module doc):
    the weights (the scouts at 0 when they are not to be called: no cold slot at this
    ``k`` under ``cold_quota`` — the request's, default the plan's — or ``cold_items`` —
    how many the catalogue holds, None when it knows nothing — is 0) and the scouts
    asked for their new items only (none when the chosen channels' depths add up to
    less than ``k``: then they are asked in full)."""
    if not scouts:
        return weights, scouts
    quota = plan.cold_quota if cold_quota is None else cold_quota
    chosen = sum(plan.channel_k.get(n, 0) for n, w in weights.items() if w > 0 and n not in scouts)
    if chosen < k:
        return weights, frozenset()
    if not cold_slots(quota, k) or not cold_items:
        return {**weights, **dict.fromkeys(scouts, 0.0)}, frozenset()
    return weights, scouts


def describe(learned: LearnedWeights | None) -> Mapping[str, object]:
    """For logs: the bundle version and each segment's weights."""
    if learned is None:
        return {}
    return {
        "version": learned.version,
        "segments": {s.name: dict(s.weights) for s in learned.segments},
        "cold": learned.cold.as_json() if learned.cold is not None else None,
    }

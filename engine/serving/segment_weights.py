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

from collections.abc import Mapping

from recall_engine.config import Plan
from recall_engine.runtime.learned_weights import LearnedWeights
from recall_engine.sdk.types import Query
from recall_engine.serving.fusion import cold_slots

__all__ = ["SCOUT_SHARE", "describe", "plan_scouts", "request_weights"]

SCOUT_SHARE = 0.01  # a scouting channel's weight, as a share of the smallest learned one


def request_weights(
    plan: Plan, learned: LearnedWeights | None, query: Query, fallback: str | None = None
) -> tuple[dict[str, float], frozenset[str]]:
    """The weights to fuse ``query``'s lists with under ``plan`` (a fresh dict), and
    which of the weighted channels are scouts; ``fallback``: the engine's fallback
    channel, which does not scout (module doc)."""
    weights = dict(plan.weights)
    none: frozenset[str] = frozenset()
    if (
        learned is None
        or not plan.learned_weights
        or learned.fusion != plan.fusion
        or query.text
        or not query.history
    ):
        return weights, none
    seg = learned.for_history(len(query.history))
    if seg is None:
        return weights, none
    out = {n: (seg.get(n, w) if w > 0 else 0.0) for n, w in weights.items()}
    chosen = [w for w in out.values() if w > 0]
    if not chosen:
        # learned all-zero over this plan's channels (it cannot be: the fit keeps one
        # > 0, but a plan may enable only channels the fit set to 0): the plan's weights
        return weights, none
    scouts = []
    if plan.cold_quota > 0:  # scouts for the cold slots (module doc)
        scout = SCOUT_SHARE * min(chosen)
        for n, w in weights.items():
            if w > 0 and out[n] == 0 and n != fallback:
                out[n] = scout
                scouts.append(n)
    return out, frozenset(scouts)


def plan_scouts(
    plan: Plan,
    weights: dict[str, float],
    scouts: frozenset[str],
    k: int,
    cold_items: int | None,
) -> tuple[dict[str, float], frozenset[str]]:
    """What ``request_weights``' scouts are asked for a request of ``k`` (module doc):
    the weights (the scouts at 0 when they are not to be called: no cold slot at this
    ``k``, or ``cold_items`` — how many the catalogue holds, None when it knows nothing —
    is 0) and the scouts asked for their new items only (none when the chosen channels'
    depths add up to less than ``k``: then they are asked in full)."""
    if not scouts:
        return weights, scouts
    chosen = sum(plan.channel_k.get(n, 0) for n, w in weights.items() if w > 0 and n not in scouts)
    if chosen < k:
        return weights, frozenset()
    if not cold_slots(plan.cold_quota, k) or not cold_items:
        return {**weights, **dict.fromkeys(scouts, 0.0)}, frozenset()
    return weights, scouts


def describe(learned: LearnedWeights | None) -> Mapping[str, object]:
    """For logs: the bundle version and each segment's weights."""
    if learned is None:
        return {}
    return {
        "version": learned.version,
        "segments": {s.name: dict(s.weights) for s in learned.segments},
    }

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
"""

from __future__ import annotations

from collections.abc import Mapping

from recall_engine.config import Plan
from recall_engine.runtime.learned_weights import LearnedWeights
from recall_engine.sdk.types import Query

__all__ = ["SCOUT_SHARE", "describe", "weights_for"]

SCOUT_SHARE = 0.01  # a scouting channel's weight, as a share of the smallest learned one


def weights_for(
    plan: Plan, learned: LearnedWeights | None, query: Query, fallback: str | None = None
) -> dict[str, float]:
    """The weights to fuse ``query``'s lists with under ``plan`` (a fresh dict);
    ``fallback``: the engine's fallback channel, which does not scout (module doc)."""
    weights = dict(plan.weights)
    if (
        learned is None
        or not plan.learned_weights
        or learned.fusion != plan.fusion
        or query.text
        or not query.history
    ):
        return weights
    seg = learned.for_history(len(query.history))
    if seg is None:
        return weights
    out = {n: (seg.get(n, w) if w > 0 else 0.0) for n, w in weights.items()}
    chosen = [w for w in out.values() if w > 0]
    if not chosen:
        # learned all-zero over this plan's channels (it cannot be: the fit keeps one
        # > 0, but a plan may enable only channels the fit set to 0): the plan's weights
        return weights
    if plan.cold_quota > 0:  # scouts for the cold slots (module doc)
        scout = SCOUT_SHARE * min(chosen)
        for n, w in weights.items():
            if w > 0 and out[n] == 0 and n != fallback:
                out[n] = scout
    return out


def describe(learned: LearnedWeights | None) -> Mapping[str, object]:
    """For logs: the bundle version and each segment's weights."""
    if learned is None:
        return {}
    return {
        "version": learned.version,
        "segments": {s.name: dict(s.weights) for s in learned.segments},
    }

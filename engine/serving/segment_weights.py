"""Which fusion weights a request gets: the plan's, or those the build learned for its
history length (:mod:`recall_engine.runtime.learned_weights`).

Learned weights apply when the plan asks for them (``learned_weights``, on in the
default plan; off in a variant that sets its own weights), the artifacts hold them, they
were learned for the plan's strategy, and the request is one the fit could learn from:
a history and no free text (text requests are what the text channels are for, and the
interaction log has none to learn their weights from). A channel the fit did not see
(added since the build) keeps the plan's weight; a channel the plan turns off stays off.
"""

from __future__ import annotations

from collections.abc import Mapping

from recall_engine.config import Plan
from recall_engine.runtime.learned_weights import LearnedWeights
from recall_engine.sdk.types import Query

__all__ = ["describe", "weights_for"]


def weights_for(plan: Plan, learned: LearnedWeights | None, query: Query) -> dict[str, float]:
    """The weights to fuse ``query``'s lists with under ``plan`` (a fresh dict)."""
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
    # learned all-zero over this plan's channels (it cannot be: the fit keeps one > 0,
    # but a plan may enable only channels the fit set to 0): the plan's weights
    return out if any(w > 0 for w in out.values()) else weights


def describe(learned: LearnedWeights | None) -> Mapping[str, object]:
    """For logs: the bundle version and each segment's weights."""
    if learned is None:
        return {}
    return {
        "version": learned.version,
        "segments": {s.name: dict(s.weights) for s in learned.segments},
    }

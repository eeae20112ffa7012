"""What a plan may say about fusion: the strategy names and each strategy's params.

This is the config's half of fusion, so that the schema checks plans without importing
the serving layer; :mod:`recall_engine.serving.fusion` implements the strategies and
checks at import that it implements exactly these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, get_args

import annotated_types as at

from recall_engine.sdk.params import Describe, parse

__all__ = [
    "DEFAULT_COLD_MAX_AGE_DAYS",
    "DEFAULT_COLD_QUOTA",
    "DEFAULT_FUSION",
    "FUSION_PARAMS",
    "NORMALIZATIONS",
    "FusionName",
    "QuotaParams",
    "RRFParams",
    "WeightedSumParams",
    "fusion_params",
]

DEFAULT_FUSION = "rrf"
#: Share of a request's ``k`` fused slots kept for cold items (``[plan] cold_quota``):
#: items with no interactions in the log the catalogue was built from, or first seen
#: less than ``cold_max_age_days`` before its newest interaction. A cap, filled only by
#: cold items that a taking-part channel returned (serving/fusion.py). 0 turns it off.
#: 0.02: the largest measured quota that cost warm items at most 1 % of recall@100 on
#: ml-latest-small (docs/reports/2026-12-05-issue-15-fusion-and-new-items.md, "Cold items,
#: protocols and segments"). Where the
#: build learned a cold gate (runtime/learned_weights.py ``ColdGate``), the history
#: requests its weights cover get the gate's quota when their history is young and none
#: otherwise; this value then serves text, no-history and hand-set requests.
DEFAULT_COLD_QUOTA = 0.02
#: ``[plan] cold_max_age_days``: 0 means "cold" = no interactions at build time.
DEFAULT_COLD_MAX_AGE_DAYS = 0.0
Normalization = Literal["dbsf", "l2", "minmax", "zscore"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
FusionName = Literal["quota", "rrf", "weighted_sum"]


@dataclass(slots=True, frozen=True)
class RRFParams:
    """Weighted reciprocal rank fusion; ``rrf_k`` 60 as in Cormack et al. 2009."""

    rrf_k: Annotated[float, at.Gt(0), Describe("a positive number")] = 60


@dataclass(slots=True, frozen=True)
class WeightedSumParams:
    """Weighted sum of per-channel normalised scores."""

    normalization: Annotated[Normalization, Describe("one of " + ", ".join(NORMALIZATIONS))] = (
        "minmax"
    )


@dataclass(slots=True, frozen=True)
class QuotaParams:
    """Quota / round-robin merge: no params."""


FUSION_PARAMS: dict[str, type] = {
    "quota": QuotaParams,
    "rrf": RRFParams,
    "weighted_sum": WeightedSumParams,
}
assert tuple(FUSION_PARAMS) == get_args(FusionName)


def fusion_params(
    strategy: str, params: Mapping[str, Any], path: str, error: type[ValueError]
) -> dict[str, Any]:
    """``params`` of ``strategy`` checked and completed with defaults; errors start with
    ``path`` (``plan.fusion_params``) and are raised as ``error``."""
    cls = FUSION_PARAMS[strategy]
    known = [f.name for f in fields(cls)]
    for key in params:
        if key not in known:
            raise error(
                f"{path}.{key}: unknown parameter for {strategy!r} "
                f"(known: {', '.join(known) or 'none'})"
            )
    checked: object = parse(cls, params, path, error=error)
    return {name: getattr(checked, name) for name in known}

"""A/B assignment: which experiment variant (and so which plan) serves a user.

A user's bucket is a stable hash of ``"<salt>:<user id>"`` into :data:`BUCKETS` buckets:
the same user gets the same variant on every request, in every process, after every
restart and on every platform (hashlib, never the per-process salted ``hash()``).
Experiments are tried in config order; each one's variants own consecutive bucket
ranges by their traffic shares, and a user whose bucket lies past an experiment's
shares falls through to the next one, then to the default plan.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from dataclasses import dataclass

from recall_engine.config import Config, Experiment, Plan

__all__ = ["BUCKETS", "DEFAULT_VARIANT", "Assigner", "Assignment", "bucket"]

BUCKETS = 10_000
DEFAULT_VARIANT = "default"
# Guards floor() against sums such as 0.1 + 0.19 landing just below the boundary.
_EPS = 1e-6


def bucket(salt: str, user_id: str) -> int:
    """The user's bucket in ``[0, BUCKETS)`` under ``salt``: first 8 bytes of the
    BLAKE2b digest of ``"<salt>:<user id>"`` (UTF-8), big-endian, modulo ``BUCKETS``."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(slots=True, frozen=True)
class Assignment:
    """The variant a request is served under; ``experiment`` is "" outside every
    experiment (variant ``"default"``, the config's default plan)."""

    experiment: str
    variant: str
    plan: Plan


@dataclass(slots=True, frozen=True)
class _Layer:
    salt: str
    ends: tuple[int, ...]  # variant i owns buckets [ends[i-1], ends[i])
    assignments: tuple[Assignment, ...]


class Assigner:
    """Assigns users to variants for one :class:`Config`; build a new one on reload.

    Bucket boundaries and :class:`Assignment` objects are computed once here, so
    :meth:`assign` costs one hash and one bisection per enabled experiment.
    """

    __slots__ = ("default", "_layers")

    def __init__(self, config: Config) -> None:
        self.default = Assignment("", DEFAULT_VARIANT, config.plan)
        self._layers = tuple(_layer(e) for e in config.experiments if e.enabled)

    def assign(self, user_id: str) -> Assignment:
        """The user's assignment; an empty ``user_id`` (anonymous) gets the default."""
        if not user_id:
            return self.default
        for layer in self._layers:
            i = bisect_right(layer.ends, bucket(layer.salt, user_id))
            if i < len(layer.assignments):
                return layer.assignments[i]
        return self.default


def _layer(experiment: Experiment) -> _Layer:
    ends: list[int] = []
    cumulative = 0.0
    for v in experiment.variants:
        cumulative += v.traffic
        ends.append(min(BUCKETS, math.floor(BUCKETS * cumulative + _EPS)))
    assignments = tuple(Assignment(experiment.name, v.name, v.plan) for v in experiment.variants)
    return _Layer(experiment.salt, tuple(ends), assignments)

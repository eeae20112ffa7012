"""Fusion weights the build learned per request segment, stored as a bundle.

``recall-engine build`` fits them on a validation carve of its own training data
(:mod:`recall_engine.offline.fusion_fit`) and writes them as an ordinary artifact
bundle, so they get the same versions, ``current`` pointer and digests as a channel's::

    ARTIFACTS/fusion.learned/<version>/weights.json
    ARTIFACTS/fusion.learned/current

(``fusion.learned`` holds a ``.``, which no channel name may, so it cannot collide with
a channel's folder.) ``weights.json``::

    {"format": 1, "fusion": "rrf",
     "segments": [{"name": "h1-20", "min_history": 1, "max_history": 20,
                   "weights": {"popular": 0.0, "cf": 1.0, "content": 0.1, ...}}, ...]}

A segment is a range of history lengths (the items in the request's history, as the
engine receives it). Segments cover 1..∞ without gaps or overlaps; requests with no
history, or with free text, are not covered by what was learned (the interaction log
has no such requests to learn from) and keep the plan's configured weights.

``"cold"`` (optional; bundles without it keep the plan's cold quota for every request)
says which of those requests get cold slots, and how many::

    "cold": {"quota": 0.1, "recent": 10, "max_age_days": 41.5}

A request whose ``recent`` newest history items are, by their median, at most
``max_age_days`` old (from each item's first interaction to the build log's end) gets
``quota`` of its slots for cold items; the others get none (:class:`ColdGate`). Quota 0:
the fit found no gate where cold slots paid, and learned requests get none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from recall_engine.runtime.artifacts import ArtifactError, ArtifactStore

__all__ = [
    "BUNDLE",
    "ColdGate",
    "FILE",
    "LearnedWeights",
    "Segment",
    "history_age_days",
    "load_learned_weights",
    "save_learned_weights",
]

BUNDLE = "fusion.learned"
FILE = "weights.json"
FORMAT = 1


@dataclass(slots=True, frozen=True)
class Segment:
    """Requests whose history holds ``min_history`` to ``max_history`` items (None:
    no upper bound) get ``weights``."""

    name: str
    min_history: int
    max_history: int | None
    weights: Mapping[str, float]

    def holds(self, history: int) -> bool:
        return history >= self.min_history and (
            self.max_history is None or history <= self.max_history
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "min_history": self.min_history,
            "max_history": self.max_history,
            "weights": dict(self.weights),
        }


@dataclass(slots=True, frozen=True)
class ColdGate:
    """Cold slots for the requests whose taste runs to new items: ``quota`` of the slots
    when the median age of the ``recent`` newest history items is ``max_age_days`` or
    less, none otherwise (module doc; fitted by ``recall_engine.offline.fusion_fit``).
    Users who watch what just came out are where new items are found: on ml-latest-small
    the 10 % of users with the youngest histories held 47 % of the new test items and
    16 % of all test items (docs/reports/2026-12-05-issue-15-fusion-and-new-items.md,
    "cold slots for the users who take new items")."""

    quota: float
    recent: int
    max_age_days: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.quota <= 1.0):
            raise ValueError(f"cold.quota: {self.quota} is not within 0..1")
        if self.recent < 1:
            raise ValueError(f"cold.recent: {self.recent} is not >= 1")
        if not (self.max_age_days >= 0):  # NaN too
            raise ValueError(f"cold.max_age_days: {self.max_age_days} is not >= 0")

    def quota_for(self, history_age_days: float | None) -> float:
        """The cold quota of a request whose history's age (:func:`history_age_days`) is
        ``history_age_days`` (None: the catalogue has no first-seen times: no slots)."""
        if history_age_days is None or history_age_days > self.max_age_days:
            return 0.0
        return self.quota

    def as_json(self) -> dict[str, Any]:
        return {"quota": self.quota, "recent": self.recent, "max_age_days": self.max_age_days}


def history_age_days(ages: Sequence[float] | np.ndarray) -> float:
    """The age of a history: the median of its newest items' ages in days (``ages``,
    those items' :meth:`~recall_engine.runtime.catalog.Catalog.item_ages_days`; an item
    unknown to the build's log is new, age 0; NaN, an id the catalogue does not hold, is
    left out); ``inf`` when no item is left: nothing says the history is young."""
    found = np.asarray(ages, dtype=np.float64)
    found = found[~np.isnan(found)]
    if not len(found):
        return math.inf
    return float(np.median(np.maximum(found, 0.0)))


@dataclass(slots=True, frozen=True)
class LearnedWeights:
    """Per-segment fusion weights, learned for the strategy ``fusion``; ``version`` is
    the bundle's; ``cold``: which learned requests get cold slots (None: the plan's
    quota for all)."""

    fusion: str
    segments: tuple[Segment, ...]
    version: str = ""
    cold: ColdGate | None = None

    def __post_init__(self) -> None:
        _check_segments(self.segments, "segments")

    def for_history(self, history: int) -> Mapping[str, float] | None:
        """The weights of the segment holding ``history`` items, or None (no history)."""
        for seg in self.segments:
            if seg.holds(history):
                return seg.weights
        return None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "fusion": self.fusion,
            "segments": [s.as_json() for s in self.segments],
        }
        if self.cold is not None:
            out["cold"] = self.cold.as_json()
        return out


def save_learned_weights(root: Path, learned: LearnedWeights, **manifest: Any) -> str:
    """Write ``learned`` as a new current ``fusion.learned`` bundle under ``root``, with
    ``manifest`` fields (how it was fitted); returns the version."""
    store = ArtifactStore(root)
    with store.new_version(BUNDLE, make_current=True) as writer:
        (writer.path / FILE).write_text(
            json.dumps(learned.as_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8"
        )
        writer.update(**manifest)
        bundle = writer.commit()
    return bundle.version


def load_learned_weights(root: Path, version: str | None = None) -> LearnedWeights | None:
    """The current learned weights under ``root`` (or that ``version``), or None when
    the build wrote none. Raises :class:`ArtifactError` naming the file for a bundle
    that fails its digests or a ``weights.json`` that does not parse as the format
    above."""
    store = ArtifactStore(root)
    if version is None and store.current(BUNDLE) is None:
        return None
    bundle = store.open(BUNDLE, version)
    where = f"{BUNDLE}/{bundle.version}/{FILE}"
    try:
        raw = json.loads(bundle.file(FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{where}: unreadable ({e})") from e
    try:
        return _parse(raw, bundle.version)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: {e}") from e


def _parse(raw: Any, version: str) -> LearnedWeights:
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if raw.get("format") != FORMAT:
        raise ValueError(f"format {raw.get('format')!r} is not {FORMAT}")
    fusion = raw["fusion"]
    if not isinstance(fusion, str) or not fusion:
        raise ValueError("fusion: not a strategy name")
    segments = []
    for n, s in enumerate(raw["segments"]):
        weights = s["weights"]
        if not isinstance(weights, dict) or not weights:
            raise ValueError(f"segments[{n}].weights: not a non-empty object")
        for ch, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float):
                raise ValueError(f"segments[{n}].weights.{ch}: not a number")
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"segments[{n}].weights.{ch}: {w} is not finite and >= 0")
        hi = s["max_history"]
        segments.append(
            Segment(
                str(s["name"]),
                int(s["min_history"]),
                None if hi is None else int(hi),
                MappingProxyType({str(k): float(v) for k, v in weights.items()}),
            )
        )
    return LearnedWeights(fusion, tuple(segments), version, _parse_cold(raw.get("cold")))


def _parse_cold(raw: Any) -> ColdGate | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("cold: not an object")
    for key in ("quota", "max_age_days"):
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"cold.{key}: not a number")
    recent = raw["recent"]
    if isinstance(recent, bool) or not isinstance(recent, int):
        raise ValueError("cold.recent: not an integer")
    return ColdGate(float(raw["quota"]), recent, float(raw["max_age_days"]))


def _check_segments(segments: Sequence[Segment], where: str) -> None:
    """Segments in order, from 1 item up, no gaps, no overlaps, the last open-ended."""
    if not segments:
        raise ValueError(f"{where}: empty")
    expect = 1
    for n, seg in enumerate(segments):
        if seg.min_history != expect:
            raise ValueError(f"{where}[{n}]: starts at {seg.min_history}, expected {expect}")
        if seg.max_history is None:
            if n != len(segments) - 1:
                raise ValueError(f"{where}[{n}]: open-ended but not the last")
            return
        if seg.max_history < seg.min_history:
            raise ValueError(f"{where}[{n}]: max_history below min_history")
        expect = seg.max_history + 1
    raise ValueError(f"{where}: the last segment must be open-ended (max_history null)")

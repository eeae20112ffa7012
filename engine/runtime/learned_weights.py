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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from recall_engine.runtime.artifacts import ArtifactError, ArtifactStore

__all__ = [
    "BUNDLE",
    "FILE",
    "LearnedWeights",
    "Segment",
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
class LearnedWeights:
    """Per-segment fusion weights, learned for the strategy ``fusion``; ``version`` is
    the bundle's."""

    fusion: str
    segments: tuple[Segment, ...]
    version: str = ""

    def __post_init__(self) -> None:
        _check_segments(self.segments, "segments")

    def for_history(self, history: int) -> Mapping[str, float] | None:
        """The weights of the segment holding ``history`` items, or None (no history)."""
        for seg in self.segments:
            if seg.holds(history):
                return seg.weights
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fusion": self.fusion,
            "segments": [s.as_json() for s in self.segments],
        }


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
    return LearnedWeights(fusion, tuple(segments), version)


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

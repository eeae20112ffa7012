"""``[channels.<name>.params]`` of the ``cf`` channel: defaults, checks and the one
frozen value both the build and the serving side read.

Every error names the key as a user writes it in the config, e.g.
``channels.cf.params.neighbours: expected an integer >= 1, got 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

METHODS = ("auto", "cosine", "ease", "swing")
ENCODERS = ("mean", "attention")
DEVICES = ("cpu", "auto", "cuda")
INDEX_DTYPES = ("f32", "f16", "bf16", "i8")
EASE_MAX_ITEMS = 20_000


@dataclass(slots=True, frozen=True)
class CFParams:
    """The channel's knobs; see the package docstring for what each one does."""

    # modes
    item2item: bool = True
    two_tower: bool = True
    # item-to-item learning
    method: str = "auto"
    neighbours: int = 200
    ease_lambda: float = 1000.0
    ease_max_items: int = EASE_MAX_ITEMS
    cosine_shrink: float = 10.0
    swing_alpha: float = 1.0
    swing_max_users: int = 100
    use_weights: bool = False
    # item-to-item serving
    max_history: int = 100
    half_life: float = 10.0
    half_life_days: float = 0.0
    event_weights: Mapping[str, float] = field(default_factory=dict)
    # two-tower
    dim: int = 64
    sequence_length: int = 20
    encoder: str = "attention"
    epochs: int = 5
    batch_size: int = 512
    learning_rate: float = 2e-3
    temperature: float = 0.1
    logq_correction: bool = True
    sparse_updates: bool = True  # the embedding table's optimiser touches the batch's rows only
    train_threads: int = 1
    encoder_threads: int = 1
    device: str = "cpu"
    index_dtype: str = "f32"
    expansion_search: int = 0
    max_filter_fetch: int = 4096  # a narrow category filter ranks at most this many
    # combining
    item2item_weight: float = 1.0
    two_tower_weight: float = 1.0
    rrf_k: float = 60.0

    def resolved_method(self, n_items: int) -> str:
        """``auto`` is EASE up to ``ease_max_items`` items (a dense n x n inverse), else
        cosine."""
        if self.method != "auto":
            return self.method
        return "ease" if n_items <= self.ease_max_items else "cosine"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["event_weights"] = dict(self.event_weights)
        return out


def _boolean(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _integer(low: int) -> Callable[[Any], int | None]:
    def check(v: Any) -> int | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
        return v if ok else None

    check.__doc__ = f"an integer >= {low}"
    return check


def _number(low: float, *, strict: bool) -> Callable[[Any], float | None]:
    def check(v: Any) -> float | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v) if (v > low if strict else v >= low) else None

    check.__doc__ = f"a number {'>' if strict else '>='} {low:g}"
    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return v if v in options else None

    check.__doc__ = "one of " + ", ".join(repr(o) for o in options)
    return check


def _event_weights(v: Any) -> dict[str, float] | None:
    if not isinstance(v, Mapping):
        return None
    number = _number(0.0, strict=False)
    out = {str(k): number(w) for k, w in v.items()}
    return None if any(w is None for w in out.values()) else out  # type: ignore[misc]


_boolean.__doc__ = "true or false"
_event_weights.__doc__ = "a table of event name -> weight >= 0"

_CHECKS: dict[str, Callable[[Any], Any]] = {
    "item2item": _boolean,
    "two_tower": _boolean,
    "method": _choice(METHODS),
    "neighbours": _integer(1),
    "ease_lambda": _number(0.0, strict=True),
    "ease_max_items": _integer(1),
    "cosine_shrink": _number(0.0, strict=False),
    "swing_alpha": _number(0.0, strict=True),
    "swing_max_users": _integer(2),
    "use_weights": _boolean,
    "max_history": _integer(1),
    "half_life": _number(0.0, strict=False),
    "half_life_days": _number(0.0, strict=False),
    "event_weights": _event_weights,
    "dim": _integer(2),
    "sequence_length": _integer(1),
    "encoder": _choice(ENCODERS),
    "epochs": _integer(1),
    "batch_size": _integer(2),
    "learning_rate": _number(0.0, strict=True),
    "temperature": _number(0.0, strict=True),
    "logq_correction": _boolean,
    "sparse_updates": _boolean,
    "train_threads": _integer(0),
    "encoder_threads": _integer(0),
    "device": _choice(DEVICES),
    "index_dtype": _choice(INDEX_DTYPES),
    "expansion_search": _integer(0),
    "max_filter_fetch": _integer(1),
    "item2item_weight": _number(0.0, strict=False),
    "two_tower_weight": _number(0.0, strict=False),
    "rrf_k": _number(0.0, strict=True),
}
assert set(_CHECKS) == {f.name for f in fields(CFParams)}


def parse_params(channel: str, params: Mapping[str, Any]) -> CFParams:
    """Check ``params`` (the ``[channels.<channel>.params]`` table) and fill defaults.
    Raises ``ValueError`` naming the first bad key."""
    where = f"channels.{channel}.params"
    unknown = sorted(set(params) - set(_CHECKS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(_CHECKS)})")
    values: dict[str, Any] = {}
    for key, value in params.items():
        check = _CHECKS[key]
        checked = check(value)
        if checked is None:
            raise ValueError(f"{where}.{key}: expected {check.__doc__}, got {value!r}")
        values[key] = checked
    out = CFParams(**values)
    if not out.item2item and not out.two_tower:
        raise ValueError(
            f"{where}.item2item: item2item and two_tower are both false; enable at least one mode"
        )
    if out.item2item and out.two_tower and out.item2item_weight + out.two_tower_weight == 0:
        raise ValueError(
            f"{where}.item2item_weight: item2item_weight and two_tower_weight "
            "are both 0; give at least one mode a weight > 0"
        )
    return out

"""``[channels.<name>.params]`` of the ``cf`` channel: the declared ``Params`` class
(defaults and checks in its field types) that both the build and the serving side read.

The engine checks the config's table against :class:`CFParams` at start-up; every error
names the key as a user writes it in the config, e.g.
``channels.cf.params.neighbours: must be a positive integer, got 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, get_args

import annotated_types as at

from recall_engine.sdk.params import (
    KeyError_,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    parse,
)

Method = Literal["auto", "cosine", "ease", "swing"]
Encoder = Literal["mean", "attention"]
Device = Literal["cpu", "auto", "cuda"]
IndexDtype = Literal["f32", "f16", "bf16", "i8"]
METHODS: tuple[str, ...] = get_args(Method)
ENCODERS: tuple[str, ...] = get_args(Encoder)
DEVICES: tuple[str, ...] = get_args(Device)
INDEX_DTYPES: tuple[str, ...] = get_args(IndexDtype)
EASE_MAX_ITEMS = 20_000
# ease.npy is n x n float32: 400 MB at 10,000 items (memory-mapped, shared by workers)
EASE_DENSE_MAX_ITEMS = 10_000

AtLeast2 = Annotated[int, at.Ge(2)]
Fraction = Annotated[float, at.Gt(0.0), at.Lt(0.5)]


@dataclass(slots=True, frozen=True)
class CFParams:
    """The channel's knobs; see the package docstring for what each one does."""

    # modes
    item2item: bool = True
    two_tower: bool = True
    # item-to-item learning
    method: Method = "auto"
    neighbours: PositiveInt = 200
    ease_lambda: PositiveFloat = 1000.0
    ease_max_items: PositiveInt = EASE_MAX_ITEMS
    cosine_shrink: NonNegativeFloat = 10.0
    swing_alpha: PositiveFloat = 1.0
    swing_max_users: AtLeast2 = 100
    use_weights: bool = False
    # item-to-item serving
    max_history: PositiveInt = 100
    half_life: NonNegativeFloat = 10.0
    half_life_days: NonNegativeFloat = 0.0
    event_weights: Mapping[str, NonNegativeFloat] = field(default_factory=dict)
    # two-tower
    dim: AtLeast2 = 64
    sequence_length: PositiveInt = 20
    encoder: Encoder = "attention"
    epochs: PositiveInt = 5
    batch_size: AtLeast2 = 512
    learning_rate: PositiveFloat = 2e-3
    temperature: PositiveFloat = 0.1
    logq_correction: bool = True
    sparse_updates: bool = True  # the embedding table's optimiser touches the batch's rows only
    train_threads: NonNegativeInt = 1
    encoder_threads: NonNegativeInt = 1
    device: Device = "cpu"
    index_dtype: IndexDtype = "f32"
    expansion_search: NonNegativeInt = 0
    max_filter_fetch: PositiveInt = 4096  # a narrow category filter ranks at most this many
    # memory-map the two-tower index (the host's processes share one copy; cf never
    # changes its index while serving) instead of reading it into each process
    memory_map: bool = True
    # combining
    item2item_weight: NonNegativeFloat = 1.0
    two_tower_weight: NonNegativeFloat = 1.0
    rrf_k: PositiveFloat = 60.0
    # the build picks the mix on a validation carve of the training data (.mix)
    auto_mix: bool = True
    ease_dense_max_items: PositiveInt = EASE_DENSE_MAX_ITEMS
    validation_fraction: Fraction = 0.2
    validation_users: PositiveInt = 2000
    validation_k: PositiveInt = 100  # the mix is chosen for recall at this cut-off

    def __post_init__(self) -> None:
        if not self.item2item and not self.two_tower:
            raise KeyError_(
                "item2item", "item2item and two_tower are both false; enable at least one mode"
            )
        if self.item2item and self.two_tower and self.item2item_weight + self.two_tower_weight == 0:
            raise KeyError_(
                "item2item_weight",
                "item2item_weight and two_tower_weight are both 0; give at least one mode "
                "a weight > 0",
            )

    def resolved_method(self, n_items: int) -> str:
        """``auto`` is EASE up to ``ease_max_items`` items (a dense n x n inverse), else
        cosine."""
        if self.method != "auto":
            return self.method
        return "ease" if n_items <= self.ease_max_items else "cosine"

    def dense_ease(self, n_items: int) -> bool:
        """Whether the item-to-item part keeps EASE's whole matrix (``ease.npy``)."""
        return (
            self.item2item
            and self.resolved_method(n_items) == "ease"
            and n_items <= self.ease_dense_max_items
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["event_weights"] = dict(self.event_weights)
        return out


def parse_params(channel: str, params: Mapping[str, Any]) -> CFParams:
    """Check ``params`` (the ``[channels.<channel>.params]`` table) and fill defaults.
    Raises ``ValueError`` naming the bad key."""
    return parse(CFParams, params, f"channels.{channel}.params")

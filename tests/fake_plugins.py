"""Test channel plugins, registered as REAL entry points by conftest.py (a .dist-info
folder on sys.path, exactly what an installed distribution provides)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Gt

from recall_engine.sdk.channel import Candidates, Channel, ChannelContext, ChannelInfo, Query


class FixedChannel(Channel):
    """Returns ``params.items`` (best first) with scores ``params.scores`` or 1/rank."""

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.items = list(ctx.params.get("items", []))
        default = [1.0 / (i + 1) for i in range(len(self.items))]
        self.scores = list(ctx.params.get("scores", default))
        self.calls = 0
        self._lock = threading.Lock()

    def recall(self, query: Query, k: int) -> Candidates:
        with self._lock:
            self.calls += 1
        keep = self.ctx.catalog.filter_mask(self.items, query)
        pairs = [(i, s) for i, s, ok in zip(self.items, self.scores, keep, strict=True) if ok][:k]
        return Candidates([i for i, _ in pairs], np.asarray([s for _, s in pairs], np.float32))

    def info(self) -> ChannelInfo:
        return ChannelInfo(version="fixed-1", item_count=len(self.items))


class HangChannel(FixedChannel):
    """Sleeps ``params.sleep_s`` (default 5) before answering."""

    def recall(self, query: Query, k: int) -> Candidates:
        time.sleep(float(self.ctx.params.get("sleep_s", 5.0)))
        return super().recall(query, k)

    def warmup(self) -> None:
        pass


class BoomChannel(FixedChannel):
    """Raises on every recall (after warm-up)."""

    def recall(self, query: Query, k: int) -> Candidates:
        raise RuntimeError("boom: channel exploded")

    def warmup(self) -> None:
        pass


class CarelessChannel(FixedChannel):
    """Returns ``params.items`` as they are: no catalogue filter, duplicates kept, more
    than ``k`` (what the engine's safety net is for)."""

    def recall(self, query: Query, k: int) -> Candidates:
        return Candidates(list(self.items), np.asarray(self.scores, np.float32))


class FailLoadChannel(FixedChannel):
    def load(self) -> None:
        raise FileNotFoundError("artifacts/faulty/current: missing")


class SlowLoadChannel(FixedChannel):
    """Takes ``params.load_s`` (default 30) to load: a server caught while it loads."""

    def load(self) -> None:
        time.sleep(float(self.ctx.params.get("load_s", 30.0)))
        super().load()


class NotAChannel:
    """Registered as a plugin but lacks the contract."""

    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx


@dataclass(slots=True, frozen=True)
class TypedParams:
    items: tuple[str, ...] = ()
    boost: Annotated[float, Gt(0)] = 1.0


class TypedChannel(FixedChannel):
    """A third-party plugin that declares its params: reports what it was handed."""

    Params = TypedParams

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.typed = ctx.params_as(TypedParams)
        self.handed = ctx.typed_params  # what the engine checked at start-up

    def info(self) -> ChannelInfo:
        return ChannelInfo(
            version="typed-1",
            item_count=len(self.typed.items),
            details={"boost": str(self.typed.boost), "handed": type(self.handed).__name__},
        )


class Opaque:
    """Neither a dataclass nor a model: nothing says what its table may hold."""


class UncheckableParamsChannel(FixedChannel):
    """Declares a Params the schema library cannot check a table against."""

    Params = Opaque

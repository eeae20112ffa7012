"""The channel contract: the plugin author's manual.

A *channel* is one recall source (collaborative filtering, content, LLM embeddings,
popularity, or your own). The engine finds channel plugins through the entry-point
group ``recall_engine.channels``; each entry point names a class (or any callable)
that takes a :class:`ChannelContext` and returns a :class:`Channel`.

Lifecycle, always in this order, driven by the engine::

    channel = Factory(ctx)      # cheap: read ctx, no I/O; may raise ValueError on bad params
    channel.load()              # read artifacts, build indexes, open ONNX sessions
    channel.warmup()            # run representative queries so the first request is fast
    channel.recall(query, k)    # many times, from many threads at once
    channel.close()             # once, after the last in-flight call returned

Reloads build a *new* instance beside the old one (``load`` + ``warmup``), swap it in
atomically, and ``close`` the old one when its in-flight calls have finished; a channel
never has to support reloading itself.

Threading: ``recall``, ``recall_batch`` and the online-update capability
(``upsert_items`` / ``delete_items``, :mod:`recall_engine.sdk.capabilities`) are called
from the engine's worker threads, concurrently. Keep per-request state on the stack;
guard mutable shared state (e.g. an index that takes upserts) with a lock. NumPy,
usearch and ONNX Runtime release the GIL, so real parallelism is available.

Register a plugin in your ``pyproject.toml``::

    [project.entry-points."recall_engine.channels"]
    my_channel = "my_package.channel:MyChannel"

Parameters. Declare the ``[channels.<name>.params]`` table as a class attribute
``Params``: a frozen dataclass whose fields have defaults and constrained types (see
:mod:`recall_engine.sdk.params`). The engine checks the config's table against it at
start-up, before any channel reads an artifact, so a typo stops start-up naming
``channels.<name>.params.<key>``; read the checked object with
``ctx.params_as(Params)`` (``ctx.typed_params``). A plugin without ``Params`` gets the
table unchecked in ``ctx.params`` and checks it in ``__init__``. An operator can keep a
plugin from ever being imported with ``[plugins] blocked = ["name"]`` in the config.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from recall_engine.sdk.params import parse
from recall_engine.sdk.types import Candidates, ChannelInfo, ItemRecord, Query

if TYPE_CHECKING:
    from recall_engine.runtime.artifacts import Bundle
    from recall_engine.runtime.catalog import Catalog

ENTRY_POINT_GROUP = "recall_engine.channels"
P = TypeVar("P")
T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "ENTRY_POINT_GROUP",
    "BuildContext",
    "BuildExecutor",
    "Candidates",
    "Channel",
    "ChannelContext",
    "ChannelInfo",
    "ItemRecord",
    "Query",
]


@dataclass(slots=True, frozen=True)
class ChannelContext:
    """Everything the engine hands a channel at construction.

    ``name`` is the channel's configured name (what weights refer to), ``plugin`` the
    entry-point name, ``params`` the ``[channels.<name>.params]`` table of the config (a
    read-only mapping, as written), ``artifacts`` the channel's artifact folder
    (``ARTIFACTS/<name>`` by default) or ``None`` when the config names none, ``version``
    the artifact version to load (``None``: the one the ``current`` pointer names),
    ``catalog`` the shared item catalogue (titles, text, categories) that filters and
    online updates use, and ``typed_params`` the instance of the plugin's declared
    ``Params`` class the engine checked ``params`` into at start-up (``None`` for a
    plugin that declares none, or a context made by hand: use :meth:`params_as`).
    """

    name: str
    plugin: str
    params: Mapping[str, Any]
    artifacts: Path | None
    catalog: Catalog
    version: str | None = None
    typed_params: Any = None

    def params_as(self, cls: type[P]) -> P:
        """The params as an instance of ``cls`` (the plugin's ``Params``):
        ``typed_params`` when the engine already checked them into one, else ``params``
        checked now. Raises ``ValueError`` naming ``channels.<name>.params.<key>``.
        A context copied with new ``params`` must drop ``typed_params``
        (``dataclasses.replace(ctx, params=..., typed_params=None)``)."""
        if isinstance(self.typed_params, cls):
            return self.typed_params
        return parse(cls, self.params, f"channels.{self.name}.params")

    def open_bundle(self, verify: str = "sha256") -> Bundle:
        """The checked artifact bundle this channel should load (``ctx.version``, or the
        ``current`` pointer's): every file matches its digest in the manifest. Raises
        ``ArtifactError`` naming the file and problem."""
        from recall_engine.runtime.artifacts import ArtifactStore

        if self.artifacts is None:
            raise ValueError(f"channel {self.name!r}: no artifacts folder configured")
        store = ArtifactStore(self.artifacts.parent)
        return store.open(self.artifacts.name, self.version, verify=verify)


class BuildExecutor(Protocol):
    """Where a build's batch work runs: this process (:class:`LocalExecutor`, the
    default) or a Ray cluster (``recall-engine build --ray``,
    :mod:`recall_engine.offline.ray_build`)."""

    def map(self, fn: Callable[[list[T]], R], chunks: Iterable[list[T]]) -> Iterator[R]:
        """``fn`` of every chunk, yielded in chunk order. A remote executor ships ``fn``
        (and what it references: an ``OnnxModel`` travels as its files) to its workers,
        so ``fn`` must be picklable and must not write to anything but its result."""
        ...


class LocalExecutor:
    """In this process, one chunk after another."""

    def map(self, fn: Callable[[list[T]], R], chunks: Iterable[list[T]]) -> Iterator[R]:
        return map(fn, chunks)


@dataclass(slots=True, frozen=True)
class BuildContext:
    """What ``Channel.build`` gets from ``recall-engine build``.

    ``interactions`` is a :class:`recall_engine.offline.data.interactions.Interactions` table
    (the training interactions), ``catalog`` the item catalogue, ``out`` an empty
    staging folder to write artifact files into, ``params`` the channel's
    ``[channels.<name>.params]`` table, ``seed`` for anything random, ``progress``
    whether to show progress bars, and ``executor`` where batch work may run
    (:class:`BuildExecutor`; ``encode_all`` of :mod:`recall_engine.sdk.vector_channel`
    uses it without being asked).
    """

    name: str
    interactions: Any
    catalog: Catalog
    out: Path
    params: Mapping[str, Any]
    seed: int = 0
    progress: bool = False
    executor: BuildExecutor = field(default_factory=LocalExecutor)

    def params_as(self, cls: type[P]) -> P:
        """``params`` checked against ``cls`` (the plugin's ``Params``); raises
        ``ValueError`` naming ``channels.<name>.params.<key>``."""
        return parse(cls, self.params, f"channels.{self.name}.params")


class Channel(abc.ABC):
    """Base class for recall channels. Subclass it and implement :meth:`recall`.

    Everything else has a working default, so a minimal plugin is ``__init__`` +
    ``recall``. Optional capabilities are typed protocols in
    :mod:`recall_engine.sdk.capabilities`: a channel whose artifacts are built from data
    defines the classmethod ``build`` (:class:`~recall_engine.sdk.capabilities.Buildable`),
    one that indexes catalogue changes online defines ``upsert_items`` and
    ``delete_items`` (:class:`~recall_engine.sdk.capabilities.SupportsOnlineUpdates`);
    ``explain`` and ``recall_cold`` are the others.
    """

    #: The engine re-checks every answer (known, allowed by the request's excludes and
    #: categories, no duplicates, at most k) and repairs it: a safety net that costs a
    #: catalogue lookup per candidate on every request. A channel whose own filtering
    #: guarantees the contract, proven by ``recall_engine.sdk.testing``, may set this to
    #: True and skip the net (every built-in channel does).
    trusted_output: ClassVar[bool] = False

    #: The class the ``[channels.<name>.params]`` table is checked against at start-up
    #: (a frozen dataclass with defaults; see the module docstring). ``None``: the
    #: plugin checks ``ctx.params`` itself.
    Params: ClassVar[type | None] = None

    def __init__(self, ctx: ChannelContext) -> None:
        """Keep the context and read the params (``ctx.params_as(self.Params)``, or
        check ``ctx.params`` and raise ``ValueError`` naming the bad key). No I/O here:
        the engine may construct channels it then fails to load.
        """
        self.ctx = ctx

    @property
    def name(self) -> str:
        return self.ctx.name

    def load(self) -> None:  # noqa: B027 - optional hook
        """Read artifacts and build whatever ``recall`` needs. Called once, before any
        other call, on the engine's start-up (or reload) thread. Raise with a message
        naming the file and the problem when an artifact is missing or corrupt."""

    def warmup(self) -> None:
        """Make the first real request fast (touch pages, run encoder batch shapes).
        Called once after :meth:`load`, before health reports SERVING. The default runs
        one empty query."""
        self.recall(Query(user_id="__warmup__"), 10)

    def accepts(self, query: Query) -> bool:
        """Whether this channel can say anything about ``query``. Return False (e.g. a
        history-based channel given no history) and the engine reports the channel as
        SKIPPED instead of calling :meth:`recall`. Must be cheap; called per request."""
        return True

    @abc.abstractmethod
    def recall(self, query: Query, k: int) -> Candidates:
        """Return up to ``k`` candidates for ``query``, best first.

        Called concurrently from worker threads under a per-channel timeout; a channel
        that raises is reported as ERROR for this request only. Must honour
        ``query.exclude`` and ``query.categories``, never return duplicates, and only
        return ids of items it knows.
        """

    def recall_batch(self, queries: Sequence[Query], k: int) -> list[Candidates]:
        """Answer many queries at once (BatchRecall, evaluation). The default loops
        over :meth:`recall`; override when batching is cheaper (one ONNX or index call
        for the whole batch)."""
        return [self.recall(q, k) for q in queries]

    def info(self) -> ChannelInfo:
        """Version, item count and free-form details for ``ListChannels``."""
        return ChannelInfo()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called once, after the last in-flight call returned."""

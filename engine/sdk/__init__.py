"""The plugin SDK: everything a channel plugin imports, and what carries a stability promise.

* :mod:`recall_engine.sdk.types` - the value types (``Query``, ``Candidates``,
  ``ItemRecord``, ``ChannelInfo``); imports nothing from the engine.
* :mod:`recall_engine.sdk.channel` - the ``Channel`` contract (the plugin author's manual).
* :mod:`recall_engine.sdk.capabilities` - optional capabilities as typed protocols:
  ``Buildable`` (artifacts made by ``recall-engine build``), ``SupportsOnlineUpdates``,
  ``Explainable`` (evidence for ``RecallRequest.explain``), ``RecallsColdItems`` (new
  items alone, for the fusion's cold slots).
* :mod:`recall_engine.sdk.params` - typed plugin parameters, checked at start-up.
* :mod:`recall_engine.sdk.vector_channel` - the shared base for channels that serve
  item vectors from a usearch index.
* :mod:`recall_engine.sdk.testing` - the contract as tests: subclass ``ChannelContract``
  (or ``VectorChannelContract``) in your plugin's pytest suite to prove your channel keeps
  every promise of the contract. Imported on its own (it is not loaded by
  ``import recall_engine.sdk``); it runs under pytest, the ``[test]`` extra.

The package ships ``py.typed``: type checkers read these annotations.
"""

from recall_engine.sdk.capabilities import (
    Buildable,
    Explainable,
    RecallsColdItems,
    SupportsOnlineUpdates,
)
from recall_engine.sdk.channel import ENTRY_POINT_GROUP, BuildContext, Channel, ChannelContext
from recall_engine.sdk.types import (
    Candidates,
    ChannelInfo,
    ColdItems,
    Evidence,
    ItemRecord,
    NearItem,
    Query,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BuildContext",
    "Buildable",
    "Candidates",
    "Channel",
    "ChannelContext",
    "ChannelInfo",
    "ColdItems",
    "Evidence",
    "Explainable",
    "ItemRecord",
    "NearItem",
    "Query",
    "RecallsColdItems",
    "SupportsOnlineUpdates",
]

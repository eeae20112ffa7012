"""A Python client for recall-engine's ``RecallService``.

It needs only grpcio and protobuf (none of the server's dependencies are imported)::

    from recall_engine.client import RecallClient, RecallQuery

    with RecallClient("10.0.0.5:50061,10.0.0.5:50062") as client:
        result = client.recall(RecallQuery(user_id="u42", history=["item-0001"], k=10))
        for c in result.candidates:
            print(c.item_id, c.score, [(h.channel, h.rank) for h in c.hits])

What it adds over the generated stub: typed values (plain frozen dataclasses) with
every channel's provenance; a deadline on every call by default (1 s for ``recall``,
5 s for ``batch_recall`` and ``list_channels``) that covers its retries; retries of
UNAVAILABLE, and of RESOURCE_EXHAUSTED after the wait the server asks for, with a
jittered exponential backoff and a retry budget; ``round_robin`` over several addresses
or a DNS name; TLS and a bearer token. :class:`AsyncRecallClient` is the same for
asyncio.
"""

from __future__ import annotations

from recall_engine.client._aio import AsyncRecallClient
from recall_engine.client._channel import DEFAULT_OPTIONS, TLS
from recall_engine.client._model import (
    DEFAULT_K,
    BatchItem,
    Candidate,
    CandidateExplanation,
    ChannelEvidence,
    ChannelHit,
    ChannelInfo,
    ChannelReport,
    ChannelStatus,
    FusionTerm,
    NearItem,
    RecallCallError,
    RecallQuery,
    RecallResult,
    ResponseExplanation,
    ServerChannels,
)
from recall_engine.client._retry import NO_RETRY, RetryBudget, RetryEvent, RetryPolicy
from recall_engine.client._settings import (
    BATCH_TIMEOUT_S,
    LIST_TIMEOUT_S,
    RECALL_TIMEOUT_S,
    ClientBase,
)
from recall_engine.client._sync import RecallClient

__all__ = [
    "BATCH_TIMEOUT_S",
    "DEFAULT_K",
    "DEFAULT_OPTIONS",
    "LIST_TIMEOUT_S",
    "NO_RETRY",
    "RECALL_TIMEOUT_S",
    "TLS",
    "AsyncRecallClient",
    "BatchItem",
    "Candidate",
    "CandidateExplanation",
    "ChannelEvidence",
    "ChannelHit",
    "ChannelInfo",
    "ChannelReport",
    "ChannelStatus",
    "ClientBase",
    "FusionTerm",
    "NearItem",
    "RecallCallError",
    "RecallClient",
    "RecallQuery",
    "RecallResult",
    "ResponseExplanation",
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "ServerChannels",
]

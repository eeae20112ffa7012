"""Proto request -> validated domain input. Every rejection names the field."""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from recall_engine._proto import recall_pb2 as _pb
from recall_engine.config.schema import ServerConfig
from recall_engine.sdk.types import Query
from recall_engine.serving.errors import FailedPrecondition, InvalidArgument


@dataclass(slots=True, frozen=True)
class RecallInput:
    query: Query
    k: int
    request_id: str
    weight_override: Mapping[str, float] | None = None


def recall_input(
    req: _pb.RecallRequest, limits: ServerConfig, channels: Collection[str]
) -> RecallInput:
    """Validate ``req`` against the server limits and the configured channel names."""
    k = req.k
    if k == 0:
        raise InvalidArgument("k", "must be at least 1")
    if k > limits.max_k:
        raise InvalidArgument("k", f"must be at most {limits.max_k} (server.max_k), got {k}")
    history = tuple(req.history_item_ids)
    if len(history) > limits.max_history:
        raise InvalidArgument(
            "history_item_ids",
            f"{len(history)} items is over the limit of {limits.max_history} (server.max_history)",
        )
    if any(not h for h in history):
        raise InvalidArgument("history_item_ids", "contains an empty item id")
    events = tuple(req.history_events)
    if events and len(events) != len(history):
        raise InvalidArgument(
            "history_events",
            f"has {len(events)} entries, must be empty or match history_item_ids ({len(history)})",
        )
    stamps = tuple(req.history_timestamps)
    if stamps and len(stamps) != len(history):
        raise InvalidArgument(
            "history_timestamps",
            f"has {len(stamps)} entries, must be empty or match history_item_ids ({len(history)})",
        )
    if len(req.exclude_item_ids) > limits.max_exclude:
        raise InvalidArgument(
            "exclude_item_ids",
            f"{len(req.exclude_item_ids)} items is over the "
            f"limit of {limits.max_exclude} (server.max_exclude)",
        )
    text = req.text.strip()
    if not req.user_id and not history and not text:
        raise InvalidArgument("user_id", "give a user_id, a history (history_item_ids) or text")
    exclude = set(req.exclude_item_ids)
    if not req.include_history:
        exclude.update(history)
    query = Query(
        user_id=req.user_id,
        history=history,
        events=events,
        timestamps=stamps,
        text=text,
        exclude=frozenset(exclude),
        categories=frozenset(req.categories),
    )
    override = _override(req, limits, channels) if req.weight_override else None
    return RecallInput(query, k, req.request_id or uuid.uuid4().hex, override)


def _override(
    req: _pb.RecallRequest, limits: ServerConfig, channels: Collection[str]
) -> dict[str, float]:
    if not limits.allow_weight_override:
        raise FailedPrecondition(
            "weight_override: not allowed by this server "
            "(set server.allow_weight_override = true to debug)"
        )
    out: dict[str, float] = {}
    for name in sorted(req.weight_override):
        w = req.weight_override[name]
        field = f"weight_override.{name}"
        if name not in channels:
            known = ", ".join(sorted(channels))
            raise InvalidArgument(field, f"unknown channel {name!r} (channels: {known})")
        if not math.isfinite(w) or w < 0:
            raise InvalidArgument(field, f"must be finite and >= 0, got {w}")
        out[name] = float(w)
    return out

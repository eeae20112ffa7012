"""Proto request -> validated domain input. Every rejection names the field.

Caps (``[server]``): ``max_k``, ``max_history``, ``max_exclude``, ``max_categories``,
``max_id_chars`` for every id and category (an id is a key, not a document: a 1 MB
``user_id`` would otherwise be copied into every log line), and ``max_text_chars`` for
free text, which is cut rather than refused (the encoders truncate to a few hundred
tokens anyway; cutting first keeps the tokenizer from chewing on megabytes)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from recall_engine._proto import recall_pb2 as _pb
from recall_engine.config import ServerConfig
from recall_engine.sdk.types import Query
from recall_engine.serving.errors import FailedPrecondition, InvalidArgument


@dataclass(slots=True, frozen=True)
class RecallInput:
    query: Query
    k: int
    request_id: str
    weight_override: Mapping[str, float] | None = None
    explain: bool = False  # RecallRequest.explain: evidence after fusion (serving/explain.py)


def recall_input(
    req: _pb.RecallRequest, limits: ServerConfig, channels: Collection[str]
) -> RecallInput:
    """Validate ``req`` against the server limits and the configured channel names."""
    _check_ids(req, limits.max_id_chars)
    if len(req.categories) > limits.max_categories:
        raise InvalidArgument(
            "categories",
            f"{len(req.categories)} categories is over the limit of "
            f"{limits.max_categories} (server.max_categories)",
        )
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
    text = req.text[: limits.max_text_chars].strip()
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
    return RecallInput(query, k, req.request_id or uuid.uuid4().hex, override, req.explain)


def _check_ids(req: _pb.RecallRequest, cap: int) -> None:
    """Every id-like string at most ``cap`` characters; the error names the field (and
    the index for repeated ones) and never echoes the value."""
    for name in ("user_id", "request_id"):
        value = getattr(req, name)
        if len(value) > cap:
            raise InvalidArgument(
                name, f"{len(value)} characters is over the limit of {cap} (server.max_id_chars)"
            )
    for name in ("history_item_ids", "exclude_item_ids", "categories", "history_events"):
        values = getattr(req, name)
        if max(map(len, values), default=0) <= cap:  # the common case, at C speed
            continue
        for i, value in enumerate(values):
            if len(value) > cap:
                raise InvalidArgument(
                    f"{name}[{i}]",
                    f"{len(value)} characters is over the limit of {cap} (server.max_id_chars)",
                )
    for name in req.weight_override:
        if len(name) > cap:
            raise InvalidArgument(
                "weight_override", f"a key of {len(name)} characters is over the limit of {cap}"
            )


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

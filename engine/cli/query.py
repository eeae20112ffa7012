"""``recall-engine query``: call a running server's Recall through
:mod:`recall_engine.client` and print the candidates."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from recall_engine.client import (
    TLS,
    CandidateExplanation,
    ChannelEvidence,
    ChannelReport,
    RecallCallError,
    RecallClient,
    RecallQuery,
    RecallResult,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--addr",
        default="127.0.0.1:50051",
        help="server HOST:PORT; several comma-separated (round_robin), or a DNS name",
    )
    p.add_argument("--user", default="", help="user id")
    p.add_argument("--history", default="", help="comma-separated item ids, newest last")
    p.add_argument("--text", default="", help="free text")
    p.add_argument("-k", type=int, default=10, help="candidates to return")
    p.add_argument("--exclude", default="", help="comma-separated item ids to exclude")
    p.add_argument("--categories", default="", help="comma-separated category filter")
    p.add_argument(
        "--weights",
        default="",
        help="debug weight override, e.g. cf=1,llm=0 (needs allow_weight_override)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--explain",
        action="store_true",
        help="also print why each candidate is there: the fusion arithmetic and the "
        "channels' evidence (nearest history items, text, popularity rank)",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, help="deadline in seconds, retries included"
    )
    p.add_argument("--tls-ca", default="", help="PEM file of the roots that sign the server")
    p.add_argument("--tls-cert", default="", help="client certificate (PEM), for mutual TLS")
    p.add_argument("--tls-key", default="", help="client private key (PEM), for mutual TLS")
    p.add_argument("--tls", action="store_true", help="TLS with the system's roots")
    p.add_argument(
        "--tls-server-name",
        default="",
        metavar="NAME",
        help="the name to check the server's certificate against when it differs from "
        "--addr's host (e.g. a certificate for 'localhost' reached via 127.0.0.1); "
        "implies TLS",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("RECALL_ENGINE_TOKEN", ""),
        help="sent as 'authorization: Bearer <token>' (for a gateway; "
        "default: $RECALL_ENGINE_TOKEN)",
    )


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _tls(args: argparse.Namespace) -> TLS | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return TLS(
        ca=args.tls_ca or None,
        cert=args.tls_cert or None,
        key=args.tls_key or None,
        server_name=args.tls_server_name or None,
    )


def _weights(text: str) -> dict[str, float]:
    """``--weights cf=1,llm=0`` as a dict; raises ``ValueError`` naming the flag."""
    weights = {}
    for pair in _csv(text):
        name, eq, value = (x.strip() for x in pair.partition("="))
        try:
            if not (name and eq):
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise ValueError(
                f"--weights: expected NAME=WEIGHT[,NAME=WEIGHT...] (e.g. cf=1,llm=0), got {pair!r}"
            ) from None
    return weights


#: The exit status after the reader of stdout went away (``query ... | head -1``): what
#: a shell reports for a process that SIGPIPE ended, as it would for ``cat`` or ``grep``.
BROKEN_PIPE_STATUS = 128 + 13


def run(args: argparse.Namespace) -> int:
    try:
        query = RecallQuery(
            user_id=args.user,
            history=_csv(args.history),
            text=args.text,
            k=args.k,
            exclude=_csv(args.exclude),
            categories=_csv(args.categories),
            weight_override=_weights(args.weights),
            explain=args.explain,
        )
        with RecallClient(args.addr, tls=_tls(args), token=args.token or None) as client:
            result = client.recall(query, timeout=args.timeout)
    except RecallCallError as e:
        tries = f" (after {e.attempts} attempts)" if e.attempts > 1 else ""
        print(f"{e.code().name}: {e.details()}{tries}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # bad --weights or --addr, an unreadable --tls-* file
        print(e, file=sys.stderr)
        return 2
    try:
        _print(result, args)
        sys.stdout.flush()  # here, so that a closed pipe is seen here, not at exit
    except BrokenPipeError:
        # Python's recipe (see the signal module's docs): point stdout at devnull so
        # that the flush at interpreter exit does not fail (and print) again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    return 0


def _print(result: RecallResult, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(_as_dict(result), indent=2))
        return
    print(
        f"variant={result.experiment or '-'}/{result.variant} fusion={result.fusion} "
        f"request_id={result.request_id}"
    )
    for ch in result.channels:
        print(
            f"  channel {ch.channel:<10} {ch.status.name:<8} {ch.latency_ms:7.2f} ms  "
            f"returned={ch.returned} weight={ch.weight:g} {ch.error}"
        )
    for i, c in enumerate(result.candidates):
        hits = " ".join(f"{h.channel}#{h.rank}" for h in c.hits)
        print(f"{i + 1:4d}. {c.item_id:<16} {c.score:.5f}  {hits}")
        if c.explanation is not None:
            for line in _explanation_lines(c.explanation):
                print(f"        {line}")
    if result.explanation is not None:
        for name, error in result.explanation.channel_errors.items():
            print(f"  no evidence from {name}: {error}")


def _explanation_lines(why: CandidateExplanation) -> list[str]:
    quota = "  (placed by the cold-item quota)" if why.placed_by_cold_quota else ""
    lines = [f"fusion: {why.formula}{quota}"]
    lines += [f"{e.channel}: {_evidence_text(e)}" for e in why.evidence]
    return lines


def _evidence_text(e: ChannelEvidence) -> str:
    parts = []
    if e.nearest:
        near = ", ".join(f"{n.item_id} {n.similarity:.4g}" for n in e.nearest)
        parts.append(f"near {near} ({e.similarity})")
    if e.text_similarity is not None:
        parts.append(f"text cosine {e.text_similarity:.3f} (weight {e.text_weight:g})")
    if e.two_tower_score is not None:
        parts.append(f"two-tower {e.two_tower_score:.3f}")
    if e.popularity_rank:
        parts.append(f"popularity rank {e.popularity_rank} (score {e.popularity_score:g})")
    return "; ".join(parts) or "no evidence"


def _as_dict(result: RecallResult) -> dict[str, Any]:
    def channel(ch: ChannelReport) -> dict[str, Any]:
        return {
            "channel": ch.channel,
            "status": ch.status.name,
            "latency_ms": ch.latency_ms,
            "returned": ch.returned,
            "weight": ch.weight,
            "error": ch.error,
        }

    out: dict[str, Any] = {
        "experiment": result.experiment,
        "variant": result.variant,
        "fusion": result.fusion,
        "request_id": result.request_id,
        "channels": [channel(ch) for ch in result.channels],
        "candidates": [
            {
                "item_id": c.item_id,
                "score": c.score,
                "channels": {h.channel: {"rank": h.rank, "score": h.score} for h in c.hits},
                **({"explanation": asdict(c.explanation)} if c.explanation else {}),
            }
            for c in result.candidates
        ],
    }
    if result.explanation is not None:
        why = result.explanation
        out["explanation"] = {
            "fusion": why.fusion,
            "rrf_k": why.rrf_k,
            "normalization": why.normalization,
            "cold_quota": why.cold_quota,
            "cold_slots": why.cold_slots,
            "channel_errors": dict(why.channel_errors),
        }
    return out

"""``recall-engine query``: call a running server's Recall and print the candidates."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from recall_engine._proto import recall_pb2, recall_pb2_grpc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--addr", default="127.0.0.1:50051", help="server HOST:PORT")
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
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def run(args: argparse.Namespace) -> int:
    weights = {}
    for pair in _csv(args.weights):
        name, _, value = pair.partition("=")
        weights[name] = float(value)
    req = recall_pb2.RecallRequest(
        user_id=args.user,
        history_item_ids=_csv(args.history),
        text=args.text,
        k=args.k,
        exclude_item_ids=_csv(args.exclude),
        categories=_csv(args.categories),
        weight_override=weights,
    )
    with grpc.insecure_channel(args.addr) as channel:
        stub = recall_pb2_grpc.RecallServiceStub(channel)
        try:
            resp = stub.Recall(req, timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(resp), indent=2))
        return 0
    hits: dict[int, list[str]] = {}
    for ch in resp.channels:
        for i, r in zip(ch.candidate_index, ch.rank, strict=True):
            hits.setdefault(i, []).append(f"{ch.channel}#{r}")
    print(
        f"variant={resp.experiment or '-'}/{resp.variant} fusion={resp.fusion} "
        f"request_id={resp.request_id}"
    )
    for ch in resp.channels:
        status = recall_pb2.ChannelStatus.Name(ch.status).removeprefix("CHANNEL_STATUS_")
        print(
            f"  channel {ch.channel:<10} {status:<8} {ch.latency_ms:7.2f} ms  "
            f"returned={ch.returned} weight={ch.weight:g} {ch.error}"
        )
    for i, (item, score) in enumerate(zip(resp.item_ids, resp.scores, strict=True)):
        print(f"{i + 1:4d}. {item:<16} {score:.5f}  {' '.join(hits.get(i, []))}")
    return 0

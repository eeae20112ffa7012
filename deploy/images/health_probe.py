"""Exit 0 when a gRPC health service reports SERVING, 1 otherwise (the image's
HEALTHCHECK and build-cpu.sh's smoke test; Kubernetes probes speak gRPC health
themselves).

    health_probe.py [--addr 127.0.0.1:50051] [--service NAME] [--timeout 2]

``--service ""`` (the default) is readiness: SERVING once every enabled channel has
loaded and warmed up, NOT_SERVING while loading and while draining. ``--service
liveness`` is SERVING for as long as the process answers
(``recall_engine.serving.server.LIVENESS_SERVICE``). Plaintext only, like Kubernetes'
gRPC probes.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default="127.0.0.1:50051", help="server HOST:PORT")
    p.add_argument("--service", default="", help='health service name ("": readiness)')
    p.add_argument("--timeout", type=float, default=2.0, help="deadline in seconds")
    args = p.parse_args(argv)
    request = health_pb2.HealthCheckRequest(service=args.service)
    with grpc.insecure_channel(args.addr) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{args.addr} {args.service!r}: {e.code().name} {e.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{args.addr} {args.service!r}: {status}")
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())

"""A gRPC client target that balances every call over several server addresses.

gRPC keeps one long-lived HTTP/2 connection per address, so balancing by connection
(``serve --processes N`` sharing a port through SO_REUSEPORT, or an L4 load balancer)
is only as even as the kernel's hash of a handful of connections: with 16 connections
over two processes the split was 69 % / 31 % in one benchmark run, and the busier
process saturates long before the pair does. Listing every process's own address
(``server.worker_port_base``) under gRPC's ``round_robin`` policy sends call n to
address n mod N instead. Any gRPC client can do the same; in Python::

    grpc.insecure_channel("ipv4:127.0.0.1:50061,127.0.0.1:50062",
                          options=[("grpc.lb_policy_name", "round_robin")])
"""

from __future__ import annotations

from recall_engine.client._channel import target_of

ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")


def balanced_target(addrs: str) -> tuple[str, list[tuple[str, str]]]:
    """``addrs`` ("HOST:PORT" or several, comma-separated) as a gRPC target and the
    channel options that go with it. One address is returned as is; several become an
    ``ipv4:`` / ``ipv6:`` address list (host names resolved here) under round_robin
    (:func:`recall_engine.client._channel.target_of`, which the Python client uses too).
    Raises ``ValueError`` naming the bad entry (``addr: ...``)."""
    try:
        target = target_of(addrs)
    except ValueError as e:
        raise ValueError(str(e).replace("addresses:", "addr:", 1)) from None
    several = target.startswith(("ipv4:", "ipv6:")) and "," in target
    return target, [ROUND_ROBIN] if several else []

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

import ipaddress
import socket

ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")


def balanced_target(addrs: str) -> tuple[str, list[tuple[str, str]]]:
    """``addrs`` ("HOST:PORT" or several, comma-separated) as a gRPC target and the
    channel options that go with it. One address is returned as is; several become an
    ``ipv4:`` / ``ipv6:`` address list (host names resolved here) under round_robin.
    Raises ``ValueError`` naming the bad entry."""
    parts = [a.strip() for a in addrs.split(",") if a.strip()]
    if not parts:
        raise ValueError("addr: give HOST:PORT")
    if len(parts) == 1:
        return parts[0], []
    v4, v6 = [], []
    for part in parts:
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"addr: {part!r} is not HOST:PORT")
        ip = _resolve(host, part)
        if ip.version == 4:
            v4.append(f"{ip}:{port}")
        else:
            v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError(f"addr: mixes IPv4 and IPv6 addresses ({addrs!r})")
    scheme, listed = ("ipv4", v4) if v4 else ("ipv6", v6)
    return f"{scheme}:{','.join(listed)}", [ROUND_ROBIN]


def _resolve(host: str, part: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"addr: cannot resolve {part!r} ({e})") from None
    found = [ipaddress.ip_address(entry[4][0]) for entry in info]
    return next((ip for ip in found if ip.version == 4), found[0])  # IPv4 when there is one

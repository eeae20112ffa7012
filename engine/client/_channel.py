"""Where the client connects and how: the gRPC target, the load-balancing policy, TLS
credentials and the channel options. Shared by the sync and the async client.

gRPC keeps one long-lived HTTP/2 connection per server address, so a client that
connects to one address sends every call down one connection. Under ``round_robin``
the channel connects to every address it is given and sends call n to address
n mod N. The addresses come from one of:

- several ``HOST:PORT`` (e.g. every process of ``serve --processes N`` on its own
  ``server.worker_port_base`` port): listed as an ``ipv4:``/``ipv6:`` target, host
  names resolved once, here;
- one DNS name (a Kubernetes headless Service, whose name resolves to every pod): gRPC's
  DNS resolver gives every address and re-resolves when connections drop, so pods that
  come and go are followed;
- a full gRPC target (``dns:///...``, ``ipv4:...``, ``unix:...``), used as it is.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")

#: Channel options every client sets (``options`` given to a client are added after
#: these, so they win): reconnect after a lost connection within 0.2 s at first, backing
#: off to 5 s (gRPC's own default starts at 1 s and grows to 120 s, slow for a service a
#: ranking call waits on), and answers up to 64 MiB (a large BatchRecall).
DEFAULT_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

PemSource = bytes | str | Path


@dataclass(slots=True, frozen=True)
class TLS:
    """TLS for the client's channel. Each of ``ca``, ``cert`` and ``key`` is PEM bytes or
    a file path. ``ca``: the roots that sign the server's certificate (None: the system's
    roots). ``cert`` + ``key``: a client certificate, for a server that requires one
    (``tls.client_ca`` in the server's config). ``server_name``: the name to check the
    server's certificate against when it differs from the target's host (e.g. when
    connecting to IP addresses)."""

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: give both cert and key for a client certificate, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca),
            private_key=_pem(self.key),
            certificate_chain=_pem(self.cert),
        )


def _pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def target_of(addresses: str | Sequence[str]) -> str:
    """``addresses`` as one gRPC target. A string may list several, comma-separated.
    Raises ``ValueError`` naming a bad entry."""
    parts = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise ValueError("addresses: give HOST:PORT, several, or a DNS name")
    if len(parts) == 1:
        only = parts[0]
        if not only.startswith(_SCHEMES):
            _split(only)  # check it now rather than as a gRPC error on the first call
        return only
    v4, v6 = [], []
    for part in parts:
        if part.startswith(_SCHEMES):
            raise ValueError(f"addresses: {part!r}: a gRPC target cannot be one of several")
        host, port = _split(part)
        ip = _resolve(host, part)
        if ip.version == 4:
            v4.append(f"{ip}:{port}")
        else:
            v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError(f"addresses: mixes IPv4 and IPv6 ({', '.join(parts)})")
    return f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"


#: The health service name the client watches under ``round_robin``: the server reports
#: it NOT_SERVING while it loads its channels and while it drains before shutting down.
HEALTH_SERVICE = "recall_engine.v1.RecallService"


def channel_options(
    load_balancing: str, extra: Sequence[tuple[str, int | str]]
) -> list[tuple[str, int | str]]:
    """The channel's options. Under ``round_robin`` the channel also watches each
    server's health (gRPC client-side health checking, gRFC A17): a server that says
    NOT_SERVING (loading its channels after a restart, or draining before it stops)
    gets no calls while another serves, and with none serving a call that waits for a
    connection waits until one does. A server without the health service counts as
    serving (A17)."""
    if load_balancing not in ("round_robin", "pick_first"):
        raise ValueError(f"load_balancing: 'round_robin' or 'pick_first', got {load_balancing!r}")
    service_config: dict[str, object] = {"loadBalancingConfig": [{load_balancing: {}}]}
    if load_balancing == "round_robin":
        service_config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    return [
        *DEFAULT_OPTIONS,
        ("grpc.lb_policy_name", load_balancing),
        ("grpc.service_config", json.dumps(service_config)),
        *extra,
    ]


def tls_options(tls: TLS | None) -> list[tuple[str, int | str]]:
    if tls is not None and tls.server_name:
        return [("grpc.ssl_target_name_override", tls.server_name)]
    return []


def _split(part: str) -> tuple[str, str]:
    host, sep, port = part.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"addresses: {part!r} is not HOST:PORT")
    return host, port


def _resolve(host: str, part: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"addresses: cannot resolve {part!r} ({e})") from None
    found = [ipaddress.ip_address(entry[4][0]) for entry in info]
    return next((ip for ip in found if ip.version == 4), found[0])  # IPv4 when there is one

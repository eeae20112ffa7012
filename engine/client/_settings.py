"""What the sync and the async client share: their settings, checked once, and the
start of every call's attempts."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import grpc

from recall_engine.client._channel import TLS, channel_options, target_of, tls_options
from recall_engine.client._retry import Attempts, RetryBudget, RetryEvent, RetryPolicy, seconds

#: Default deadlines, in seconds, each covering every attempt of one call and the waits
#: between them. A recall is answered in milliseconds (each channel has its own timeout,
#: 100 ms by default), so one second leaves room for a few retries while a server
#: restarts without holding a ranking request much longer than its own budget.
RECALL_TIMEOUT_S = 1.0
#: A batch runs its requests a few at a time on the server.
BATCH_TIMEOUT_S = 5.0
#: ListChannels reads what is loaded; nothing is computed.
LIST_TIMEOUT_S = 5.0

RECALL = "/recall_engine.v1.RecallService/Recall"
BATCH_RECALL = "/recall_engine.v1.RecallService/BatchRecall"
LIST_CHANNELS = "/recall_engine.v1.RecallService/ListChannels"
#: Probed, after UNAVAILABLE, to learn when there is a connection again (any answer,
#: even UNIMPLEMENTED from a proxy, says there is one).
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class ClientBase:
    """The settings of :class:`RecallClient` and :class:`AsyncRecallClient`.

    ``addresses``: ``"HOST:PORT"``, several (a list or comma-separated: every call goes
    to the next, under ``round_robin``), a DNS name that resolves to every server (a
    headless Service), or any gRPC target (``dns:///...``, ``ipv4:...``, ``unix:...``).
    ``tls``: see :class:`TLS`; plaintext without. ``token``: sent as ``authorization:
    Bearer <token>`` on every call. The recall service itself checks no token (only
    AdminService does); this is for a gateway or proxy in front of it that does (send it
    over TLS only). ``timeout`` / ``batch_timeout``: a call's default deadline in
    seconds, covering every attempt and the waits between them (RECALL_TIMEOUT_S = 1 s,
    BATCH_TIMEOUT_S = 5 s; ListChannels 5 s); each method takes ``timeout=`` too.
    ``retry``: which failures are retried and how often (:class:`RetryPolicy`; pass
    ``NO_RETRY`` for none). ``budget``: the :class:`RetryBudget` the client's calls
    draw on; each client makes its own unless one is given to share.
    ``load_balancing``: ``round_robin`` (default) or ``pick_first``. ``wait_for_ready``:
    wait, within the deadline, for a connection instead of failing at once with
    UNAVAILABLE while there is none. ``options``: more gRPC channel options (after
    :data:`DEFAULT_OPTIONS`, so they win). ``metadata``: sent on every call.
    ``on_retry``: called with a :class:`RetryEvent` before each retry's wait. ``seed``:
    seeds the backoff jitter.

    A failed call raises :class:`RecallCallError` (a ``grpc.RpcError``)."""

    def __init__(
        self,
        addresses: str | Sequence[str] = "127.0.0.1:50051",
        *,
        tls: TLS | None = None,
        token: str | None = None,
        timeout: float = RECALL_TIMEOUT_S,
        batch_timeout: float = BATCH_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        load_balancing: str = "round_robin",
        wait_for_ready: bool = False,
        options: Sequence[tuple[str, int | str]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        on_retry: Callable[[RetryEvent], None] | None = None,
        seed: int | None = None,
    ) -> None:
        for name, value in (("timeout", timeout), ("batch_timeout", batch_timeout)):
            if seconds(name, value) <= 0:
                raise ValueError(f"{name}: must be a positive number of seconds, got {value!r}")
        self._target = target_of(addresses)
        self._tls = tls
        self._options = channel_options(load_balancing, [*tls_options(tls), *options])
        md = list(metadata)
        if token:
            md.append(("authorization", f"Bearer {token}"))
        self._metadata: tuple[tuple[str, str], ...] = tuple(md)
        self._timeout = timeout
        self._batch_timeout = batch_timeout
        self._retry = retry if retry is not None else RetryPolicy()
        self._budget = budget if budget is not None else RetryBudget()
        self._wait_for_ready = wait_for_ready
        self._on_retry = on_retry
        self._rng = random.Random(seed)
        self._open()

    def _open(self) -> None:
        """Make the channel and stub (the sync and the async client differ here)."""
        raise NotImplementedError

    @property
    def target(self) -> str:
        """The gRPC target the client connects to."""
        return self._target

    @property
    def budget(self) -> RetryBudget:
        return self._budget

    def _credentials(self) -> grpc.ChannelCredentials | None:
        return self._tls.credentials() if self._tls is not None else None

    def _attempts(self, method: str, timeout: float | None, default: float) -> Attempts:
        return Attempts(
            method,
            default if timeout is None else timeout,
            self._retry,
            self._budget,
            self._rng,
            self._on_retry,
        )

"""When to try a call again, and how long to wait first. Shared by the sync and the
async client: both run the same :class:`Attempts` state and only sleep differently.

What is retried (and nothing else):

- ``UNAVAILABLE``: the server could not be reached or is restarting; nothing ran.
- ``RESOURCE_EXHAUSTED`` *with* a retry hint: the server shed the call before starting
  it (admission control) and said when to come back, in the ``grpc-retry-pushback-ms``
  trailer (``retry-after-ms`` is read too). Without a hint it is something that will
  not pass by itself (a message over a size limit) and is not retried.

The wait before retry n is drawn uniformly from ``[0, min(max_backoff_s,
initial_backoff_s * multiplier ** (n - 1))]`` (gRPC's retry design, A6); a server hint
replaces it. A retry is never started when the wait would end past the call's deadline,
and each attempt is given only the time left. A retry budget (gRPC's
``retryThrottling``) stops retries from multiplying the load on a struggling server.

After ``UNAVAILABLE`` the retry first waits for a connection, within the time left (a
health check sent with ``wait_for_ready``: answered at once when there is one). Once a
connection fails, gRPC does not try it again until its reconnect backoff has passed
(0.2 s at first, then longer), and every attempt made meanwhile fails at once: retries
spaced by milliseconds would spend every attempt, and a token of the budget each, in the
first tenth of a second of a restart. Waiting instead, a call is carried across a
restart that ends before its deadline. When no connection comes in time the call fails
with ``UNAVAILABLE`` (reason ``deadline``), never ``DEADLINE_EXCEEDED``, which stays the
code of a server that ran out of time. Under ``round_robin`` the channel also watches the
servers' health (``_channel.channel_options``), so a server that is loading counts as no
connection; to a ``pick_first`` client it answers ``UNAVAILABLE`` itself, and that is
retried after the backoff.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from recall_engine.client._model import RecallCallError

#: Trailers that carry the server's retry hint, in milliseconds (engine/serving/errors.py
#: sends both on a shed request).
PUSHBACK_KEYS = ("grpc-retry-pushback-ms", "retry-after-ms")

_NEVER_RETRIED = "not_retryable"


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """How many attempts a call may make and how they are spaced.

    ``max_attempts`` counts the first one (1 turns retries off). ``min_attempt_s``: an
    attempt is not started with less time than this left before the deadline."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    min_attempt_s: float = 0.005

    def __post_init__(self) -> None:
        n = self.max_attempts
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_attempts: must be a whole number >= 1, got {n!r}")
        for name in ("initial_backoff_s", "max_backoff_s", "min_attempt_s"):
            value = seconds(name, getattr(self, name))
            if value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        if seconds("multiplier", self.multiplier) < 1:
            raise ValueError(f"multiplier: must be >= 1, got {self.multiplier!r}")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """The jittered wait before retry number ``retry`` (1 for the first retry)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return rng.uniform(0.0, cap)


def seconds(name: str, value: object) -> float:
    """``value`` as a finite float, or ``ValueError`` naming ``name`` (a string, None or
    NaN given for a number of seconds is a caller's mistake worth a clear message)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    return float(value)


#: No retries at all.
NO_RETRY = RetryPolicy(max_attempts=1)


class RetryBudget:
    """A token bucket shared by every call of a client (or several clients), as gRPC's
    ``retryThrottling``: it starts full at ``max_tokens``; each retryable failure takes
    one token, each success puts back ``token_ratio``; retries are allowed only while
    more than half the tokens are left. In a steady state retries are thus limited to
    about ``token_ratio`` of the calls, and when the server is down for good the client
    sends one attempt per call instead of ``max_attempts``. Thread-safe."""

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        if seconds("max_tokens", max_tokens) <= 0:
            raise ValueError(f"max_tokens: must be > 0, got {max_tokens!r}")
        if seconds("token_ratio", token_ratio) <= 0:
            raise ValueError(f"token_ratio: must be > 0, got {token_ratio!r}")
        self.max_tokens = float(max_tokens)
        self.token_ratio = float(token_ratio)
        self._tokens = self.max_tokens
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self._tokens

    def on_success(self) -> None:
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def on_failure(self) -> bool:
        """Take a token for a retryable failure; return whether a retry is allowed."""
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1.0)
            return self._tokens > self.max_tokens / 2


@dataclass(slots=True, frozen=True)
class RetryEvent:
    """Passed to a client's ``on_retry`` hook before it waits ``delay_s`` and retries:
    the method, the attempt that failed (1-based), its status and the server's hint."""

    method: str
    attempt: int
    code: grpc.StatusCode
    details: str
    delay_s: float
    pushback_ms: int | None


Metadata = Sequence[tuple[str, str | bytes]]


def pushback_ms(trailers: Metadata) -> int | None:
    """The server's retry hint in milliseconds, None when it sent none. A hint that is
    negative or not a number means "do not retry" (gRPC's rule) and reads as -1."""
    for key, value in trailers:
        if key in PUSHBACK_KEYS:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            try:
                ms = int(text.strip())
            except ValueError:
                return -1
            return ms if ms >= 0 else -1
    return None


def plain_metadata(md: Iterable[tuple[str, str | bytes]] | None) -> tuple[tuple[str, str], ...]:
    out = []
    for key, value in md or ():
        out.append((key, value.decode("latin-1") if isinstance(value, bytes) else value))
    return tuple(out)


class Attempts:
    """One logical call's attempts: the deadline, the count, and after a failed attempt
    either the wait before the next or the error to raise. Not shared between calls."""

    def __init__(
        self,
        method: str,
        timeout: float,
        policy: RetryPolicy,
        budget: RetryBudget | None,
        rng: random.Random,
        on_retry: Callable[[RetryEvent], None] | None,
    ) -> None:
        if seconds("timeout", timeout) <= 0:
            raise ValueError(f"timeout: must be a positive number of seconds, got {timeout!r}")
        self.method = method
        self.deadline = time.monotonic() + timeout
        self.policy = policy
        self.budget = budget
        self.rng = rng
        self.on_retry = on_retry
        self.made = 0
        #: before the next attempt, wait for a connection (after UNAVAILABLE; module doc)
        self.wait_for_connection = False
        self._last: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    def next_timeout(self) -> float:
        """Start an attempt: the seconds it may take (the time left to the deadline)."""
        self.made += 1
        return max(self.deadline - time.monotonic(), 0.001)

    def succeeded(self) -> None:
        if self.budget is not None:
            self.budget.on_success()

    def failed(self, code: grpc.StatusCode, details: str, trailers: Metadata) -> float:
        """After a failed attempt: the seconds to wait before the next, or raise
        :class:`RecallCallError` when there is to be none."""
        md = plain_metadata(trailers)
        hint = pushback_ms(md)
        self._last = (code, details or "", md)

        def stop(reason: str) -> RecallCallError:
            return RecallCallError(
                code, details or "", trailing_metadata=md, attempts=self.made, reason=reason
            )

        retryable = code is grpc.StatusCode.UNAVAILABLE or (
            code is grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None
        )
        if not retryable:
            raise stop(_NEVER_RETRIED)
        allowed = self.budget.on_failure() if self.budget is not None else True
        if hint is not None and hint < 0:
            raise stop("pushback")
        if self.made >= self.policy.max_attempts:
            raise stop("attempts")
        if not allowed:
            raise stop("budget")
        delay = hint / 1000 if hint is not None else self.policy.backoff_s(self.made, self.rng)
        if time.monotonic() + delay + self.policy.min_attempt_s >= self.deadline:
            raise stop("deadline")
        if self.on_retry is not None:
            self.on_retry(RetryEvent(self.method, self.made, code, details or "", delay, hint))
        self.wait_for_connection = code is grpc.StatusCode.UNAVAILABLE
        return delay

    def connection_wait_s(self) -> float:
        """How long the wait for a connection may take: until an attempt would no longer
        be started (``min_attempt_s`` before the deadline)."""
        return max(self.deadline - time.monotonic() - self.policy.min_attempt_s, 0.0)

    def no_connection(self) -> RecallCallError:
        """The error of a call whose wait for a connection ran out of time."""
        assert self._last is not None, "called after a failed attempt"
        code, details, md = self._last
        return RecallCallError(
            code,
            f"{details} (waited for a connection until the call's deadline)",
            trailing_metadata=md,
            attempts=self.made,
            reason="deadline",
        )

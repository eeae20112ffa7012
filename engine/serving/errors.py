"""Domain errors and their one mapping onto gRPC status codes (DESIGN decision 9)."""

from __future__ import annotations

import grpc


class RecallError(Exception):
    """Base for errors that become a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(RecallError, ValueError):
    """Bad input. The message starts with the offending field name."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class FailedPrecondition(RecallError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RecallError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RecallError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(RecallError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(ResourceExhausted):
    """Load shed: the engine is at its bound on requests in flight. Nothing was started;
    the client may retry after ``retry_after_ms`` (sent as trailing metadata)."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """The retry hint: ``grpc-retry-pushback-ms`` is what gRPC clients with a retry
        policy obey; ``retry-after-ms`` is the same figure for everyone else."""
        ms = str(self.retry_after_ms)
        return (("grpc-retry-pushback-ms", ms), ("retry-after-ms", ms))


class Unauthenticated(RecallError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RecallError):
    code = grpc.StatusCode.PERMISSION_DENIED


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for any exception raised while serving a call."""
    if isinstance(exc, RecallError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"

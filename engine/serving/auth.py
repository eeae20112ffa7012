"""AdminService authentication and audit, as a server interceptor.

The interceptor runs on the call's metadata before gRPC deserialises the request: an
unauthenticated caller gets its status without the server parsing (or even decoding)
what it sent, so a 4 MB ``UpsertItems`` from a stranger costs nothing but the bytes on
the wire. Every admin call and every failed authentication writes one ``admin_audit``
log line (method, peer, outcome, status); the token itself never reaches a log.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from recall_engine.observability import metrics
from recall_engine.observability.logs import get_logger

log = get_logger(__name__)

ADMIN_PREFIX = "/recall_engine.v1.AdminService/"

Metadata = Sequence[tuple[str, str | bytes]]


class AuthError(Exception):
    """Why a caller is refused, with the status code it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_token(metadata: Metadata | None, expected: str | None) -> None:
    """``authorization: Bearer <token>`` must match the configured admin token.

    Raises :class:`AuthError`: FAILED_PRECONDITION when no token is configured (the admin
    API is off), UNAUTHENTICATED without the header, PERMISSION_DENIED for a wrong token.
    The comparison takes the same time whatever the token's prefix."""
    if not expected:
        raise AuthError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "admin API disabled: set admin.token in the config or the "
            "RECALL_ENGINE_ADMIN_TOKEN environment variable",
        )
    given = next((v for k, v in metadata or () if k == "authorization"), None)
    if isinstance(given, bytes):
        given = given.decode("utf-8", "replace")
    if not given:
        raise AuthError(
            grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
        )
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "wrong admin token")


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    """Guards every AdminService method; other services pass straight through.

    ``token`` is called per admin call, so a config reload that changes the token takes
    effect at once."""

    def __init__(self, token: Callable[[], str | None]) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if not method.startswith(ADMIN_PREFIX):
            return await continuation(handler_call_details)
        name = method[len(ADMIN_PREFIX) :]
        try:
            check_token(handler_call_details.invocation_metadata, self._token())
        except AuthError as e:
            return _refuse(name, e)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return _audited(name, handler)


def _refuse(method: str, error: AuthError) -> grpc.RpcMethodHandler:
    # No request_deserializer: the request reaches us as raw bytes and is never parsed.
    async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> None:
        metrics.ADMIN_AUTH_FAILURES.labels(method=method, code=error.code.name).inc()
        log.warning(
            "admin_audit",
            method=method,
            peer=context.peer(),
            outcome="refused",
            code=error.code.name,
            reason=error.message,
        )
        await context.abort(error.code, error.message)

    return grpc.unary_unary_rpc_method_handler(refuse)


def _audited(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return await inner(request, context)
        except BaseException:
            status = context.code()
            code = status.name if status is not None else "UNKNOWN"
            raise
        finally:
            log.info(
                "admin_audit",
                method=method,
                peer=context.peer(),
                outcome="ok" if code == "OK" else "failed",
                code=code,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )

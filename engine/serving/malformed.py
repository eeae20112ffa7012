"""Requests that do not parse get ``INVALID_ARGUMENT``, not ``UNKNOWN``.

gRPC deserialises a request before any servicer code runs; when protobuf refuses the
bytes (invalid UTF-8 in a string field, a truncated message) the call would end with
``UNKNOWN`` and a Python exception class in the details. This interceptor parses on
gRPC's behalf and answers such calls with ``INVALID_ARGUMENT`` naming the message type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from recall_engine.observability.logs import get_logger

log = get_logger(__name__)


@dataclass(slots=True, frozen=True)
class _Malformed:
    method: str


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Runs on every call, so each method's wrapped handler is made once and reused (the
    services registered on a server do not change once it has started)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = _wrap(method, handler)
        return wrapped


def _wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with a parse that cannot raise and a behaviour that answers a request
    that did not parse with INVALID_ARGUMENT."""
    parse = handler.request_deserializer
    inner = handler.unary_unary

    def safe_parse(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's bad input
            return _Malformed(method)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            log.warning("malformed_request", method=method, peer=context.peer())
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method.rsplit('/', 1)[-1]}: the request does not parse as the "
                "method's message (invalid UTF-8 in a string field, or truncated bytes)",
            )
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=safe_parse, response_serializer=handler.response_serializer
    )

"""A server span per RPC, continuing the caller's W3C trace context (``traceparent``
metadata): the gRPC end of :mod:`recall_engine.observability.tracing`, installed by
:func:`recall_engine.serving.server.create_server` only while tracing is on.

Written here rather than taken from ``opentelemetry-instrumentation-grpc``: its asyncio
server interceptor builds a new handler and wraps the servicer context in a proxy on
every call, and records every ``context.abort`` (how each INVALID_ARGUMENT or shed
RESOURCE_EXHAUSTED call ends) as an exception with its traceback. This one wraps each
method's handler once, reads the call's status from the context when it ends, and marks
the span an error only for the codes that are the server's fault (OpenTelemetry's RPC
conventions). Health checks and reflection are not traced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from recall_engine.observability import tracing

__all__ = ["TracingInterceptor"]

_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Outermost interceptor: its span covers the others (an admin call refused by the
    auth interceptor is traced with its status too)."""

    def __init__(self) -> None:
        # method -> (the handler wrapped, its wrapped handler); the interceptors below may
        # hand out a new handler per call (auth refusals), which is then wrapped anew
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(_UNTRACED):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _traced(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _traced(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary
    service, _, name = method.lstrip("/").partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not tracing.ENABLED:  # turned off while the server runs
            return await inner(request, context)
        metadata = context.invocation_metadata()
        with tracing.server_span(method.lstrip("/"), metadata, attributes) as span:
            failure: BaseException | None = None
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise  # an answer with a status code: the code is on the context
            except BaseException as e:
                failure = e
                raise
            finally:
                if span.is_recording():
                    _end_status(span, context, failure)

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _end_status(
    span: Any, context: grpc.aio.ServicerContext, failure: BaseException | None
) -> None:
    """The call's gRPC status on its span: what the servicer set or aborted with; an
    exception that escaped the servicer (gRPC answers UNKNOWN) or cancelled it is
    recorded."""
    if failure is not None:
        cancelled = isinstance(failure, asyncio.CancelledError)
        code = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.UNKNOWN
        if not cancelled:
            span.record_exception(failure)
        tracing.set_rpc_status(span, code.value[0], f"{type(failure).__name__}: {failure}")
        return
    code = context.code()
    number = code.value[0] if isinstance(code, grpc.StatusCode) else int(code or 0)
    tracing.set_rpc_status(span, number, context.details() or None)

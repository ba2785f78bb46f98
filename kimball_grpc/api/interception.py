"""What Kimball's server interceptors share: the continuation they are given, the service
a call is for, and a handler that refuses a call with one status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

# What an interceptor calls to find the handler of a call (and of the interceptors after it).
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


def service_of(details: grpc.HandlerCallDetails) -> str:
    """The full name of the service a call is for, e.g. ``kimball.v1.KimballService``."""
    return details.method.rsplit("/", 2)[-2]


def refusing_handler(
    handler: grpc.RpcMethodHandler | None,
    code: grpc.StatusCode,
    message: str,
    before: Callable[[grpc.aio.ServicerContext], None] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``code``, after
    ``before(context)`` if given (which sees the call's peer)."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        if before is not None:
            before(context)
        await context.abort(code, message)

    async def refuse_stream(
        request: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        # A generator, as streaming responses are served: the status then goes out the
        # same way as a streaming handler's own (a plain coroutine here raced the client
        # and could end as INTERNAL).
        if before is not None:
            before(context)
        await context.abort(code, message)
        yield

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse_stream)

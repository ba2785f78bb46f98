"""What Kimball's server interceptors share: the continuation they are given, the service
a call is for, a handler wrapped in another of its kind, and a handler that refuses a call
with one status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# What an interceptor calls to find the handler of a call (and of the interceptors after it).
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]
Behavior = Callable[..., Any]  # a handler's function: (request or requests, context)
# Wraps a behavior, told whether the call streams its requests and its responses.
Wrap = Callable[[Behavior, bool, bool], Behavior]
Serializer = Callable[[Any], Any] | None


def service_of(details: grpc.HandlerCallDetails) -> str:
    """The full name of the service a call is for, e.g. ``kimball.v1.KimballService``."""
    return details.method.rsplit("/", 2)[-2]


def rewrapped(
    handler: grpc.RpcMethodHandler,
    wrap: Wrap,
    request_deserializer: Serializer,
    response_serializer: Serializer,
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind whose behavior is ``wrap(behavior, request_streaming,
    response_streaming)``, with the (de)serializers given."""
    if handler.unary_unary:
        behavior = wrap(handler.unary_unary, False, False)
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer, response_serializer
        )
    if handler.unary_stream:
        behavior = wrap(handler.unary_stream, False, True)
        return grpc.unary_stream_rpc_method_handler(
            behavior, request_deserializer, response_serializer
        )
    if handler.stream_unary:
        behavior = wrap(handler.stream_unary, True, False)
        return grpc.stream_unary_rpc_method_handler(
            behavior, request_deserializer, response_serializer
        )
    behavior = wrap(handler.stream_stream, True, True)
    return grpc.stream_stream_rpc_method_handler(
        behavior, request_deserializer, response_serializer
    )


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

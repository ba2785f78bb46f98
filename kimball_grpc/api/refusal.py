"""A method handler that ends every call with one status: how interceptors refuse calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc


def refusing_handler(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``code``."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(
        request: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        # A generator, as streaming responses are served: the status then goes out the
        # same way as a streaming handler's own (a plain coroutine here raced the client
        # and could end as INTERNAL).
        await context.abort(code, message)
        yield

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse_stream)

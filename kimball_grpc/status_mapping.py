"""The one place where requests are decoded and domain errors become gRPC statuses.

An interceptor wraps every handler of Kimball's own services: it parses the
request bytes itself (a malformed message is INVALID_ARGUMENT, not INTERNAL)
and turns a ``KimballError`` into its declared status code, with the message
and a ``google.rpc.ErrorInfo`` whose metadata names the offending parameter.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from kimball_grpc.errors import InvalidArgument, KimballError

log = logging.getLogger(__name__)

ERROR_DOMAIN = "kimball"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_for(error: KimballError) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, message, serialized google.rpc.Status) for a domain error."""
    code = grpc.StatusCode[error.grpc_code]
    info = error_details_pb2.ErrorInfo(
        reason=type(error).__name__, domain=ERROR_DOMAIN, metadata=error.details
    )
    detail = AnyMessage()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=error.message, details=[detail])
    return code, error.message, status.SerializeToString()


async def _abort(context: grpc.aio.ServicerContext, error: KimballError) -> None:
    code, message, details = status_for(error)
    await context.abort(code, message, trailing_metadata=((STATUS_DETAILS_KEY, details),))


def _decode(deserializer: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return deserializer(data)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed protobuf message: {exc}") from None


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Decodes requests and maps domain errors for the services named in ``services``."""

    def __init__(self, services: set[str]) -> None:
        self._services = services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.rsplit("/", 2)[-2] if handler else ""
        if handler is None or service not in self._services:
            return handler
        decode = handler.request_deserializer
        serialize = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary_unary(handler.unary_unary, decode), None, serialize
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _unary_stream(handler.unary_stream, decode), None, serialize
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _stream_unary(handler.stream_unary, decode), None, serialize
            )
        return handler


def _unary_unary(behavior: Callable, decode: Callable) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(_decode(decode, data), context)
        except KimballError as error:
            await _abort(context, error)

    return handle


def _unary_stream(behavior: Callable, decode: Callable) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(_decode(decode, data), context):
                yield response
        except KimballError as error:
            await _abort(context, error)

    return handle


def _stream_unary(behavior: Callable, decode: Callable) -> Callable:
    async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async def decoded() -> AsyncIterator[Any]:
            async for data in requests:
                yield _decode(decode, data)

        try:
            return await behavior(decoded(), context)
        except KimballError as error:
            await _abort(context, error)

    return handle

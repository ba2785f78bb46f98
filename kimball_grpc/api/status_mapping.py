"""The one place where requests are decoded and domain errors become gRPC statuses.

An interceptor wraps every handler of Kimball's own services: it parses the
request bytes itself (a malformed message is INVALID_ARGUMENT, not INTERNAL)
and turns a ``KimballError`` into its declared status code, with the message
and a ``google.rpc.ErrorInfo`` whose metadata names the offending parameter.
Knowing how each call ended, it also reports the method, code and duration
(request metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from kimball_grpc.codec.error_details import STATUS_DETAILS_KEY
from kimball_grpc.core.errors import InvalidArgument, KimballError

log = logging.getLogger(__name__)

ERROR_DOMAIN = "kimball"
Observer = Callable[[str, str, float], None]  # (method, status code name, seconds)


def status_for(error: KimballError) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, message, serialized google.rpc.Status) for a domain error."""
    code = grpc.StatusCode[error.grpc_code]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.details
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

    def __init__(self, services: set[str], observe: Observer) -> None:
        self._services = services
        self._observe = observe

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
        timed = _Timed(self._observe, handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary_unary(handler.unary_unary, decode, timed), None, serialize
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _unary_stream(handler.unary_stream, decode, timed), None, serialize
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _stream_unary(handler.stream_unary, decode, timed), None, serialize
            )
        return grpc.stream_stream_rpc_method_handler(
            _stream_stream(handler.stream_stream, decode, timed), None, serialize
        )


class _Timed:
    """Reports one call's method, final status code and duration when it ends."""

    def __init__(self, observe: Observer, method: str) -> None:
        self._observe = observe
        self._method = method

    @contextmanager
    def call(self) -> Iterator[list[str]]:
        """Yields a one-item list holding the code; a handler sets it on a domain error."""
        code = ["OK"]
        start = time.perf_counter()
        try:
            yield code
        except asyncio.CancelledError:
            code[0] = "CANCELLED"
            raise
        except BaseException:
            if code[0] == "OK":
                code[0] = "INTERNAL"
            raise
        finally:
            self._observe(self._method, code[0], time.perf_counter() - start)


def _unary_unary(behavior: Callable, decode: Callable, timed: _Timed) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        with timed.call() as code:
            try:
                return await behavior(_decode(decode, data), context)
            except KimballError as error:
                code[0] = error.grpc_code
                await _abort(context, error)

    return handle


def _unary_stream(behavior: Callable, decode: Callable, timed: _Timed) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with timed.call() as code:
            try:
                async for response in behavior(_decode(decode, data), context):
                    yield response
            except KimballError as error:
                code[0] = error.grpc_code
                await _abort(context, error)

    return handle


async def _decoded(decode: Callable, requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for data in requests:
        yield _decode(decode, data)


def _stream_unary(behavior: Callable, decode: Callable, timed: _Timed) -> Callable:
    async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        with timed.call() as code:
            try:
                return await behavior(_decoded(decode, requests), context)
            except KimballError as error:
                code[0] = error.grpc_code
                await _abort(context, error)

    return handle


def _stream_stream(behavior: Callable, decode: Callable, timed: _Timed) -> Callable:
    async def handle(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        with timed.call() as code:
            try:
                async for response in behavior(_decoded(decode, requests), context):
                    yield response
            except KimballError as error:
                code[0] = error.grpc_code
                await _abort(context, error)

    return handle

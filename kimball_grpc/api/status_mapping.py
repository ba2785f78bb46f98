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
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from kimball_grpc.api.interception import Continuation, service_of
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
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service = service_of(details) if handler else ""
        if handler is None or service not in self._services:
            return handler
        one = partial(_decode, handler.request_deserializer)
        many = partial(_decoded_stream, handler.request_deserializer)
        serialize = handler.response_serializer
        timed = _Timed(self._observe, details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _one_response(handler.unary_unary, one, timed), None, serialize
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, one, timed), None, serialize
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _one_response(handler.stream_unary, many, timed), None, serialize
            )
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, many, timed), None, serialize
        )


def _streaming(behavior: Callable, decoded: Callable, timed: _Timed) -> Callable:
    """A handler of a call that streams its responses, in the style of ``behavior``: a
    generator of responses, or a coroutine that writes them (``context.write``, as gRPC's
    health ``Watch``), which must stay one (gRPC refuses writes beside a generator)."""
    if inspect.isasyncgenfunction(behavior):
        return _response_stream(behavior, decoded, timed)
    return _one_response(behavior, decoded, timed)


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


def _one_response(behavior: Callable, decoded: Callable, timed: _Timed) -> Callable:
    """A handler of a call with one response (unary or client-streaming requests)."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with timed.call() as code:
            try:
                return await behavior(decoded(request), context)
            except KimballError as error:
                code[0] = error.grpc_code
                await _abort(context, error)

    return handle


def _response_stream(behavior: Callable, decoded: Callable, timed: _Timed) -> Callable:
    """A handler of a call that streams its responses."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with timed.call() as code:
            try:
                async for response in behavior(decoded(request), context):
                    yield response
            except KimballError as error:
                code[0] = error.grpc_code
                await _abort(context, error)

    return handle


async def _decoded_stream(decode: Callable, requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for data in requests:
        yield _decode(decode, data)

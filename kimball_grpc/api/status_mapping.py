"""The one place where requests are decoded and domain errors become gRPC statuses.

An interceptor wraps every handler of Kimball's own services: it parses the
request bytes itself (a malformed message is INVALID_ARGUMENT, not INTERNAL)
and turns a ``KimballError`` into its declared status code, with the message
and a ``google.rpc.ErrorInfo`` whose metadata names the offending parameter.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from kimball_grpc.api.interception import Behavior, Continuation, rewrapped, service_of
from kimball_grpc.codec.error_details import STATUS_DETAILS_KEY
from kimball_grpc.config.logs import current_call
from kimball_grpc.core.errors import InvalidArgument, KimballError

log = logging.getLogger(__name__)

ERROR_DOMAIN = "kimball"


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
    trailers: tuple[tuple[str, str | bytes], ...] = ((STATUS_DETAILS_KEY, details),)
    call = current_call.get()
    if call is not None:  # these trailers replace those set before: the request id stays
        trailers += call.trailers
    await context.abort(code, message, trailing_metadata=trailers)


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
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service = service_of(details) if handler else ""
        if handler is None or service not in self._services:
            return handler
        one = partial(_decode, handler.request_deserializer)
        many = partial(_decoded_stream, handler.request_deserializer)

        def wrap(behavior: Behavior, streaming_requests: bool, streaming_responses: bool):
            decoded = many if streaming_requests else one
            # A call that streams its responses from a generator; or from a coroutine that
            # writes them (``context.write``, as gRPC's health ``Watch``), which must stay
            # one (gRPC refuses writes beside a generator).
            if streaming_responses and inspect.isasyncgenfunction(behavior):
                return _response_stream(behavior, decoded)
            return _one_response(behavior, decoded)

        return rewrapped(handler, wrap, None, handler.response_serializer)


def _one_response(behavior: Callable, decoded: Callable) -> Callable:
    """A handler of a call with one response (unary or client-streaming requests)."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(decoded(request), context)
        except KimballError as error:
            await _abort(context, error)

    return handle


def _response_stream(behavior: Callable, decoded: Callable) -> Callable:
    """A handler of a call that streams its responses."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(decoded(request), context):
                yield response
        except KimballError as error:
            await _abort(context, error)

    return handle


async def _decoded_stream(decode: Callable, requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for data in requests:
        yield _decode(decode, data)

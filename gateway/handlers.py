"""The handlers of the route table's routes: a request translated, the gRPC call made
with the caller's ``Authorization`` header as metadata (so one token check serves both
APIs), and the answer rendered in the original API's JSON shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from google.protobuf.message import Message

from gateway.http_status import http_status
from gateway.json_steps import json_in_steps
from gateway.route_table import Answer, NdjsonBody, Route
from gateway.translate import (
    STREAM_TYPES,
    ClientError,
    request_message,
    require_content_type,
    streamed_messages,
)
from kimball_grpc.api.auth import UNAUTHORIZED_MESSAGE, TokenChecker
from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.codec.error_details import error_metadata
from kimball_grpc.core.steps import between_requests

CALL_TIMEOUT_SECONDS = 30.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Metadata = tuple[tuple[str, str], ...]
Serve = Callable[[web.Request, Metadata], Awaitable[web.StreamResponse]]
Channel = grpc.aio.Channel | LocalChannel


def error_response(status: int, what: str, **details: object) -> web.Response:
    """The original API's error body: ``{"error": {"what": ..., details}}``."""
    return web.json_response({"error": {"what": what, **details}}, status=status)


def unauthorized() -> web.Response:
    """The original API's answer to a missing or wrong token."""
    return web.json_response({"error": UNAUTHORIZED_MESSAGE}, status=401)


def failed_call_response(error: grpc.aio.AioRpcError) -> web.Response:
    """A failed gRPC call as the original API's error: the status through one table, the
    ErrorInfo's metadata (which parameter) beside the message."""
    if error.code() is grpc.StatusCode.UNAUTHENTICATED:
        return unauthorized()
    details = error_metadata(error.trailing_metadata())
    return error_response(http_status(error.code()), error.details() or "", **details)


def guarded(checker: TokenChecker | None, serve: Serve) -> Handler:
    """``serve`` for callers with a valid token, given the header as gRPC metadata.

    The token is checked before the body is read, so a caller without one learns nothing
    more; the gRPC server checks the forwarded header again with the same TokenChecker.
    A ``ClientError`` becomes its error body, a failed call its status.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        if checker is not None and not checker.allows(authorization):
            return unauthorized()
        metadata: Metadata = (("authorization", authorization),) if authorization else ()
        try:
            return await serve(request, metadata)
        except ClientError as error:
            return error_response(error.status, error.what, **error.details)
        except grpc.aio.AioRpcError as error:
            return failed_call_response(error)

    return handle


async def _answer(answer: Answer | None, response: Message) -> web.Response:
    if answer is None:
        return web.Response(status=204)
    text = await between_requests(json_in_steps(answer.render(response)))
    return web.Response(text=text, content_type="application/json")


def route_handler(route: Route, channel: Channel, checker: TokenChecker | None) -> Handler:
    """The handler of ``route``, calling its gRPC method over ``channel``."""
    rule = route.rule
    serializers = {
        "request_serializer": rule.request_type.SerializeToString,
        "response_deserializer": rule.response_type.FromString,
    }
    if isinstance(route.request, NdjsonBody):
        stream_call = channel.stream_unary(rule.grpc_method, **serializers)

        async def serve_stream(request: web.Request, metadata: Metadata) -> web.StreamResponse:
            require_content_type(request, STREAM_TYPES)
            refused: list[ClientError] = []  # a bad line ends the stream; said after the call
            messages = streamed_messages(route, request, refused)
            response = await stream_call(messages, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
            if refused:
                accepted = route.answer.render(response) if route.answer is not None else {}
                return error_response(400, refused[0].what, **refused[0].details, **accepted)
            return await _answer(route.answer, response)

        return guarded(checker, serve_stream)

    call = channel.unary_unary(rule.grpc_method, **serializers)

    async def serve(request: web.Request, metadata: Metadata) -> web.StreamResponse:
        message = await request_message(route, request)
        response = await call(message, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        return await _answer(route.answer, response)

    return guarded(checker, serve)

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
from gateway.request_json import plain_events
from gateway.route_table import Answer, NdjsonBody, Route
from gateway.translate import (
    STREAM_TYPES,
    BodyClock,
    ClientError,
    message_of,
    request_data,
    require_content_type,
    streamed_messages,
)
from kimball_grpc.api.auth import UNAUTHORIZED_MESSAGE, TokenChecker
from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.codec.error_details import error_metadata
from kimball_grpc.config.logs import REQUEST_ID_HEADER, current_call
from kimball_grpc.core.steps import between_requests
from kimball_grpc.outbound.channels import is_over_receive_limit

CALL_TIMEOUT_SECONDS = 30.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Metadata = tuple[tuple[str, str], ...]
Serve = Callable[[web.Request, Metadata], Awaitable[web.StreamResponse]]
Channel = grpc.aio.Channel | LocalChannel


def error_response(status: int, what: str, **details: object) -> web.Response:
    """The original API's error body: ``{"error": {"what": ..., details}}``."""
    return web.json_response({"error": {"what": what, **details}}, status=status)


def client_error_response(error: ClientError, **more: object) -> web.Response:
    """A request refused by the gateway; after a body too slow (408) the connection is
    closed, as the rest of that body cannot be told from a next request."""
    response = error_response(error.status, error.what, **error.details, **more)
    if error.status == 408:
        response.force_close()
    return response


def unauthorized(message: str = UNAUTHORIZED_MESSAGE) -> web.Response:
    """The original API's answer to a missing or wrong token."""
    return web.json_response({"error": message}, status=401)


def failed_call_response(error: grpc.aio.AioRpcError) -> web.Response:
    """A failed gRPC call as the original API's error: the status through one table, the
    ErrorInfo's metadata (which parameter) beside the message."""
    if error.code() is grpc.StatusCode.UNAUTHENTICATED:
        return unauthorized(error.details() or UNAUTHORIZED_MESSAGE)
    if is_over_receive_limit(error):  # kimball gateway: an answer over its own limit
        return error_response(
            429,
            "the server's answer is larger than this gateway takes (its max_response_bytes): "
            "ask for pages with page_size, or give the gateway the server's "
            "KIMBALL_MAX_RESPONSE_BYTES",
            limit="max_response_bytes",
        )
    details = error_metadata(error.trailing_metadata())
    return error_response(http_status(error.code()), error.details() or "", **details)


def guarded(checker: TokenChecker | None, serve: Serve) -> Handler:
    """``serve`` for callers with a valid token, given the header (and the request id) as
    gRPC metadata.

    The token is checked before the body is read, so a caller without one learns nothing
    more; the gRPC server checks the forwarded header again with the same TokenChecker
    (every value of it: a header given twice is refused there too, when this gateway
    checks no token itself). A ``ClientError`` becomes its error body, a failed call its
    status.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        values = request.headers.getall("Authorization", [])
        if checker is not None:
            refusal = checker.refusal(values)
            if refusal is not None:
                checker.note_refused("rest", _route_of(request), request.remote or "?", refusal)
                return unauthorized(refusal)
        metadata: Metadata = tuple(("authorization", value) for value in values)
        call = current_call.get()
        if call is not None:  # the same request id in the gRPC server's log
            metadata += ((REQUEST_ID_HEADER, call.request_id),)
        try:
            return await serve(request, metadata)
        except ClientError as error:
            return client_error_response(error)
        except grpc.aio.AioRpcError as error:
            return failed_call_response(error)

    return handle


def declared_route(request: web.Request) -> str:
    """The route a request matched, as declared (``/v0/featureSpecs/{name}``; ``other``
    for an unknown path): never the path or query as sent, which may hold a user id."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


def _route_of(request: web.Request) -> str:
    return f"{request.method} {declared_route(request)}"


async def _answer(answer: Answer | None, response: Message) -> web.Response:
    if answer is None:
        return web.Response(status=204)
    text = await between_requests(json_in_steps(answer.render(response)))
    return web.Response(text=text, content_type="application/json")


def route_handler(
    route: Route, channel: Channel, checker: TokenChecker | None, body_timeout: float
) -> Handler:
    """The handler of ``route``, calling its gRPC method over ``channel``; a request's body
    must arrive within ``body_timeout`` seconds (of waiting for it)."""
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
            messages = streamed_messages(route, request, refused, BodyClock(body_timeout))
            # The call lasts as long as the upload: the body's time, then the call's own.
            timeout = body_timeout + CALL_TIMEOUT_SECONDS
            response = await stream_call(messages, metadata=metadata, timeout=timeout)
            if refused:
                accepted = route.answer.render(response) if route.answer is not None else {}
                return client_error_response(refused[0], **accepted)
            return await _answer(route.answer, response)

        return guarded(checker, serve_stream)

    call = channel.unary_unary(rule.grpc_method, **serializers)
    # A channel that validates events itself (a REST worker's) takes them without the
    # request message between, when their JSON is plain.
    takes_events = rule.grpc_method in getattr(channel, "takes_events", ())

    async def serve(request: web.Request, metadata: Metadata) -> web.StreamResponse:
        data = await request_data(route, request, BodyClock(body_timeout))
        events = plain_events(data) if takes_events else None
        message = message_of(route, data) if events is None else events
        response = await call(message, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        return await _answer(route.answer, response)

    return guarded(checker, serve)

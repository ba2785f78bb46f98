"""HTTP requests to request messages, as each route's entry in the route table says.

The JSON comes from query parameters, an ``application/json`` body or, for a client
stream, a newline-delimited JSON body read a line at a time; it is adapted from what
the original clients send (``request_shapes``), then made a message by ``request_json``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import web
from google.protobuf.message import Message
from multidict import MultiMapping

from gateway.proto_http import HttpRule, parameter_name
from gateway.request_json import RequestJsonError, message_from_json, parse_json
from gateway.request_shapes import BadBody, BadParameter
from gateway.route_table import JsonBody, NdjsonBody, Route, ShapedQuery
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES

MAX_BODY_BYTES = MAX_MESSAGE_BYTES
JSON_TYPES = ("application/json",)
STREAM_TYPES = ("application/x-ndjson", "text/plain")  # text/plain: what tools send plain
STREAM_CHUNK_BYTES = 64 * 1024
T = TypeVar("T")


class ClientError(Exception):
    """A request the gateway refuses before calling gRPC (always a 4xx)."""

    def __init__(self, status: int, what: str, **details: object) -> None:
        super().__init__(what)
        self.status = status
        self.what = what
        self.details = details


class BodyClock:
    """The time a request's body may take to arrive: the time spent waiting for it,
    summed over its reads (not the time the server spends on what it read); ``408``
    (``ClientError``) once ``limit`` seconds are spent."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._left = limit

    async def read(self, reading: Awaitable[T]) -> T:
        """``reading``'s result, within the time left."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(max(self._left, 0.0)):
                return await reading
        except TimeoutError:
            raise ClientError(
                408,
                f"The body did not arrive within {self.limit:g} s (KIMBALL_HTTP_BODY_TIMEOUT)",
                limit=self.limit,
            ) from None
        finally:
            self._left -= loop.time() - start


def require_content_type(request: web.Request, expected: tuple[str, ...]) -> None:
    """A 415 unless the body is one of the ``expected`` content types."""
    if request.content_type not in expected:
        raise ClientError(
            415,
            "The content-type is invalid",
            type=request.content_type,
            expected_types=list(expected),
        )


async def request_message(route: Route, request: web.Request, body: BodyClock) -> Message:
    """The request message of a route that is not a client stream, its body read within
    ``body``'s time; ``ClientError`` for a request it cannot be made from."""
    return message_of(route, await request_data(route, request, body))


async def request_data(route: Route, request: web.Request, body: BodyClock) -> dict:
    """The JSON object ``request_message`` makes its message from."""
    shape = route.request
    if isinstance(shape, JsonBody):
        data = await _body_data(request, shape, route.rule.body, body)
    elif isinstance(shape, ShapedQuery):
        try:
            data = shape.parse(request.query)
        except BadParameter as exc:
            raise ClientError(400, str(exc), parameter=exc.parameter) from None
    elif isinstance(shape, NdjsonBody):
        raise TypeError(f"{route.method} is a client stream: see streamed_messages")
    else:
        data = _field_query(route.rule, request.query)
    data.update(request.match_info)  # path parameters: /v0/featureSpecs/{name}
    return data


def message_of(route: Route, data: dict) -> Message:
    """The request message of ``route`` from its JSON object; ``ClientError`` if it does
    not make one."""
    try:
        return message_from_json(data, route.rule.request_type)
    except RequestJsonError as exc:
        raise ClientError(400, exc.what, **exc.details) from None


async def _body_data(request: web.Request, shape: JsonBody, field: str, body: BodyClock) -> dict:
    require_content_type(request, JSON_TYPES)
    try:
        raw = await body.read(request.read())
    except web.HTTPRequestEntityTooLarge:
        raise ClientError(
            413, f"The body is larger than {MAX_BODY_BYTES} bytes", limit=MAX_BODY_BYTES
        ) from None
    try:
        data = parse_json(raw)
    except (ValueError, RecursionError) as exc:
        raise ClientError(400, "The object is not valid JSON", why=str(exc)) from None
    if shape.adapt is not None:
        try:
            data = shape.adapt(data)
        except BadBody as exc:
            raise ClientError(400, str(exc)) from None
    if not isinstance(data, dict):
        raise ClientError(400, "The body must be a JSON object")
    return data if field == "*" else {field: data}  # the whole request, or one field of it


def _field_query(rule: HttpRule, query: MultiMapping[str]) -> dict[str, object]:
    """Query parameters as a request dict; unknown or repeated scalars are refused."""
    fields = {
        parameter_name(f): f for f in rule.request_type.DESCRIPTOR.fields if not rule.in_path(f)
    }
    data: dict[str, object] = {}
    for key in dict.fromkeys(query.keys()):
        field = fields.get(key)
        if field is None:
            raise ClientError(400, "Unknown parameter", parameter=key, known=sorted(fields))
        values = query.getall(key)
        if field.is_repeated:
            data[field.name] = values
        elif len(values) > 1:
            raise ClientError(400, "Parameter given more than once", parameter=key)
        else:
            data[field.name] = values[0]
    return data


async def streamed_messages(
    route: Route, request: web.Request, refused: list[ClientError], body: BodyClock
) -> AsyncIterator[Message]:
    """A client stream's messages, one a line of the body, each yielded as it is read (a
    line may also be what ``NdjsonBody.adapt`` takes), the body within ``body``'s time. A
    bad line ends the stream and is appended to ``refused``, naming it (``message``, from
    0); so is a body too slow."""
    shape = route.request
    if not isinstance(shape, NdjsonBody):
        raise TypeError(f"{route.method} is not a client stream: see request_message")
    if not request.body_exists:  # no body: a stream of no messages
        return
    index = 0
    lines = _lines(request, body)
    while True:
        try:
            line = await anext(lines, None)
            if line is None:
                return
            if not line.strip():
                continue
            data = parse_json(line)
            if shape.adapt is not None:
                data = shape.adapt(data)
            if not isinstance(data, dict):
                raise BadBody("each line must be a JSON object or array")
            message = message_from_json(data, route.rule.request_type)
        except (ValueError, RecursionError) as exc:  # JSON, shape, size, protobuf
            if isinstance(exc, RequestJsonError):
                what, details = exc.what, exc.details
            else:
                what, details = str(exc), {}
            refused.append(ClientError(400, f"message {index}: {what}", message=index, **details))
            return
        except ClientError as error:  # the body stopped coming
            refused.append(error)
            return
        yield message
        index += 1


async def _lines(request: web.Request, body: BodyClock) -> AsyncIterator[bytes]:
    """The body's lines as they arrive; ``ValueError`` for a line over ``MAX_BODY_BYTES``
    (one message's limit), found without holding more than that in memory."""
    too_long = f"a line is longer than {MAX_BODY_BYTES} bytes: split it"
    pending = b""
    while chunk := await body.read(request.content.read(STREAM_CHUNK_BYTES)):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            if len(line) > MAX_BODY_BYTES:
                raise ValueError(too_long)
            yield line
        if len(pending) > MAX_BODY_BYTES:
            raise ValueError(too_long)
    if pending:
        yield pending

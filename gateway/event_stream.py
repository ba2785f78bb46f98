"""Server-streaming gRPC methods as Server-Sent Events (``text/event-stream``).

The route's gRPC call is made with the caller's ``Authorization`` header, like every
route; its refusals before the stream starts (a bad parameter, a resume position the log
no longer holds, too many streams or subscribers open) are the usual JSON errors with
their HTTP statuses (400, 429, ...). The answer starts (200) once the server has the
stream in place, then carries one event per response message: ``id:`` the resume
position, ``data:`` one line of JSON. A browser's ``EventSource`` sends the last ``id``
back as ``Last-Event-ID`` when it reconnects, and it takes the place of the resume
field (``after_sequence``), so a reconnect neither loses nor repeats an event.

A comment line every ``HEARTBEAT_SECONDS`` keeps proxies from closing a quiet stream and
finds a client that has gone (its write fails, and the call is cancelled). A failure after
the start (the server shutting down: UNAVAILABLE) is sent as ``event: error`` with the
error's JSON, then the answer ends; so does every stream when the gateway itself stops.

The token travels in the ``Authorization`` header only, never in the URL (where logs and
browser history keep it): ``EventSource`` cannot send headers, so the web UI reads the
stream with ``fetch``; any SSE client that can set a header works.
"""

from __future__ import annotations

import asyncio
import json

import grpc
from aiohttp import web
from google.protobuf.message import Message

from gateway.handlers import Channel, Handler, Metadata, guarded
from gateway.http_status import http_status
from gateway.route_table import EventStream, Route
from gateway.translate import BodyClock, ClientError, request_message
from kimball_grpc.api.auth import TokenChecker
from kimball_grpc.codec.error_details import error_metadata

HEARTBEAT_SECONDS = 15.0
LAST_EVENT_ID = "Last-Event-ID"
GATEWAY_STOPPING = "the gateway is shutting down: reconnect with Last-Event-ID to resume"
_STOPPING = web.AppKey("event_streams_stopping", asyncio.Event)


def add_event_stream_shutdown(app: web.Application) -> None:
    """End every open event stream of ``app`` when it shuts down, before the server waits
    for its requests to finish (a stream would otherwise hold shutdown for as long as
    its client keeps it open)."""
    app[_STOPPING] = asyncio.Event()

    async def stop_streams(app: web.Application) -> None:
        app[_STOPPING].set()

    app.on_shutdown.append(stop_streams)


def event_stream_handler(
    route: Route, channel: Channel, checker: TokenChecker | None, body_timeout: float
) -> Handler:
    """The handler of a server-streaming ``route``: its gRPC method's responses as
    Server-Sent Events."""
    answer = route.answer
    if not isinstance(answer, EventStream):
        raise TypeError(f"{route.method} does not answer an event stream")
    rule = route.rule
    call = channel.unary_stream(
        rule.grpc_method,
        request_serializer=rule.request_type.SerializeToString,
        response_deserializer=rule.response_type.FromString,
    )

    async def serve(request: web.Request, metadata: Metadata) -> web.StreamResponse:
        message = await request_message(route, request, BodyClock(body_timeout))
        _resume_from(request, message, answer.resume_field)
        responses = call(message, metadata=metadata)
        try:
            await responses.initial_metadata()
            if responses.done():  # refused before the stream began: raises its error
                await responses.read()
            stream = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
                }
            )
            await stream.prepare(request)
            await _relay(responses, stream, answer, request.app[_STOPPING])
            return stream
        finally:
            responses.cancel()

    return guarded(checker, serve)


def _resume_from(request: web.Request, message: Message, field: str) -> None:
    """``Last-Event-ID`` (a reconnecting ``EventSource``) in the request's resume field:
    the last event the client has is newer than the position its URL was made with."""
    given = request.headers.get(LAST_EVENT_ID)
    if given is None:
        return
    if not given.isdigit() or len(given) > 20 or int(given) >= 2**64:
        raise ClientError(
            400, f"{LAST_EVENT_ID} must be a sequence number (digits only)", header=LAST_EVENT_ID
        )
    setattr(message, field, int(given))


async def _relay(
    responses: grpc.aio.UnaryStreamCall,
    stream: web.StreamResponse,
    answer: EventStream,
    stopping: asyncio.Event,
) -> None:
    """Write each response as an event, a heartbeat when none comes for a while, until the
    call ends, the client goes or the gateway stops."""
    await stream.write(b": stream open\n\n")  # at once: the client sees the stream start
    stopped = asyncio.ensure_future(stopping.wait())
    reading: asyncio.Future | None = None
    try:
        while True:
            reading = reading or asyncio.ensure_future(responses.read())
            done, _ = await asyncio.wait(
                {reading, stopped}, timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if reading in done:
                try:
                    item = reading.result()
                except grpc.aio.AioRpcError as error:
                    details = error_metadata(error.trailing_metadata())
                    await _send_error(stream, http_status(error.code()), error.details(), details)
                    return
                reading = None
                if item is grpc.aio.EOF:
                    return
                data = json.dumps(answer.render(item), separators=(",", ":"))
                await stream.write(f"id: {answer.event_id(item)}\ndata: {data}\n\n".encode())
            elif stopped in done:
                await _send_error(stream, 503, GATEWAY_STOPPING, {})
                return
            else:
                await stream.write(b": heartbeat\n\n")
    except ConnectionResetError:  # the client went away: the call is cancelled
        return
    finally:
        stopped.cancel()
        if reading is not None:
            reading.cancel()


async def _send_error(
    stream: web.StreamResponse, status: int, what: str | None, details: dict[str, str]
) -> None:
    body = json.dumps({"error": {"what": what or "", **details}, "status": status})
    await stream.write(f"event: error\ndata: {body}\n\n".encode())

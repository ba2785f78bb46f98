"""The first interceptor of every gRPC call: its request id, its metrics, its access log line.

Each call gets a request id, the caller's ``x-request-id`` metadata when that is a sane
short token, else a fresh one; it is sent back in the call's trailing metadata and is on
every log line written while the call is served (``config.logs.current_call``). When
the call ends, the grpc-ecosystem server metrics are counted (started, handled by status
code, handling time, messages received and sent) and, unless turned off, one line goes to
the ``kimball.access`` logger: the method, the status code, the duration and the bytes
received and sent. Never a request's content: no user id, no event, no token.

The REST gateway's in-process calls do not pass here (they are REST requests, observed
by the gateway under the same request id); calls from anywhere else do, refused ones
included (no token, not started yet, shutting down, no such method).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from kimball_grpc.api.interception import (
    Behavior,
    Continuation,
    Serializer,
    refusing_handler,
    rewrapped,
)
from kimball_grpc.config.logs import (
    ACCESS_LOGGER,
    REQUEST_ID_HEADER,
    CallContext,
    current_call,
    request_id_from,
)
from kimball_grpc.metrics import Metrics

access_log = logging.getLogger(ACCESS_LOGGER)

UNKNOWN = "unknown"  # the service and method labels of a method this server does not have
# A method this server does not have is refused as a stream both ways: whatever the caller
# sends, nothing is read before the status.
_ANY_KIND = grpc.stream_stream_rpc_method_handler(None)
_TYPES = {  # (streaming requests, streaming responses): grpc_type, as the ecosystem names it
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


@dataclass(frozen=True, slots=True)
class _Series:
    """One method's metric series, looked up once (by label) and kept."""

    grpc_type: str
    started: Any
    handling_seconds: Any
    received: Any
    sent: Any
    handled: dict[str, Any]  # by status code, filled as codes occur


class CallObserver(grpc.aio.ServerInterceptor):
    """Request ids, metrics and access log lines for every call; must come first.

    ``ingestion_methods``: the methods that carry events; when one is refused before its
    events reach the ingestion path (which counts the others), it counts as one event
    refused, by its status code."""

    def __init__(self, metrics: Metrics, access: bool, ingestion_methods: frozenset[str]) -> None:
        self._metrics = metrics
        self.access = access  # write the access log line of each call
        self._ingestion = ingestion_methods
        self._series: dict[tuple[str, str], _Series] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            # Answered as gRPC answers it, but seen: counted and logged under "unknown"
            # (the name is the caller's text: neither a label nor a log field).
            handler = refusing_handler(
                _ANY_KIND, grpc.StatusCode.UNIMPLEMENTED, "Method not found!"
            )
            method = f"/{UNKNOWN}/{UNKNOWN}"
        else:
            method = details.method
        given = [v for k, v in details.invocation_metadata or () if k == REQUEST_ID_HEADER]
        call = _Call(self, method, request_id_from(given[0] if len(given) == 1 else None))

        def wrap(behavior: Behavior, streaming_requests: bool, streaming_responses: bool):
            call.series = self._series_of(method, _TYPES[streaming_requests, streaming_responses])
            if streaming_responses and inspect.isasyncgenfunction(behavior):
                return call.response_stream(behavior)
            return call.one_response(behavior)

        decode, encode = handler.request_deserializer, handler.response_serializer
        # The messages of a stream are counted as they pass (grpc_server_msg_*: for streams
        # only, a unary call has one each way), and every call's bytes for its access line.
        call.streams = handler.unary_unary is None
        if call.streams or self.access:
            decode, encode = call.counting_deserializer(decode), call.counting_serializer(encode)
        return rewrapped(handler, wrap, decode, encode)

    def _series_of(self, method: str, grpc_type: str) -> _Series:
        series = self._series.get((method, grpc_type))
        if series is None:
            metrics = self._metrics
            service, _, name = method[1:].rpartition("/")
            labels = (grpc_type, service, name)
            series = _Series(
                grpc_type,
                metrics.grpc_started.labels(*labels),
                metrics.grpc_handling_seconds.labels(*labels),
                metrics.grpc_received.labels(*labels),
                metrics.grpc_sent.labels(*labels),
                {},
            )
            self._series[method, grpc_type] = series
        return series

    def finished(self, call: _Call, seconds: float) -> None:
        """``call``'s handler returned or raised after ``seconds``: counted."""
        series, code = call.series, call.code
        handled = series.handled.get(code)
        if handled is None:
            service, _, name = call.method[1:].rpartition("/")
            handled = self._metrics.grpc_handled.labels(series.grpc_type, service, name, code)
            series.handled[code] = handled
        handled.inc()
        series.handling_seconds.observe(seconds)
        if code != "OK" and call.method in self._ingestion and not call.context.events_counted:
            self._metrics.refuse_events(code)


class _Call:
    """One call being observed: its request id, its bytes, how it ends."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "code",
        "context",
        "grpc_context",
        "method",
        "observer",
        "series",
        "start",
        "streams",
    )

    def __init__(self, observer: CallObserver, method: str, request_id: str) -> None:
        self.observer = observer
        self.method = method
        self.context = CallContext(request_id, "grpc")
        self.series: _Series  # set once the handler's kind is known
        self.grpc_context: grpc.aio.ServicerContext  # set as the handler starts
        self.bytes_in = 0
        self.bytes_out = 0
        self.code = "UNKNOWN"  # until the handler ends
        self.start = 0.0
        self.streams = False  # its requests or responses: its messages are counted

    def counting_deserializer(self, deserialize: Serializer) -> Serializer:
        """``deserialize`` (None: the bytes as they are), counting what is received."""

        def received(data: bytes) -> Any:
            self.bytes_in += len(data)
            if self.streams:
                self.series.received.inc()
            return deserialize(data) if deserialize is not None else data

        return received

    def counting_serializer(self, serialize: Serializer) -> Serializer:
        """``serialize`` (None: the bytes as they are), counting what is sent."""

        def sent(message: Any) -> bytes:
            data = serialize(message) if serialize is not None else message
            self.bytes_out += len(data)
            if self.streams:
                self.series.sent.inc()
            return data

        return sent

    def _begin(self, context: grpc.aio.ServicerContext) -> None:
        """The call starts: counted; its request id in the call's context and in the
        trailers. (Not in the headers: sending them before a refusal of a streaming call
        races the client's requests, which then sometimes ends as INTERNAL.)"""
        current_call.set(self.context)  # the call's own task: it ends with the call
        self.series.started.inc()
        self.start = time.perf_counter()
        context.set_trailing_metadata(self.context.trailers)
        if self.observer.access:
            # Once the answer is sent: a unary answer is serialized after the handler.
            context.add_done_callback(self._log)

    def _end(self, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        self.code = _code(context, error)
        self.observer.finished(self, time.perf_counter() - self.start)

    def _log(self, context: grpc.aio.ServicerContext) -> None:
        seconds = time.perf_counter() - self.start
        access_log.info(
            "gRPC %s %s %.3f ms, %d B in, %d B out, request_id=%s",
            self.method,
            self.code,
            seconds * 1000,
            self.bytes_in,
            self.bytes_out,
            self.context.request_id,
            extra={
                "api": "grpc",
                "request_id": self.context.request_id,  # run outside the call's context
                "grpc_method": self.method,
                "grpc_type": self.series.grpc_type,
                "grpc_code": self.code,
                "duration_ms": round(seconds * 1000, 3),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
            },
        )

    def serving(self, context: grpc.aio.ServicerContext) -> _Call:
        """``with call.serving(context):`` around the handler: the call starts, and ends
        with what the block raised, if anything."""
        self._begin(context)
        self.grpc_context = context
        return self

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        self._end(self.grpc_context, error)

    def one_response(self, behavior: Behavior) -> Behavior:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self.serving(context):
                return await behavior(request, context)

        return handle

    def response_stream(self, behavior: Behavior) -> Behavior:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self.serving(context):
                async for response in behavior(request, context):
                    yield response

        return handle


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """How a call ended: the code it set or aborted with; else from what it raised, as
    gRPC answers it (a cancelled call past its deadline is DEADLINE_EXCEEDED)."""
    code = context.code()
    if code is not None:
        return code.name
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"

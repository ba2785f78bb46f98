"""The calls in flight on Kimball's services: limits on long-lived streams, and how every
call ends at shutdown.

A long-lived stream is a call that streams its requests or its responses:
``Subscribe``, ``WatchFeatureSpecs``, ``StreamEvents``, the integration contract's
``EventStream`` and a sidecar's relay. Each holds the server's memory for as long as its
client keeps it open, so there may be at most ``max_streams`` at once, of which at most
``max_subscribers`` are subscriptions (``Subscribe`` and ``WatchFeatureSpecs``). Past
either limit a call is refused with ``LimitExceeded`` (RESOURCE_EXHAUSTED) naming the
setting, and counted.

At shutdown (``close``) every open stream ends with ``ShuttingDown`` (UNAVAILABLE), so a
client can tell a server going away from a stream that ended, and new calls are refused
the same way. A stream that waits for its next response (a subscription between events)
is interrupted where it waits: its task is cancelled there. A stream of requests ends
between two messages, never while one is being applied, so its answer can say what was
accepted. ``wait_idle`` then lets unary calls finish within the grace period, but gives
streams only ``STREAM_END_SECONDS``: a client that stopped reading leaves its stream
blocked in a write, and no status can overtake the data it has not read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from kimball_grpc.api.interception import Continuation, service_of
from kimball_grpc.core.errors import LimitExceeded, ShuttingDown
from kimball_grpc.core.limits import STREAMS, SUBSCRIBERS
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.metrics import Metrics

_API = pb.DESCRIPTOR.services_by_name["KimballService"].full_name
SUBSCRIPTION_METHODS = frozenset(f"/{_API}/{name}" for name in ("Subscribe", "WatchFeatureSpecs"))
OPEN = " open at once"  # in the refusal, after the count
STREAM_END_SECONDS = 1.0  # at shutdown, how long an ended stream may take to send its status
SHUTTING_DOWN = (
    "the server is shutting down: call again once it is back (Subscribe resumes with "
    "after_sequence, the last sequence received)"
)


@dataclass(eq=False)
class _Stream:
    """One open stream: its method, and the task serving it."""

    method: str
    task: asyncio.Task[Any] | None
    waiting: bool = False  # for its next request or response: a cancel ends it there


class OpenCalls(grpc.aio.ServerInterceptor):
    """Counts the calls of ``services`` in flight, bounds their streams, ends them at
    shutdown. It must come after the interceptor that maps domain errors to statuses."""

    def __init__(
        self, services: set[str], max_streams: int, max_subscribers: int, metrics: Metrics
    ) -> None:
        self._services = services
        self.max_streams = max_streams
        self.max_subscribers = max_subscribers
        self._metrics = metrics
        self._streams: set[_Stream] = set()
        self._subscribers = 0
        self._unary = 0  # unary calls in flight
        self._changed = asyncio.Event()  # a call ended
        self.closing = False

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or service_of(details) not in self._services:
            return handler
        method = details.method
        decode, encode = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_call(handler.unary_unary), decode, encode
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._response_stream(method, handler.unary_stream), decode, encode
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._request_stream(method, handler.stream_unary), decode, encode
            )
        return grpc.stream_stream_rpc_method_handler(
            self._bidirectional_stream(method, handler.stream_stream), decode, encode
        )

    def _unary_call(self, behavior: Callable) -> Callable:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.closing:
                raise ShuttingDown(SHUTTING_DOWN)
            self._unary += 1
            try:
                return await behavior(request, context)
            finally:
                self._unary -= 1
                self._changed.set()

        return handle

    def _response_stream(self, method: str, behavior: Callable) -> Callable:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            stream = self._open(method)
            try:
                async for response in self._interruptible(stream, behavior(request, context)):
                    yield response
            finally:
                self._close(stream)

        return handle

    def _request_stream(self, method: str, behavior: Callable) -> Callable:
        async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            stream = self._open(method)
            try:
                return await behavior(self._interruptible(stream, requests), context)
            finally:
                self._close(stream)

        return handle

    def _bidirectional_stream(self, method: str, behavior: Callable) -> Callable:
        async def handle(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            stream = self._open(method)
            try:
                # Interrupted while waiting for a request only: a response may be waiting
                # for a request being applied.
                async for response in behavior(self._interruptible(stream, requests), context):
                    yield response
            finally:
                self._close(stream)

        return handle

    async def _interruptible(
        self, stream: _Stream, items: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """``items``, ended by ``ShuttingDown`` at shutdown: at once while waiting for the
        next one, else before asking for it."""
        try:
            while True:
                if self.closing:
                    raise ShuttingDown(SHUTTING_DOWN)
                stream.waiting = True
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not self.closing or stream.task is None:
                        raise
                    stream.task.uncancel()  # close() cancelled it: this is how it ends
                    raise ShuttingDown(SHUTTING_DOWN) from None
                finally:
                    stream.waiting = False
                yield item
        finally:
            if hasattr(items, "aclose"):
                await items.aclose()

    def _open(self, method: str) -> _Stream:
        if self.closing:
            raise ShuttingDown(SHUTTING_DOWN)
        subscription = method in SUBSCRIPTION_METHODS
        if len(self._streams) >= self.max_streams:
            self._refuse(STREAMS.exceeded(self.max_streams, OPEN))
        if subscription and self._subscribers >= self.max_subscribers:
            self._refuse(SUBSCRIBERS.exceeded(self.max_subscribers, OPEN))
        stream = _Stream(method, asyncio.current_task())
        self._streams.add(stream)
        self._subscribers += subscription
        self._metrics.streams_open.labels(method).inc()
        return stream

    def _refuse(self, error: LimitExceeded) -> NoReturn:
        self._metrics.refuse(error)
        raise error

    def _close(self, stream: _Stream) -> None:
        self._streams.discard(stream)
        self._subscribers -= stream.method in SUBSCRIPTION_METHODS
        self._metrics.streams_open.labels(stream.method).dec()
        self._changed.set()

    def close(self) -> None:
        """Shutdown: end every open stream with ``ShuttingDown`` and refuse new calls."""
        self.closing = True
        for stream in self._streams:
            if stream.waiting and stream.task is not None:
                stream.task.cancel()

    async def wait_idle(self, grace: float) -> None:
        """After ``close``: until no call is in flight, waiting at most ``grace`` seconds for
        unary calls and ``STREAM_END_SECONDS`` for streams."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        streams_end = loop.time() + min(grace, STREAM_END_SECONDS)
        while True:
            now = loop.time()
            waits = []
            if self._unary:
                waits.append(end)
            if self._streams and now < streams_end:
                waits.append(streams_end)
            if not waits or now >= end:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(waits) - now)

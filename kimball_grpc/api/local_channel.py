"""A channel to this process's own gRPC server: the same handlers and interceptors, no network.

``kimball serve`` runs the REST gateway in the gRPC server's event loop. Over
loopback, every REST request would pay for a gRPC client call and a server call
(about 0.4 ms of CPU each, more than the engine spends on 30 events) to reach a
handler in the same process. Like grpc-gateway's ``RegisterXHandlerServer``,
``LocalChannel`` calls the registered method handlers directly, through the
server's interceptors (authentication, status mapping, request metrics), with
the request and response serialized as on the wire. Failures surface as
``grpc.aio.AioRpcError``, as they would from a network channel, so the gateway
cannot tell the difference. Unary, client-streaming and server-streaming methods (the
last for the gateway's Server-Sent Events); bidirectional calls fail with UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partialmethod
from typing import Any, NamedTuple

import grpc

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]


class HandlerRecorder:
    """Stands in for a server in ``add_*Servicer_to_server``: registers there and keeps a copy."""

    def __init__(
        self,
        server: grpc.aio.Server,
        generic_handlers: list[grpc.GenericRpcHandler] | None = None,
        serialized_by_servicer: frozenset[str] = frozenset(),
    ) -> None:
        self._server = server
        self.generic_handlers = [] if generic_handlers is None else generic_handlers
        self._serialized_by_servicer = serialized_by_servicer

    def serializing(self, methods: frozenset[str]) -> HandlerRecorder:
        """Registers like this one, but the servicer's ``methods`` (method names) send their
        responses' bytes themselves (no response serializer)."""
        return HandlerRecorder(self._server, self.generic_handlers, methods)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        if self._serialized_by_servicer:
            self.generic_handlers.extend(
                _SerializedBy(h, self._serialized_by_servicer) for h in handlers
            )
        else:
            self.generic_handlers.extend(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        # The server looks registered methods up first; LocalChannel finds the same
        # methods through the recorded generic handlers.
        self._server.add_registered_method_handlers(
            service,
            {
                name: handler._replace(response_serializer=None)
                if name in self._serialized_by_servicer
                else handler
                for name, handler in handlers.items()
            },
        )


class _SerializedBy(grpc.GenericRpcHandler):
    """``inner``, but its ``methods`` (method names) have no response serializer: their
    servicer sends its responses' bytes itself."""

    def __init__(self, inner: grpc.GenericRpcHandler, methods: frozenset[str]) -> None:
        self._inner = inner
        self._methods = methods

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        name = handler_call_details.method.rpartition("/")[2]
        if handler is not None and name in self._methods:
            return handler._replace(response_serializer=None)
        return handler


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: Metadata


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing


@dataclass
class _LocalContext:
    """The parts of ``grpc.aio.ServicerContext`` that unary handlers here use."""

    metadata: Metadata
    deadline: float | None  # event loop time
    trailing: Metadata = ()
    code: grpc.StatusCode | None = None
    details: str = ""
    on_headers: Callable[[], None] = lambda: None  # a response stream's headers went out
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def invocation_metadata(self) -> Metadata:
        return self.metadata

    def peer(self) -> str:
        return "local"  # the REST gateway in this process

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self._loop.time())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        raise _Aborted(code, details, tuple(trailing_metadata))

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        self.on_headers()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self.trailing = tuple(trailing_metadata)


class LocalStreamCall:
    """A server-streaming call in this process, used as ``grpc.aio.UnaryStreamCall`` is:
    ``initial_metadata``, ``read`` (``grpc.aio.EOF`` at the end), ``done``, ``cancel``.

    The handler runs in a task of its own, as on a server: shutdown cancels that task
    where it waits (``OpenCalls``), and ``cancel`` ends it as a client's cancel would. At
    most one response waits to be read, so a slow reader holds the handler back (a
    subscription then falls behind and counts what it drops) rather than memory growing.
    """

    def __init__(self, responses: Callable[[_LocalContext], AsyncIterator[Any]]) -> None:
        loop = asyncio.get_running_loop()
        self._headers: asyncio.Future[None] = loop.create_future()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self._task = asyncio.create_task(self._serve(responses))

    def _headers_sent(self) -> None:
        if not self._headers.done():
            self._headers.set_result(None)

    async def _serve(self, responses: Callable[[_LocalContext], AsyncIterator[Any]]) -> None:
        context = _LocalContext((), None, on_headers=self._headers_sent)
        outcome: Any = grpc.aio.EOF
        try:
            async for response in responses(context):
                self._headers_sent()
                await self._queue.put(response)
        except grpc.aio.AioRpcError as error:
            outcome = error
        self._headers_sent()
        await self._queue.put(outcome)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """Once the handler sent its headers, its first response, or ended."""
        await asyncio.shield(self._headers)
        return grpc.aio.Metadata()

    def done(self) -> bool:
        """Whether the handler ended (its last responses may still wait to be read)."""
        return self._task.done()

    async def read(self) -> Any:
        """The next response; ``grpc.aio.EOF`` after the last; the call's error if it failed."""
        item = await self._queue.get()
        if isinstance(item, grpc.aio.AioRpcError):
            self._queue.put_nowait(item)  # read again: the same error, as grpc.aio does
            raise item
        if item is grpc.aio.EOF:
            self._queue.put_nowait(item)
        return item

    def cancel(self) -> bool:
        """End the call; the handler's cleanup runs where it waits."""
        return self._task.cancel()


class StreamCall(NamedTuple):
    """A server-streaming call as a stub makes it: what ``ChannelCalls._stream`` starts."""

    method: str
    request: Any
    request_serializer: Callable[[Any], bytes] | None
    response_deserializer: Callable[[bytes], Any] | None
    metadata: Metadata


class ChannelCalls:
    """The unary and client-streaming part of ``grpc.aio.Channel``, each call made by the
    subclass's ``_call`` (method, kind, request, request serializer, response deserializer,
    timeout, metadata); streaming calls from the server are refused unless a subclass
    carries them (generated stubs can still be built on such a channel)."""

    _call: Callable[..., Awaitable[Any]]

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool = False,
    ) -> Callable[..., Any]:
        """A callable like a stub's: ``call(request, metadata=...)`` is the stream the
        subclass's ``_stream`` starts (no deadline: it lasts until cancelled or ended)."""

        def call(request: Any, *, metadata: Metadata | None = None) -> Any:
            return self._stream(
                StreamCall(
                    method,
                    request,
                    request_serializer,
                    response_deserializer,
                    tuple(metadata or ()),
                )
            )

        return call

    def _stream(self, call: StreamCall) -> Any:
        """One server-streaming call; refused unless a subclass carries them."""
        return streaming_refused()

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return streaming_refused

    def _callable(
        self,
        kind: str,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool = False,
    ) -> Callable[..., Awaitable[Any]]:
        """A callable like a stub's: ``await call(request, metadata=..., timeout=...)``, where
        ``request`` is a message (``unary_unary``) or an async iterator of messages
        (``stream_unary``)."""

        async def call(
            request: Any, *, timeout: float | None = None, metadata: Metadata | None = None
        ) -> Any:
            return await self._call(
                method, kind, request, request_serializer, response_deserializer, timeout, metadata
            )

        return call

    # grpc.aio.Channel's methods, as generated stubs call them.
    unary_unary = partialmethod(_callable, "unary_unary")
    stream_unary = partialmethod(_callable, "stream_unary")


class LocalChannel(ChannelCalls):
    """The unary, client-streaming and server-streaming part of ``grpc.aio.Channel``,
    served by handlers in this process."""

    def __init__(
        self,
        generic_handlers: Sequence[grpc.GenericRpcHandler],
        interceptors: Sequence[grpc.aio.ServerInterceptor],
    ) -> None:
        self._handlers = tuple(generic_handlers)
        self._interceptors = tuple(interceptors)

    def _stream(self, call: StreamCall) -> LocalStreamCall:
        def responses(context: _LocalContext) -> AsyncIterator[Any]:
            context.metadata = call.metadata
            return self._responses(
                call.method,
                call.request,
                call.request_serializer,
                call.response_deserializer,
                context,
            )

        return LocalStreamCall(responses)

    async def _responses(
        self,
        method: str,
        request: Any,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        context: _LocalContext,
    ) -> AsyncIterator[Any]:
        """One server-streaming call of ``method``, as the server would make it."""
        details = _CallDetails(method, context.metadata)
        handler = await self._intercepted(iter(self._interceptors), details)
        if handler is None or handler.unary_stream is None:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        received = _as_received(handler, request_serializer, request)
        try:
            async for response in handler.unary_stream(received, context):
                if handler.response_serializer:
                    response = handler.response_serializer(response)
                yield response_deserializer(response) if response_deserializer else response
        except _Aborted as aborted:
            raise rpc_error(aborted.code, aborted.details, aborted.trailing) from None
        except Exception as exc:
            log.exception("Unexpected error in %s", method)
            raise rpc_error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}") from None
        if context.code not in (None, grpc.StatusCode.OK):
            raise rpc_error(context.code, context.details, context.trailing)

    async def _call(
        self,
        method: str,
        kind: str,
        request: Any,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Any:
        """One call of ``method``'s ``kind`` handler, as the server would make it:
        ``request`` is a message, or an async iterator of messages (client streaming)."""
        details = _CallDetails(method, tuple(metadata or ()))
        handler = await self._intercepted(iter(self._interceptors), details)
        if handler is None or getattr(handler, kind) is None:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if kind == "stream_unary":
            received = _stream_as_received(handler, request_serializer, request)
        else:
            received = _as_received(handler, request_serializer, request)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        context = _LocalContext(details.invocation_metadata, deadline)
        try:
            async with asyncio.timeout(timeout):  # unlike wait_for, no task per call
                response = await getattr(handler, kind)(received, context)
        except _Aborted as aborted:
            raise rpc_error(aborted.code, aborted.details, aborted.trailing) from None
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except Exception as exc:
            # As grpc.aio's server does: the caller gets UNKNOWN, the log gets the trace.
            log.exception("Unexpected error in %s", method)
            raise rpc_error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}") from None
        if context.code not in (None, grpc.StatusCode.OK):
            raise rpc_error(context.code, context.details, context.trailing)
        if handler.response_serializer:
            response = handler.response_serializer(response)
        return response_deserializer(response) if response_deserializer else response

    async def _intercepted(
        self, interceptors: Any, details: _CallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The handler for ``details`` as the server finds it: interceptors in order."""
        interceptor = next(interceptors, None)
        if interceptor is None:
            for generic in self._handlers:
                handler = generic.service(details)
                if handler is not None:
                    return handler
            return None
        return await interceptor.intercept_service(
            lambda d: self._intercepted(interceptors, d), details
        )

    async def close(self) -> None:
        """Nothing to release: there is no connection."""


def _as_received(
    handler: grpc.RpcMethodHandler, serializer: Callable[[Any], bytes] | None, request: Any
) -> Any:
    """A request as the handler gets it from the wire: serialized, then decoded by the
    handler's own deserializer if it has one (Kimball's interceptor decodes it itself)."""
    data = serializer(request) if serializer else request
    return handler.request_deserializer(data) if handler.request_deserializer else data


async def _stream_as_received(
    handler: grpc.RpcMethodHandler,
    serializer: Callable[[Any], bytes] | None,
    requests: AsyncIterator[Any],
) -> AsyncIterator[Any]:
    """A client stream's requests, each as ``_as_received``."""
    async for request in requests:
        yield _as_received(handler, serializer, request)


def streaming_refused(*args: Any, **kwargs: Any) -> Any:
    """Stands for a streaming method that a channel cannot carry."""
    raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, "this channel carries no such streaming call")


def rpc_error(code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> grpc.aio.AioRpcError:
    """A failed call as a network channel raises it."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )

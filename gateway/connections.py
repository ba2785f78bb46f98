"""The REST server's connections: a cap on how many are open, and a time limit on a
request's headers.

aiohttp closes a connection that stays idle past its keep-alive timeout (counted from
the connection's start and from each response), but has no limit on the time a client
takes to send a request's headers once it has started, and no cap on connections. Both
are here, at the protocol level, with public APIs only: ``aiohttp.web.Server`` is the
protocol factory the event loop's ``create_server`` takes (aiohttp's low-level server),
and each connection's protocol is wrapped in ``GuardedConnection``, which passes every
event on. A middleware (``ConnectionGuard.middleware``) tells a connection when its
request's headers are complete (the handler runs) and when the answer is done.

- Past ``max_connections`` open connections a new one is answered ``503`` with
  ``Retry-After`` and closed (refused rather than queued: a client, or the load balancer
  in front, learns at once to go elsewhere or come back, and the server holds nothing
  for it); then its input is read and dropped for a moment, so the answer is not lost to
  a reset.
- A new connection, and a kept-alive one once a byte of its next request arrives, must
  deliver the request's headers within ``header_timeout_s``, or it is closed (with
  ``408`` if part of a request came). Slow bodies are timed by the handlers
  (``translate``), the keep-alive idle time by aiohttp itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiohttp import web

from gateway.handlers import Handler
from kimball_grpc.config.settings import HttpLimits
from kimball_grpc.metrics import HttpMetrics

# How long a refused or timed-out connection's input is read and dropped after its answer
# (503, 408) is sent: a close with unread input resets the connection, and the client may
# lose the answer (nginx's lingering close).
LINGER_SECONDS = 1.0


def _raw_response(status: str, what: str, *headers: str) -> bytes:
    body = json.dumps({"error": {"what": what}}).encode()
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ConnectionGuard:
    """The connections of one REST server: the protocol factory to listen with
    (``protocol``) and the middleware its application must run first."""

    def __init__(self, limits: HttpLimits, metrics: HttpMetrics | None) -> None:
        self.limits = limits
        self._metrics = metrics
        self._open: dict[asyncio.BaseTransport, GuardedConnection] = {}
        self.refused = 0
        self.header_timeouts = 0
        self.refusal = _raw_response(
            "503 Service Unavailable",
            f"Too many connections: this server takes {limits.max_connections} at once "
            f"(KIMBALL_HTTP_MAX_CONNECTIONS); try again shortly",
            "Retry-After: 1",
        )
        self.timeout_answer = _raw_response(
            "408 Request Timeout",
            f"The request headers did not arrive within {limits.header_timeout_s:g} s "
            f"(KIMBALL_HTTP_HEADER_TIMEOUT)",
        )

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def protocol(self, server: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to listen with: ``server``'s protocols (an
        ``aiohttp.web.Server``), each guarded."""
        return lambda: GuardedConnection(self, server())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the request's connection busy while its handler runs: its headers came."""
        connection = self._open.get(request.transport) if request.transport else None
        if connection is None:  # not served through ``protocol`` (e.g. a plain TCPSite)
            return await handler(request)
        connection.request_started()
        response = None
        try:
            response = await handler(request)
        finally:
            connection.request_finished(keep_alive=response is not None and response.keep_alive)
        if response.status == 408 and self._metrics is not None:  # its body came too slowly
            self._metrics.time_out_http("body")
        return response

    def admit(self, connection: GuardedConnection, transport: asyncio.BaseTransport) -> bool:
        """Whether a new connection may open (counted either way)."""
        if len(self._open) >= self.limits.max_connections:
            self.refused += 1
            if self._metrics is not None:
                self._metrics.refuse_http_connection()
            return False
        self._open[transport] = connection
        if self._metrics is not None:
            self._metrics.open_http_connections(1)
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        """An admitted connection closed."""
        if self._open.pop(transport, None) is not None and self._metrics is not None:
            self._metrics.open_http_connections(-1)

    def headers_late(self) -> None:
        """A connection was closed for its headers (counted)."""
        self.header_timeouts += 1
        if self._metrics is not None:
            self._metrics.time_out_http("headers")


class GuardedConnection(asyncio.Protocol):
    """One connection: aiohttp's protocol for it (``inner``), admitted or refused, its
    headers timed."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a request's handler runs: its headers came
        self._heard = False  # bytes of a request came that no handler took yet
        self._lingering = False  # answered and closing: input is dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._guard.admit(self, transport):
            self._answer_and_linger(self._guard.refusal)
            return
        self._admitted = True
        self._start_header_timer()  # a new connection owes its first request's headers
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted or self._lingering:
            return  # a refused or timed-out connection's request: dropped
        self._heard = True
        if not self._busy and self._timer is None:
            self._start_header_timer()  # the first bytes of a kept-alive connection's request
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted or self._lingering:
            return False  # close: the answer went out before
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        if not self._admitted:
            return
        self._guard.release(self._transport)  # type: ignore[arg-type]
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self._busy = True
        self._stop_header_timer()

    def request_finished(self, keep_alive: bool) -> None:
        """The request's answer is decided. If the connection stays open, bytes from here
        on begin the next request (those of a pipelined request that came while this one
        ran are left to aiohttp's keep-alive timeout: they cannot be told from this
        request's body without parsing); if not, what comes is the rest of this request,
        read and dropped by aiohttp until it closes the connection."""
        self._busy = not keep_alive  # closing: no next request to time
        self._heard = False

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.limits.header_timeout_s, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._guard.headers_late()
        if self._heard:  # a request began: say why it ends (none began: just close)
            self._answer_and_linger(self._guard.timeout_answer)
        else:
            transport.close()

    def _answer_and_linger(self, answer: bytes) -> None:
        """Send ``answer``, then drop what the client sends until the connection closes
        ``LINGER_SECONDS`` later."""
        transport = self._transport
        assert transport is not None
        self._lingering = True
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

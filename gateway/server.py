"""Running the gateway: an aiohttp server in the caller's event loop, its connections
guarded (``connections``)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from dataclasses import dataclass

import grpc
from aiohttp import web

from gateway.app import Exposition, build_app
from gateway.connections import ConnectionGuard
from gateway.http_log import AccessLog, RequestFreeLog
from kimball_grpc.api.auth import TokenChecker
from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.config.logs import ACCESS_LOGGER
from kimball_grpc.config.settings import HttpLimits
from kimball_grpc.config.tls import ClientTls
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.metrics import HttpMetrics
from kimball_grpc.outbound.channels import client_channel, kimball_messages, target_address

log = logging.getLogger(__name__)

BACKLOG = 1024  # connections the kernel holds before they are accepted (aiohttp's: 128)
# After an answer that left part of a body unread (a 401, a 408 for a slow body), the
# rest is read and dropped this long, so that the client reads the answer rather than a
# reset; aiohttp's 10 s is long for a client already too slow.
LINGER_SECONDS = 2.0


@dataclass
class RunningGateway:
    """A started gateway."""

    runner: web.AppRunner
    listeners: list[asyncio.Server]  # one per address a host name resolved to
    channel: grpc.aio.Channel | LocalChannel
    port: int
    connections: ConnectionGuard

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.close()  # no new connections; then the open ones end
        await self.runner.cleanup()
        await self.channel.close()


def network_channel(
    grpc_target: str, max_response_bytes: int, tls: ClientTls | None = None
) -> grpc.aio.Channel:
    """A channel to a Kimball gRPC server elsewhere (over TLS with ``tls``), taking answers
    as large as it sends (its ``max_response_bytes``)."""
    return client_channel(grpc_target, tls, kimball_messages(max_response_bytes))


async def start_gateway(
    host: str,
    port: int,
    channel: grpc.aio.Channel | LocalChannel,
    metrics: HttpMetrics | None,
    checker: TokenChecker | None,
    limits: HttpLimits | None = None,
    tls: ssl.SSLContext | None = None,
    shared: list[socket.socket] | None = None,
    exposition: Exposition | None = None,
    access_log: bool = True,
) -> RunningGateway:
    """Serve the REST API on ``host:port`` onto the gRPC methods reached over ``channel``
    (with ``/metrics`` when the server's ``metrics`` are in this process), within
    ``limits`` (the defaults if None), over TLS with ``tls``. ``host`` is ``::`` or
    ``0.0.0.0`` for every address (IPv4 and IPv6), an IP address, or a host name (every
    address it resolves to). A line per request goes to the ``kimball.access`` logger if
    ``access_log``."""
    limits = limits or HttpLimits()
    guard = ConnectionGuard(limits, metrics)
    runner = web.AppRunner(
        build_app(channel, metrics, checker, guard, exposition),
        # Not aiohttp's own access log: its line holds the path and query (user ids).
        access_log_class=AccessLog,
        access_log=logging.getLogger(ACCESS_LOGGER) if access_log else None,
        logger=RequestFreeLog(),
        keepalive_timeout=limits.keepalive_timeout_s,
        lingering_time=LINGER_SECONDS,
    )
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    listeners: list[asyncio.Server] = []
    try:
        sockets = shared or listening_sockets(host, port)
        for sock in sockets:
            listeners.append(
                await loop.create_server(
                    guard.protocol(runner.server),
                    sock=sock,
                    backlog=BACKLOG,
                    ssl=tls,
                    # A connection that never finishes its handshake is dropped as one that
                    # never sends its headers.
                    ssl_handshake_timeout=limits.header_timeout_s if tls else None,
                )
            )
    except OSError as exc:
        for listener in listeners:
            listener.close()
        for sock in sockets[len(listeners) :]:
            sock.close()
        await runner.cleanup()
        await channel.close()
        raise ConfigError(
            f"cannot listen for REST on {target_address(host, port)} (--api-host, --api-port): "
            f"{exc.strerror or exc}"
        ) from None
    bound = listeners[0].sockets[0].getsockname()[1]
    return RunningGateway(runner, listeners, channel, bound, guard)


# The wildcards: every address of both families, as gRPC's own runtime takes either.
EVERY_ADDRESS = ("", "::", "0.0.0.0")
# A bind that fails for these lacks the address family or address, not the port.
_NO_SUCH_ADDRESS = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for ``host:port``: one on every address for a wildcard; else one per
    address ``host`` resolves to (all on the port the first got, when ``port`` is 0),
    skipping addresses this host lacks (``::1`` without IPv6) as long as one is left."""
    if host in EVERY_ADDRESS:
        return [_every_address(port)]
    resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    missing: OSError | None = None
    try:
        for family, kind, protocol, _, address in dict.fromkeys(resolved):
            if sockets:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sockets.append(_bound(family, kind, protocol, address))
            except OSError as exc:
                if exc.errno not in _NO_SUCH_ADDRESS:
                    raise
                missing = exc
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise missing or OSError(errno.EADDRNOTAVAIL, f"{host} has no address")
    return sockets


def _every_address(port: int) -> socket.socket:
    """One socket on every address: IPv6 with IPv4 mapped into it (the event loop would make
    an IPv6 socket IPv6 only), or IPv4 alone on a host without IPv6."""
    try:
        return _bound(socket.AF_INET6, socket.SOCK_STREAM, 0, ("::", port), v6_only=False)
    except OSError as exc:
        if exc.errno not in _NO_SUCH_ADDRESS:
            raise
    log.info("no IPv6 on this host: REST listens on every IPv4 address")
    return _bound(socket.AF_INET, socket.SOCK_STREAM, 0, ("0.0.0.0", port))


def _bound(
    family: int, kind: int, protocol: int, address: tuple, *, v6_only: bool = True
) -> socket.socket:
    sock = socket.socket(family, kind, protocol)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6_only))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock

"""Running the gateway: an aiohttp server in the caller's event loop, its connections
guarded (``connections``)."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import grpc
from aiohttp import web

from gateway.app import build_app
from gateway.connections import ConnectionGuard
from gateway.http_log import AccessLog, RequestFreeLog
from kimball_grpc.api.auth import TokenChecker
from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.config.logs import ACCESS_LOGGER
from kimball_grpc.config.settings import HttpLimits
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.channels import insecure_channel, kimball_messages

BACKLOG = 1024  # connections the kernel holds before they are accepted (aiohttp's: 128)
# After an answer that left part of a body unread (a 401, a 408 for a slow body), the
# rest is read and dropped this long, so that the client reads the answer rather than a
# reset; aiohttp's 10 s is long for a client already too slow.
LINGER_SECONDS = 2.0


@dataclass
class RunningGateway:
    """A started gateway."""

    runner: web.AppRunner
    listener: asyncio.Server
    channel: grpc.aio.Channel | LocalChannel
    port: int
    connections: ConnectionGuard

    async def stop(self) -> None:
        self.listener.close()  # no new connections; then the open ones end
        await self.runner.cleanup()
        await self.channel.close()


def network_channel(grpc_target: str, max_response_bytes: int) -> grpc.aio.Channel:
    """A channel to a Kimball gRPC server elsewhere, taking answers as large as it sends
    (its ``max_response_bytes``)."""
    return insecure_channel(grpc_target, kimball_messages(max_response_bytes))


async def start_gateway(
    host: str,
    port: int,
    channel: grpc.aio.Channel | LocalChannel,
    metrics: Metrics | None,
    checker: TokenChecker | None,
    limits: HttpLimits | None = None,
    access_log: bool = True,
) -> RunningGateway:
    """Serve the REST API on ``host:port`` onto the gRPC methods reached over ``channel``
    (with ``/metrics`` when the server's ``metrics`` are in this process), within
    ``limits`` (the defaults if None), writing a line per request to the ``kimball.access``
    logger if ``access_log``."""
    limits = limits or HttpLimits()
    guard = ConnectionGuard(limits, metrics)
    runner = web.AppRunner(
        build_app(channel, metrics, checker, guard),
        # Not aiohttp's own access log: its line holds the path and query (user ids).
        access_log_class=AccessLog,
        access_log=logging.getLogger(ACCESS_LOGGER) if access_log else None,
        logger=RequestFreeLog(),
        keepalive_timeout=limits.keepalive_timeout_s,
        lingering_time=LINGER_SECONDS,
    )
    await runner.setup()
    assert runner.server is not None
    try:
        listener = await asyncio.get_running_loop().create_server(
            guard.protocol(runner.server), sock=_listening_socket(host, port), backlog=BACKLOG
        )
    except OSError as exc:
        await runner.cleanup()
        await channel.close()
        raise ConfigError(f"cannot listen for REST on {host}:{port}: {exc}") from None
    bound = listener.sockets[0].getsockname()[1]
    return RunningGateway(runner, listener, channel, bound, guard)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket for ``host:port``. ``::`` (every address, as ``--host [::]`` says)
    takes IPv4 too, as the gRPC server does: the event loop would make it IPv6 only."""
    if host in ("", "::"):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    else:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock

"""Running the gateway: an aiohttp site in the caller's event loop."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from aiohttp import web

from gateway.app import build_app
from kimball_grpc.auth import TokenChecker
from kimball_grpc.errors import ConfigError
from kimball_grpc.limits import MAX_MESSAGE_BYTES
from kimball_grpc.metrics import Metrics


@dataclass
class RunningGateway:
    """A started gateway."""

    runner: web.AppRunner
    channel: grpc.aio.Channel
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.channel.close()


async def start_gateway(
    host: str,
    port: int,
    grpc_target: str,
    metrics: Metrics | None,
    checker: TokenChecker | None,
) -> RunningGateway:
    """Serve the REST API on ``host:port`` in front of the gRPC server at ``grpc_target``
    (with ``/metrics`` when the server's ``metrics`` are in this process)."""
    channel = grpc.aio.insecure_channel(
        grpc_target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    runner = web.AppRunner(build_app(channel, metrics, checker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await channel.close()
        raise ConfigError(f"cannot listen for REST on {host}:{port}: {exc}") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    return RunningGateway(runner, channel, bound)

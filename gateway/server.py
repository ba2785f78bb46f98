"""Running the gateway: an aiohttp site in the caller's event loop."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from aiohttp import web

from gateway.app import build_app
from kimball_grpc.api.auth import TokenChecker
from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.channels import insecure_channel, kimball_messages


@dataclass
class RunningGateway:
    """A started gateway."""

    runner: web.AppRunner
    channel: grpc.aio.Channel | LocalChannel
    port: int

    async def stop(self) -> None:
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
) -> RunningGateway:
    """Serve the REST API on ``host:port`` onto the gRPC methods reached over ``channel``
    (with ``/metrics`` when the server's ``metrics`` are in this process)."""
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

"""Kimball in the test's own process: a real server (and its REST gateway) on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc

from gateway.server import RunningGateway, start_gateway
from kimball_grpc.api.batch_intake import IntakeChannel, IntakeServer
from kimball_grpc.app import RunningServer, start_server
from kimball_grpc.config.settings import Mode, Settings
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.sidecar.server import RunningSidecar, start_sidecar


def local_settings(data_dir: Path, **fields: object) -> Settings:
    """A server on a free loopback port keeping its state in ``data_dir``; authentication
    is off unless ``fields`` turn it on."""
    defaults: dict[str, object] = {"grpc_host": "127.0.0.1", "grpc_port": 0, "api_auth": False}
    return Settings(**{**defaults, "data_dir": data_dir, **fields})


def weekly_counters(pattern: str, size: int, error_probability: float) -> CounterConfig:
    """One counter rule: events matching ``pattern`` get scalable filters, counted weekly too."""
    rule = {
        "pattern": pattern,
        "type": "bloom_scalable",
        "size": size,
        "error_probability": error_probability,
        "date_cohort": "weekly",
    }
    return CounterConfig.from_mappings([rule])


async def started(settings: Settings) -> RunningServer:
    """A server restored and taking calls; the caller stops it (or crashes it)."""
    server = await start_server(settings)
    await server.wait_ready()
    return server


@asynccontextmanager
async def running(settings: Settings, *, ready: bool = True) -> AsyncIterator[RunningServer]:
    """A started server (restored and taking calls, unless ``ready`` is false), stopped after."""
    server = await start_server(settings)
    try:
        if ready:
            await server.wait_ready()
        yield server
    finally:
        await server.stop(grace=None)


@asynccontextmanager
async def sidecar_of(
    api_address: str, data_dir: Path, **fields: object
) -> AsyncIterator[RunningSidecar]:
    """A sidecar relaying to the api server at ``api_address``, ready, stopped after;
    ``fields`` set its other settings (as ``local_settings``)."""
    settings = local_settings(data_dir, mode=Mode.SIDECAR, analytics_host=api_address, **fields)
    sidecar = await start_sidecar(settings)
    try:
        await sidecar.wait_ready()
        yield sidecar
    finally:
        await sidecar.stop(grace=None)


async def crash(server: RunningServer) -> None:
    """Gone as with kill -9: no snapshot at shutdown, the log not closed."""
    await server.front.server.stop(None)


@asynccontextmanager
async def stub_of(server: RunningServer) -> AsyncIterator[pb_grpc.KimballServiceStub]:
    """A ``KimballService`` stub over a network channel to ``server``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield pb_grpc.KimballServiceStub(channel)


@asynccontextmanager
async def gateway_of(server, channel=None) -> AsyncIterator[RunningGateway]:
    """The REST gateway onto a running server or sidecar, as ``kimball serve`` starts it (the
    in-process channel, unless ``channel`` is given), on a free loopback port."""
    if isinstance(channel, IntakeChannel):  # as a worker: counts and scrapes handed over
        gateway = await start_gateway(
            "127.0.0.1",
            0,
            channel,
            channel.metrics,
            server.checker,
            exposition=channel.exposition,
        )
    else:
        gateway = await start_gateway(
            "127.0.0.1", 0, channel or server.local_channel, server.metrics, server.checker
        )
    try:
        yield gateway
    finally:
        await gateway.stop()


@asynccontextmanager
async def intake_channel(server: RunningServer) -> AsyncIterator[IntakeChannel]:
    """The channel a REST worker process uses (``rest_workers``), over a socket pair to the
    engine's intake in this process: batches validated on the channel's side, other calls
    forwarded. Closing it (the gateway's stop does) ends the intake's side."""
    engine_end, worker_end = socket.socketpair()
    intake = IntakeServer(
        server.ingestor,
        server.local_channel,
        lambda: server.front.gate.is_open,
        server.metrics.exposition,
        server.metrics,
    )
    serving = asyncio.ensure_future(intake.serve(engine_end))
    channel = IntakeChannel(worker_end)
    await channel.connect()
    try:
        yield channel
    finally:
        await channel.close()
        await serving


@asynccontextmanager
async def rest_client(gateway: RunningGateway, **options) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose relative URLs go to ``gateway``."""
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.port}", **options) as session:
        yield session

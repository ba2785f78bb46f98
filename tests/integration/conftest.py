"""Fixtures of the integration tests: a real Kimball gRPC server and REST gateway in this
process on free loopback ports, and real object storage servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from support.cluster_replicas import clear
from support.in_process import gateway_of, intake_channel, local_settings, rest_client, running
from support.nats_cluster import NatsCluster
from support.object_servers import ObjectServer, gcs_emulator, moto_server

from gateway.server import RunningGateway, network_channel
from kimball_grpc.app import RunningServer
from kimball_grpc.config.settings import Settings
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Override in a test module to start the server differently (auth: see test_auth.py)."""
    return local_settings(tmp_path)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    async with running(settings) as started:
        yield started


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.KimballServiceStub:
    return pb_grpc.KimballServiceStub(channel)


@pytest.fixture
def integration(channel: grpc.aio.Channel) -> integration_grpc.KimballIntegrationStub:
    return integration_grpc.KimballIntegrationStub(channel)


@pytest.fixture(params=["local", "network", "workers"])
async def rest(server: RunningServer, request) -> AsyncIterator[RunningGateway]:
    """The gateway as ``kimball serve`` runs it (local channel), as ``kimball gateway``
    does (a gRPC channel over loopback) and as a REST worker process of ``kimball serve
    --rest-workers`` does (the intake channel to the engine): every REST test runs over
    all three."""
    if request.param == "workers":
        async with intake_channel(server) as channel, gateway_of(server, channel) as gateway:
            yield gateway
        return
    channel = (
        server.local_channel
        if request.param == "local"
        else network_channel(
            f"127.0.0.1:{server.grpc_port}", server.front.settings.max_response_bytes
        )
    )
    async with gateway_of(server, channel) as gateway:
        yield gateway


@pytest.fixture
async def http(rest: RunningGateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with rest_client(rest) as session:
        yield session


@pytest.fixture(scope="module")
def s3_server() -> Iterator[ObjectServer]:
    """A real S3-compatible server (moto) on loopback, one per test module."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[ObjectServer]:
    """A real GCS emulator on loopback, one per test module."""
    with gcs_emulator() as server:
        yield server


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory) -> Iterator[NatsCluster]:
    """A real 3-node NATS JetStream cluster on loopback, one per test module (mark the
    module ``xdist_group("nats-cluster")``, so its tests share a worker)."""
    cluster = NatsCluster.create(tmp_path_factory.mktemp("nats"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def fresh_stream(nats_cluster: NatsCluster) -> NatsCluster:
    """The NATS cluster without the event stream and the buckets: each test
    starts its replicas afresh."""
    await clear(nats_cluster)
    return nats_cluster

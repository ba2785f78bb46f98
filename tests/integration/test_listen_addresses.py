"""Where both servers listen: by default every address, so that clients reach them over
IPv4 and IPv6 alike (127.0.0.1 and ::1); a specific address, only its own family."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.in_process import local_settings, running
from support.reachability import LOOPBACKS, ipv6_loopback

from gateway.server import RunningGateway, start_gateway
from kimball_grpc.app import RunningServer
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.outbound.channels import target_address

pytestmark = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")


async def grpc_answers(host: str, port: int) -> bool:
    """Whether the gRPC health service answers at ``host:port``."""
    async with grpc.aio.insecure_channel(target_address(host, port)) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            return False
    return True


async def rest_answers(host: str, port: int) -> bool:
    """Whether REST answers ``/alive`` at ``host:port``."""
    url = f"http://{target_address(host, port)}/alive"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientConnectorError:
        return False


@asynccontextmanager
async def serving(
    tmp_path, grpc_host: str, rest_host: str
) -> AsyncIterator[tuple[RunningServer, RunningGateway]]:
    """A server with gRPC on ``grpc_host`` and REST on ``rest_host``, free ports."""
    async with running(local_settings(tmp_path, grpc_host=grpc_host)) as server:
        gateway = await start_gateway(rest_host, 0, server.local_channel, None, None)
        try:
            yield server, gateway
        finally:
            await gateway.stop()


async def answers(server: RunningServer, gateway: RunningGateway) -> dict[str, tuple[bool, bool]]:
    """Per loopback address: whether gRPC answers there, whether REST does."""
    return {
        host: (await grpc_answers(host, server.grpc_port), await rest_answers(host, gateway.port))
        for host in LOOPBACKS
    }


@pytest.mark.parametrize("host", ["::", "0.0.0.0"])
async def test_every_address_takes_ipv4_and_ipv6(tmp_path, host):
    # The default "::" and "0.0.0.0" alike: gRPC's runtime takes both wildcards as every
    # address, IPv4 and IPv6, and REST does the same (the event loop alone would make an
    # IPv6 socket IPv6 only: IPv4 clients, Docker's port mapping and probes would fail).
    async with serving(tmp_path, host, host) as (server, gateway):
        assert await answers(server, gateway) == {h: (True, True) for h in LOOPBACKS}


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_a_specific_address_takes_only_its_family(tmp_path, host):
    async with serving(tmp_path, host, host) as (server, gateway):
        found = await answers(server, gateway)
    assert found == {h: (h == host, h == host) for h in LOOPBACKS}


async def test_the_two_servers_listen_where_each_is_told(tmp_path):
    async with serving(tmp_path, "::1", "127.0.0.1") as (server, gateway):
        assert await answers(server, gateway) == {
            "127.0.0.1": (False, True),
            "::1": (True, False),
        }


async def test_a_host_name_takes_every_address_it_resolves_to(tmp_path):
    resolved = {a[4][0] for a in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    if set(LOOPBACKS) - resolved:
        pytest.skip(f"localhost resolves to {sorted(resolved)} here, not both loopbacks")
    async with serving(tmp_path, "localhost", "localhost") as (server, gateway):
        assert await answers(server, gateway) == {h: (True, True) for h in LOOPBACKS}


async def test_an_address_that_cannot_be_listened_on_is_a_clear_error(tmp_path):
    async with running(local_settings(tmp_path)) as server:
        for host in ("192.0.2.1", "no-such-host.invalid"):  # TEST-NET-1; a reserved name
            with pytest.raises(ConfigError) as refused:
                await start_gateway(host, 0, server.local_channel, None, None)
            assert f"cannot listen for REST on {host}:0" in refused.value.message
    with pytest.raises(ConfigError) as refused:
        async with running(local_settings(tmp_path, grpc_host="192.0.2.1")):
            pass
    assert "cannot listen for gRPC on 192.0.2.1:0" in refused.value.message

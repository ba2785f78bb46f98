"""TLS on a live server, with certificates made by the test: gRPC and REST over TLS for a
client trusting the server's CA; refused in plain text and for a client trusting another
CA; with mutual TLS, refused without a client certificate (or with one of another CA) and
taken with one. The REST gateway (in-process channel, or a TLS channel as `kimball gateway`
uses) and a sidecar's relay work over it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from support.certificates import (
    Certificates,
    client_tls,
    https_context,
    make_certificates,
    server_tls,
)
from support.in_process import local_settings, running, sidecar_of
from support.polling import until
from support.reachability import LOOPBACKS, ipv6_loopback

from gateway.server import RunningGateway, network_channel, start_gateway
from kimball_grpc.app import RunningServer
from kimball_grpc.config.tls import ClientTls
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.outbound.channels import channel_credentials, target_address

TOKEN = "tls-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
HOSTS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6")),
    "localhost",
]


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


@asynccontextmanager
async def tls_server(
    tmp_path: Path, certificates: Certificates, *, mutual: bool = False
) -> AsyncIterator[tuple[RunningServer, RunningGateway]]:
    """A server and its REST gateway (as `kimball serve` runs it), both over TLS."""
    tls = server_tls(certificates, mutual=mutual)
    settings = local_settings(
        tmp_path / "data", grpc_host="::", api_auth=True, api_tokens=(TOKEN,), server_tls=tls
    )
    async with running(settings) as server:
        gateway = await start_gateway(
            "::", 0, server.local_channel, server.metrics, server.checker, tls=tls.context
        )
        try:
            yield server, gateway
        finally:
            await gateway.stop()


async def grpc_call(host: str, port: int, tls: ClientTls | None) -> grpc.StatusCode:
    """The status of an authenticated call over TLS with ``tls`` (plain text without)."""
    address = target_address(host, port)
    channel = (
        grpc.aio.secure_channel(address, channel_credentials(tls))
        if tls
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            await pb_grpc.KimballServiceStub(channel).ListGoals(
                pb.ListGoalsRequest(), metadata=AUTH, timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def rest_call(
    host: str, port: int, context: ssl.SSLContext | None, path: str = "/v0/goals"
) -> int | str:
    """The HTTP status of an authenticated GET over HTTPS with ``context`` (plain HTTP
    without), or the kind of failure when there is no answer."""
    scheme = "https" if context else "http"
    url = f"{scheme}://{target_address(host, port)}{path}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers=headers, ssl=context or False) as response,
        ):
            return response.status
    except aiohttp.ClientConnectorCertificateError:
        return "untrusted certificate"
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, ssl.SSLError):
        return "refused"


@pytest.mark.parametrize("host", HOSTS)
async def test_grpc_and_rest_over_tls_for_a_client_trusting_the_ca(tmp_path, certificates, host):
    async with tls_server(tmp_path, certificates) as (server, gateway):
        assert await grpc_call(host, server.grpc_port, client_tls(certificates.ca)) is (
            grpc.StatusCode.OK
        )
        context = https_context(certificates.ca)
        assert await rest_call(host, gateway.port, context) == 200
        # /ready asks gRPC health over the in-process channel: TLS does not change it.
        assert await rest_call(host, gateway.port, context, "/ready") == 200


async def test_plain_text_and_other_cas_are_refused(tmp_path, certificates):
    async with tls_server(tmp_path, certificates) as (server, gateway):
        for host in LOOPBACKS[:1]:
            assert await grpc_call(host, server.grpc_port, None) is grpc.StatusCode.UNAVAILABLE
            other = client_tls(certificates.other_ca)
            assert await grpc_call(host, server.grpc_port, other) is grpc.StatusCode.UNAVAILABLE
            assert await rest_call(host, gateway.port, None) == "refused"
            other_context = https_context(certificates.other_ca)
            assert await rest_call(host, gateway.port, other_context) == "untrusted certificate"


async def test_mutual_tls_takes_only_clients_with_a_certificate_of_the_ca(tmp_path, certificates):
    stranger = certificates.other_ca.issue(tmp_path / "certs", "stranger", server=False)
    async with tls_server(tmp_path, certificates, mutual=True) as (server, gateway):
        grpc_port, rest_port = server.grpc_port, gateway.port
        ca = certificates.ca
        assert await grpc_call("127.0.0.1", grpc_port, client_tls(ca, certificates.client)) is (
            grpc.StatusCode.OK
        )
        assert await rest_call("127.0.0.1", rest_port, https_context(ca, certificates.client)) == (
            200
        )
        for pair in (None, stranger):
            code = await grpc_call("127.0.0.1", grpc_port, client_tls(ca, pair))
            assert code is grpc.StatusCode.UNAVAILABLE, pair
            assert await rest_call("127.0.0.1", rest_port, https_context(ca, pair)) == "refused"


async def test_the_standalone_gateway_reaches_a_tls_server_over_tls(tmp_path, certificates):
    async with tls_server(tmp_path, certificates, mutual=True) as (server, _):
        channel = network_channel(
            f"localhost:{server.grpc_port}",
            server.front.settings.max_response_bytes,
            client_tls(certificates.ca, certificates.client),
        )
        gateway = await start_gateway("127.0.0.1", 0, channel, None, None)
        try:
            assert await rest_call("127.0.0.1", gateway.port, None) == 200
            assert await rest_call("127.0.0.1", gateway.port, None, "/ready") == 200
        finally:
            await gateway.stop()


@pytest.mark.parametrize("trusted", [True, False])
async def test_a_sidecar_relays_to_a_tls_api_server(tmp_path, certificates, trusted):
    async with tls_server(tmp_path, certificates, mutual=True) as (api, _):
        ca = certificates.ca if trusted else certificates.other_ca
        async with (
            sidecar_of(
                f"localhost:{api.grpc_port}",
                tmp_path / "sidecar",
                analytics_token=TOKEN,
                client_tls=client_tls(ca, certificates.client),
            ) as sidecar,
            grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel,
        ):
            await pb_grpc.KimballServiceStub(channel).TrackEvent(
                pb.TrackEventRequest(event=pb.Event(event_name="signup", user_id="u1"))
            )

            def delivered() -> bool:
                return any(c.name == "signup" for c in api.engine.counters(""))

            if trusted:
                await until(delivered, "the event relayed over TLS", timeout=10)
            else:  # the relay does not trust the api server: nothing goes out
                await until(lambda: sidecar.sender.failures >= 2, "failed connections")
                assert not delivered() and sidecar.spool.pending == 1

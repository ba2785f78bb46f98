"""The edges of both servers, tried with raw sockets on 127.0.0.1 and ::1: connections
that send nothing, headers and bodies that trickle in, too many connections; gRPC
clients that ping too often, open too many streams, or keep a connection too long."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from support.in_process import local_settings, running
from support.metrics import samples
from support.reachability import ipv6_loopback

from gateway.server import RunningGateway, start_gateway
from kimball_grpc.app import RunningServer
from kimball_grpc.config.settings import HttpLimits
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


HOSTS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")),
]
QUICK = HttpLimits(header_timeout_s=0.4, body_timeout_s=0.4, keepalive_timeout_s=1.5)
SLOW = 5.0  # seconds a test waits for what should come much sooner


@asynccontextmanager
async def gateway(
    server: RunningServer, host: str = "127.0.0.1", limits: HttpLimits = QUICK
) -> AsyncIterator[RunningGateway]:
    started = await start_gateway(
        host, 0, server.local_channel, server.metrics, server.checker, limits
    )
    try:
        yield started
    finally:
        await started.stop()


@asynccontextmanager
async def raw(
    host: str, port: int
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def answer_and_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), SLOW)


def body_of(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def metric(server: RunningServer, name: str, **labels: str) -> float:
    return samples(server.metrics.registry).get((name, tuple(sorted(labels.items()))), 0.0)


GET_ALIVE = b"GET /alive HTTP/1.1\r\nHost: kimball\r\n\r\n"


@pytest.fixture
async def server(tmp_path) -> AsyncIterator[RunningServer]:
    async with running(local_settings(tmp_path)) as started:
        yield started


# -- REST ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server, host):
    async with gateway(server, host) as rest:
        async with raw(host, rest.port) as (reader, _):
            assert await answer_and_close(reader) == b""  # closed, nothing said: no request
        async with raw(host, rest.port) as (reader, writer):  # one that asks is answered
            writer.write(GET_ALIVE)
            assert (await reader.readuntil(b"ok!")).startswith(b"HTTP/1.1 200 OK")
    assert metric(server, "kimball_http_timeouts_total", phase="headers") == 1


@pytest.mark.parametrize("host", HOSTS)
async def test_headers_trickling_in_past_the_header_timeout_get_408_and_a_close(server, host):
    async with gateway(server, host) as rest, raw(host, rest.port) as (reader, writer):
        writer.write(b"GET /alive HTTP/1.1\r\nHost: kimball\r\n")
        closed = asyncio.ensure_future(answer_and_close(reader))
        while not closed.done():  # a header line every 50 ms: each in time, the whole not
            writer.write(b"X-Slow: yes\r\n")
            await asyncio.wait([closed], timeout=0.05)
        answer = closed.result()

    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert body_of(answer)["error"]["what"] == (
        "The request headers did not arrive within 0.4 s (KIMBALL_HTTP_HEADER_TIMEOUT)"
    )


async def test_a_kept_alive_connection_idles_until_the_keepalive_timeout_not_the_header_one(
    server,
):
    async with gateway(server) as rest, raw("127.0.0.1", rest.port) as (reader, writer):
        writer.write(GET_ALIVE)
        await reader.readuntil(b"ok!")
        await asyncio.sleep(QUICK.header_timeout_s * 2)  # idle longer than a header may take
        writer.write(GET_ALIVE)
        assert (await reader.readuntil(b"ok!")).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        assert await answer_and_close(reader) == b""  # then idle: closed by keep-alive
        assert time.monotonic() - started > QUICK.header_timeout_s


def _post(path: str, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: kimball\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("host", HOSTS)
async def test_a_body_trickling_in_past_the_body_timeout_gets_408_and_a_close(server, host):
    body = json.dumps({"event_name": "slow", "user_id": "u1"}).encode()
    async with gateway(server, host) as rest:
        async with raw(host, rest.port) as (reader, writer):
            writer.write(_post("/v0/analytics", len(body)))
            closed = asyncio.ensure_future(answer_and_close(reader))
            for byte in body:  # a byte every 50 ms: the body would need 1.8 s
                if closed.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.wait([closed], timeout=0.05)
            answer = await closed
        assert "slow" not in {c.name for c in server.engine.counters("default")}
        async with raw(host, rest.port) as (reader, writer):  # the same body at once: taken
            writer.write(_post("/v0/analytics", len(body)) + body)
            taken = await reader.readuntil(b"\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert body_of(answer)["error"]["what"] == (
        "The body did not arrive within 0.4 s (KIMBALL_HTTP_BODY_TIMEOUT)"
    )
    assert taken.startswith(b"HTTP/1.1 204 No Content")
    assert "slow" in {c.name for c in server.engine.counters("default")}
    assert metric(server, "kimball_http_timeouts_total", phase="body") == 1


async def test_a_stream_whose_lines_stop_coming_keeps_what_came_and_gets_408(server):
    line = json.dumps({"event_name": "streamed", "user_id": "u1"}).encode() + b"\n"
    async with gateway(server) as rest, raw("127.0.0.1", rest.port) as (reader, writer):
        writer.write(_post("/v0/analytics:stream", 10 * len(line), "application/x-ndjson"))
        writer.write(line * 2)  # two lines, then nothing
        answer = await answer_and_close(reader)

    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    error = body_of(answer)["error"]
    assert (error["accepted"], error["messages"]) == (2, 2)
    assert "KIMBALL_HTTP_BODY_TIMEOUT" in error["what"]


async def test_connections_past_the_cap_are_refused_with_503_and_counted(server):
    limits = HttpLimits(header_timeout_s=SLOW * 2, max_connections=2)
    async with (
        gateway(server, limits=limits) as rest,
        raw("127.0.0.1", rest.port),
        raw("127.0.0.1", rest.port) as (_, held),
    ):
        await _until(lambda: rest.connections.open_connections == 2)
        async with raw("127.0.0.1", rest.port) as (reader, writer):
            writer.write(GET_ALIVE)
            refused = await answer_and_close(reader)
        assert metric(server, "kimball_http_connections") == 2
        held.close()
        await _until(lambda: rest.connections.open_connections == 1)
        async with raw("127.0.0.1", rest.port) as (reader, writer):  # room again
            writer.write(GET_ALIVE)
            assert (await reader.readuntil(b"ok!")).startswith(b"HTTP/1.1 200 OK")

    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 1\r\n" in refused
    assert "KIMBALL_HTTP_MAX_CONNECTIONS" in body_of(refused)["error"]["what"]
    assert metric(server, "kimball_http_connections_refused_total") == 1
    assert metric(server, "kimball_http_connections") == 0


async def test_the_every_address_host_serves_ipv4_and_ipv6(server):
    """``--host [::]`` (the default) must take IPv4 clients too, as the gRPC port does."""
    hosts = ["127.0.0.1", "::1"] if ipv6_loopback() else ["127.0.0.1"]
    async with gateway(server, "::") as rest:
        for host in hosts:
            async with raw(host, rest.port) as (reader, writer):
                writer.write(GET_ALIVE)
                assert (await reader.readuntil(b"ok!")).startswith(b"HTTP/1.1 200 OK")


async def _until(condition, what: str = "the condition") -> None:
    from support.polling import until

    await until(condition, what)


# -- gRPC ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
async def test_a_grpc_connection_that_sends_no_preface_is_closed(tmp_path, host):
    grpc_host = f"[{host}]" if ":" in host else host
    settings = local_settings(tmp_path, grpc_host=grpc_host, grpc_handshake_timeout_s=0.4)
    async with running(settings) as server, raw(host, server.grpc_port) as (reader, _):
        # The server's own SETTINGS frame comes first, then the close.
        assert (await answer_and_close(reader))[3:4] == b"\x04"
        assert reader.at_eof()


def _channel(port: int, *options: tuple[str, int]) -> grpc.aio.Channel:
    # A connection of its own: gRPC would share one between channels to the same address.
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1), *options]
    )


def _pinging_every(milliseconds: int) -> tuple[tuple[str, int], ...]:
    return (
        ("grpc.keepalive_time_ms", milliseconds),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    )


async def _subscription_outcome(channel: grpc.aio.Channel, seconds: float) -> str:
    """How a quiet subscription ends within ``seconds``: its status, or "open"."""
    call = pb_grpc.KimballServiceStub(channel).Subscribe(pb.SubscribeRequest())

    async def read_all() -> None:
        async for _ in call:
            pass

    try:
        await asyncio.wait_for(read_all(), seconds)
    except TimeoutError:
        return "open"
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def test_grpc_clients_pinging_too_often_are_sent_away_and_others_are_not(tmp_path):
    settings = local_settings(tmp_path, grpc_min_ping_interval_s=1.0, grpc_max_ping_strikes=2)
    async with running(settings) as server:
        async with _channel(server.grpc_port, *_pinging_every(100)) as flooding:
            assert await _subscription_outcome(flooding, SLOW * 2) == "UNAVAILABLE"
        async with _channel(server.grpc_port, *_pinging_every(1200)) as polite:
            assert await _subscription_outcome(polite, 3.0) == "open"


async def test_calls_past_the_streams_of_one_connection_wait_for_a_free_one(tmp_path):
    settings = local_settings(tmp_path, grpc_max_concurrent_streams=2)
    async with running(settings) as server, _channel(server.grpc_port) as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        calls = [stub.Subscribe(pb.SubscribeRequest()) for _ in range(2)]
        reads = [asyncio.ensure_future(call.read()) for call in calls]
        await _until(lambda: server.hub.subscriber_count == 2)
        with pytest.raises(grpc.aio.AioRpcError) as waited:  # both streams taken: it waits
            await stub.ListNamespaces(pb.ListNamespacesRequest(), timeout=0.5)
        assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        async with _channel(server.grpc_port) as other:  # other connections are not held up
            await pb_grpc.KimballServiceStub(other).ListNamespaces(pb.ListNamespacesRequest())
        calls[0].cancel()
        await _until(lambda: server.hub.subscriber_count == 1)
        assert await stub.ListNamespaces(pb.ListNamespacesRequest(), timeout=SLOW) is not None
        calls[1].cancel()
        await asyncio.gather(*reads, return_exceptions=True)


async def test_a_connection_older_than_its_age_ends_after_the_grace_and_the_client_reconnects(
    tmp_path,
):
    settings = local_settings(
        tmp_path, grpc_max_connection_age_s=0.5, grpc_max_connection_age_grace_s=0.3
    )
    async with running(settings) as server, _channel(server.grpc_port) as channel:
        assert await _subscription_outcome(channel, SLOW * 2) == "UNAVAILABLE"
        stub = pb_grpc.KimballServiceStub(channel)
        assert await stub.ListNamespaces(pb.ListNamespacesRequest(), timeout=SLOW) is not None


async def test_a_malformed_request_is_logged_in_one_line_without_what_it_held(server, caplog):
    caplog.set_level(logging.DEBUG)
    user = "user-7Qx9-private"
    async with gateway(server) as rest:
        for malformed in (
            f"GET /v0/predictions?user_id={user}{'x' * 9000} HTTP/1.1\r\nHost: k\r\n\r\n",
            f"GET /alive HTTP/1.1\r\nHost: k\r\nX-User: {user}{'x' * 9000}\r\n\r\n",
        ):
            async with raw("127.0.0.1", rest.port) as (reader, writer):
                writer.write(malformed.encode())
                assert (await answer_and_close(reader)).startswith(b"HTTP/1.0 400 Bad Request")

    said = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.getMessage() for r in said] == [
        "Error handling request from 127.0.0.1: a malformed request (LineTooLong, 400)"
    ] * 2
    assert all(r.exc_info is None for r in said)
    assert not any(user in r.getMessage() for r in caplog.records)

"""Request ids, access log lines and the call and event metrics, on a real server with
authentication on, over gRPC and through the REST gateway (in-process and over the
network, as ``kimball gateway`` runs)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from support.grpc_errors import error_metadata
from support.in_process import gateway_of, local_settings, rest_client, running
from support.metrics import samples
from support.polling import until

from gateway.server import network_channel
from gateway.translate import MAX_BODY_BYTES
from kimball_grpc.app import RunningServer
from kimball_grpc.config.settings import Settings
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

TOKEN = "observability-token"
RIGHT = (("authorization", f"Bearer {TOKEN}"),)
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SERVICE = "kimball.v1.KimballService"
FRESH_ID = re.compile(r"[0-9a-f]{16}")
USER = "user-secret-7"  # a user id: never in an access line


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return local_settings(tmp_path, api_auth=True, api_auth_tokens=(TOKEN,), max_namespaces=2)


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[logging.LogRecord]]:
    """The access log lines of an API (rest, grpc; "" for both) the test wrote."""
    caplog.set_level(logging.INFO, logger="kimball.access")
    return lambda api="": [
        r for r in caplog.records if r.name == "kimball.access" and r.api in (api or r.api)
    ]


@asynccontextmanager
async def rest_of(server: RunningServer, network: bool = False) -> AsyncIterator:
    """An HTTP client to a gateway onto ``server``: in-process, or over a gRPC channel."""
    channel = None
    if network:
        channel = network_channel(f"127.0.0.1:{server.grpc_port}", 64 * 1024 * 1024)
    async with gateway_of(server, channel) as gateway, rest_client(gateway) as http:
        yield http


def track(*users: str, namespace: str = "") -> pb.TrackEventsRequest:
    return pb.TrackEventsRequest(
        events=[pb.Event(event_name="e", user_id=u, namespace=namespace) for u in users]
    )


# -- request ids -----------------------------------------------------------------------


@pytest.mark.parametrize("given", ["client-chosen.1", None, "not sane!", "x" * 200])
async def test_a_grpc_call_gives_back_its_request_id_in_the_trailers(stub, given, access):
    metadata = RIGHT if given is None else (*RIGHT, ("x-request-id", given))
    call = stub.TrackEvents(track(USER), metadata=metadata)
    await call
    echoed = dict(await call.trailing_metadata())["x-request-id"]
    if given == "client-chosen.1":
        assert echoed == given
    else:
        assert FRESH_ID.fullmatch(echoed)
    await until(lambda: access("grpc"), "the call's access line")  # once it has ended
    [line] = access("grpc")
    assert line.request_id == echoed


async def test_a_refused_grpc_call_keeps_its_request_id_and_its_error_details(stub):
    bad = pb.TrackEventsRequest(events=[pb.Event(event_name="", user_id=USER)])
    call = stub.TrackEvents(bad, metadata=(*RIGHT, ("x-request-id", "req-bad")))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.value.trailing_metadata())["x-request-id"] == "req-bad"
    assert error_metadata(refused.value)  # the ErrorInfo is still there


@pytest.mark.parametrize("network", [False, True], ids=["local", "network"])
async def test_a_rest_request_echoes_its_request_id_and_passes_it_to_grpc(server, network, access):
    async with rest_of(server, network) as http:
        headers = {**BEARER, "X-Request-Id": "rest-1"}
        async with http.post(
            "/v0/analytics", json=[{"event_name": "e", "user_id": USER}], headers=headers
        ) as response:
            assert response.status == 204
            assert response.headers["X-Request-Id"] == "rest-1"
        async with http.get("/alive") as response:
            assert FRESH_ID.fullmatch(response.headers["X-Request-Id"])
        async with http.get("/v0/analytics", headers={"X-Request-Id": "a b"}) as response:
            assert response.status == 401  # refused answers carry it too
            assert FRESH_ID.fullmatch(response.headers["X-Request-Id"])
    assert next(r.request_id for r in access("rest")) == "rest-1"
    # Over the network the server sees a gRPC call, logged under the same id.
    if network:
        await until(lambda: access("grpc"), "the gRPC call's access line")
    assert [r.request_id for r in access("grpc")] == (["rest-1"] if network else [])


# -- access lines ----------------------------------------------------------------------


async def test_one_access_line_per_rest_request_with_its_declared_route(server, access):
    body = b'[{"event_name": "e", "user_id": "' + USER.encode() + b'"}]'
    async with rest_of(server) as http:
        async with http.post(
            "/v0/analytics", data=body, headers={**BEARER, "Content-Type": "application/json"}
        ) as response:
            assert response.status == 204
        async with http.get(f"/v0/featureSpecs/{USER}", headers=BEARER) as response:
            answer = await response.read()
            spec_id = response.headers["X-Request-Id"]
        async with http.get(f"/v0/predictions?user_id={USER}") as response:
            assert response.status == 401
    posted, spec, refused = access("rest")
    assert (posted.method, posted.route, posted.status) == ("POST", "/v0/analytics", 204)
    assert (posted.bytes_in, posted.bytes_out) == (len(body), 0)
    assert (spec.method, spec.route, spec.status) == ("GET", "/v0/featureSpecs/{name}", 404)
    assert (spec.bytes_in, spec.bytes_out, spec.request_id) == (0, len(answer), spec_id)
    assert (refused.route, refused.status) == ("/v0/predictions", 401)
    assert all(line.duration_ms > 0 for line in (posted, spec, refused))
    assert not [r for r in access() if USER in r.getMessage() or USER in str(r.__dict__)]


async def test_one_access_line_per_grpc_call_with_its_code_and_bytes(stub, access):
    request = track(USER, "other-user")
    answer = await stub.TrackEvents(request, metadata=RIGHT)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetAnalytics(pb.GetAnalyticsRequest())  # no token
    await until(lambda: len(access("grpc")) == 2, "both calls' access lines")
    ok, refused = access("grpc")
    assert (ok.grpc_method, ok.grpc_type, ok.grpc_code) == (
        f"/{SERVICE}/TrackEvents",
        "unary",
        "OK",
    )
    assert (ok.bytes_in, ok.bytes_out) == (request.ByteSize(), answer.ByteSize())
    assert (refused.grpc_method, refused.grpc_code) == (
        f"/{SERVICE}/GetAnalytics",
        "UNAUTHENTICATED",
    )
    assert ok.duration_ms > 0
    assert not [r for r in access() if USER in r.getMessage() or USER in str(r.__dict__)]


async def test_no_access_line_when_the_access_log_is_off(settings, access):
    async with running(replace(settings, access_log=False)) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            await pb_grpc.KimballServiceStub(channel).TrackEvents(track(USER), metadata=RIGHT)
        async with gateway_of(server) as gateway:
            gateway_off = await _gateway_without_access_log(server)
            try:
                async with rest_client(gateway_off) as http, http.get("/alive") as response:
                    assert response.status == 200
            finally:
                await gateway_off.stop()
            async with rest_client(gateway) as http, http.get("/alive") as response:
                assert response.status == 200
    # The gateway started with the access log on wrote its one line; nothing else did.
    assert [(r.api, r.route) for r in access()] == [("rest", "/alive")]


async def _gateway_without_access_log(server: RunningServer):
    from gateway.server import start_gateway

    return await start_gateway(
        "127.0.0.1", 0, server.local_channel, server.metrics, server.checker, access_log=False
    )


# -- metrics ---------------------------------------------------------------------------


def grpc_series(method: str, grpc_type: str = "unary", service: str = SERVICE) -> tuple:
    return (("grpc_method", method), ("grpc_service", service), ("grpc_type", grpc_type))


def handled(method: str, code: str, grpc_type: str = "unary", service: str = SERVICE) -> tuple:
    return tuple(sorted((*grpc_series(method, grpc_type, service), ("grpc_code", code))))


async def test_grpc_metrics_count_streams_refusals_and_unknown_methods(server, channel, stub):
    async def batches():
        for i in range(3):
            yield track(f"u{i}")

    await stub.StreamEvents(batches(), metadata=RIGHT)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.TrackEvents(track("u"))  # no token
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", metadata=RIGHT)
    assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
    events = [{"event_name": "e", "user_id": "r"}]
    async with (  # in-process: REST requests, not gRPC calls
        rest_of(server) as http,
        http.post("/v0/analytics", json=events, headers=BEARER) as response,
    ):
        assert response.status == 204
    got = samples(server.metrics.registry)
    stream = grpc_series("StreamEvents", "client_stream")
    assert got[("grpc_server_started_total", stream)] == 1
    assert got[("grpc_server_msg_received_total", stream)] == 3
    assert got[("grpc_server_msg_sent_total", stream)] == 1
    assert got[("grpc_server_handled_total", handled("StreamEvents", "OK", "client_stream"))] == 1
    assert got[("grpc_server_handled_total", handled("TrackEvents", "UNAUTHENTICATED"))] == 1
    unknown_series = handled("unknown", "UNIMPLEMENTED", "bidi_stream", "unknown")
    assert got[("grpc_server_handled_total", unknown_series)] == 1
    assert ("grpc_server_handled_total", handled("TrackEvents", "OK")) not in got
    assert not [name for name, labels in got if "NoSuchMethod" in str(labels)]


def events_counted(server: RunningServer) -> dict[str, float]:
    got = samples(server.metrics.registry)
    return {
        f"{name.removeprefix('kimball_events_').removesuffix('_total')}:{labels[0][1]}": value
        for (name, labels), value in got.items()
        if name in ("kimball_events_ingested_total", "kimball_events_refused_total") and value
    }


async def test_events_are_counted_by_api_and_refusals_by_reason(server, stub):
    await stub.TrackEvents(track("a", "b", "c"), metadata=RIGHT)
    bad = pb.TrackEventsRequest(
        events=[*track("d", "e", "f").events, pb.Event(event_name="", user_id="g")]
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.TrackEvents(bad, metadata=RIGHT)  # the whole batch of 4
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.TrackEvents(track("h"))  # no token: its events are not read
    await stub.TrackEvents(track("i", namespace="second"), metadata=RIGHT)
    with pytest.raises(grpc.aio.AioRpcError):  # a third namespace: past max_namespaces
        await stub.TrackEvents(track("j", "k", namespace="third"), metadata=RIGHT)
    async with rest_of(server) as http:
        events = [{"event_name": "e", "user_id": u} for u in ("l", "m")]
        async with http.post("/v0/analytics", json=events, headers=BEARER) as response:
            assert response.status == 204
        async with http.post("/v0/analytics", json=events) as response:
            assert response.status == 401
        as_json = {**BEARER, "Content-Type": "application/json"}
        async with http.post("/v0/analytics", data=b"[{", headers=as_json) as response:
            assert response.status == 400  # not JSON: its events cannot be told
        too_big = b"[" + b" " * MAX_BODY_BYTES + b"]"
        async with http.post("/v0/analytics", data=too_big, headers=as_json) as response:
            assert response.status == 413
        async with http.get("/v0/analytics", headers=BEARER) as response:
            assert response.status == 200  # reads are neither
        async with http.get("/v0/analytics") as response:
            assert response.status == 401
    server.front.gate.is_open = False  # as while the state is restored
    with pytest.raises(grpc.aio.AioRpcError) as starting:
        await stub.TrackEvents(track("n"), metadata=RIGHT)
    assert starting.value.code() is grpc.StatusCode.UNAVAILABLE
    assert events_counted(server) == {
        "ingested:grpc": 4,
        "ingested:rest": 2,
        "refused:invalid": 4 + 1,
        "refused:unauthenticated": 2,
        "refused:limit": 2,
        "refused:too_large": 1,
        "refused:unavailable": 1,
    }

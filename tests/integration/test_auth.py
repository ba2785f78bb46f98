"""Authentication on gRPC: every method of both services and reflection needs a bearer
token from the configured ones; health checks do not."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.in_process import local_settings
from support.metrics import samples

from kimball_grpc.api.auth import TokenChecker, TokenSet, generated_token, load_api_tokens
from kimball_grpc.api.rate_limited_log import BURST_LINES
from kimball_grpc.config.settings import Settings
from kimball_grpc.generated import features_proto_pb2 as ipb
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

TOKENS = ("first-secret", "second-secret")
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def settings(tmp_path) -> Settings:
    return local_settings(tmp_path, api_auth=True, api_auth_tokens=TOKENS)


def methods() -> list[tuple[str, str]]:
    """(path, shape) of every method of both services, and of reflection."""
    out = []
    for service in (
        pb.DESCRIPTOR.services_by_name["KimballService"],
        ipb.DESCRIPTOR.services_by_name["KimballIntegration"],
    ):
        for m in service.methods:
            shape = (
                ("stream" if m.client_streaming else "unary")
                + "_"
                + ("stream" if m.server_streaming else "unary")
            )
            out.append((f"/{service.full_name}/{m.name}", shape))
    out.append(("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "stream_stream"))
    return out


async def call(channel, path: str, shape: str, metadata) -> grpc.StatusCode:
    """Call ``path`` with an empty request; the status code it ends with."""

    async def one_empty():
        yield b""

    try:
        if shape == "unary_unary":
            await channel.unary_unary(path)(b"", metadata=metadata, timeout=5)
        elif shape == "unary_stream":
            async for _ in channel.unary_stream(path)(b"", metadata=metadata, timeout=0.5):
                pass
        elif shape == "stream_unary":
            await channel.stream_unary(path)(one_empty(), metadata=metadata, timeout=5)
        else:
            async for _ in channel.stream_stream(path)(one_empty(), metadata=metadata, timeout=5):
                pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("path", "shape"), methods())
@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-secret"),),
        (("authorization", "Basic first-secret"),),
        (("authorization", "Bearer"),),
        (("authorization", "first-secret"),),
    ],
    ids=["no-header", "wrong-token", "wrong-scheme", "no-token", "no-scheme"],
)
async def test_every_method_refuses_a_missing_or_wrong_token(channel, path, shape, metadata):
    assert await call(channel, path, shape, metadata) == UNAUTHENTICATED


@pytest.mark.parametrize(("path", "shape"), methods())
@pytest.mark.parametrize(
    "authorization", ["Bearer first-secret", "bearer second-secret", "BEARER  first-secret "]
)
async def test_every_method_accepts_a_right_token(channel, path, shape, authorization):
    code = await call(channel, path, shape, (("authorization", authorization),))
    assert code != UNAUTHENTICATED


async def test_refused_call_changes_nothing(stub) -> None:
    request = pb.TrackEventRequest(event=pb.Event(event_name="a", user_id="u"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.TrackEvent(request)
    assert info.value.code() == UNAUTHENTICATED
    assert info.value.details() == "Missing or invalid authorization header"
    ok = (("authorization", "Bearer first-secret"),)
    analytics = await stub.GetAnalytics(pb.GetAnalyticsRequest(), metadata=ok)
    assert list(analytics.counts) == []


async def test_health_is_open(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_token_checker_needs_a_token() -> None:
    with pytest.raises(ValueError):
        TokenSet([])
    assert not TokenChecker(TokenSet(["t"])).allows(None)
    assert TokenChecker(TokenSet(["t", "u"])).allows("Bearer u")


def test_configured_tokens_win_over_a_generated_one(tmp_path) -> None:
    configured = load_api_tokens(local_settings(tmp_path, api_auth_tokens=("x",)))
    assert configured is not None and configured.tokens.accepted == (b"x",)
    assert not (tmp_path / "api-token").exists()
    token, path = generated_token(tmp_path)
    assert path == tmp_path / "api-token" and len(token) >= 32
    assert generated_token(tmp_path) == (token, path)
    generated = load_api_tokens(local_settings(tmp_path))
    assert generated is not None and generated.tokens.accepted == (token.encode(),)


@pytest.mark.parametrize(
    "values",
    [("Bearer wrong-secret", "Bearer first-secret"), ("Bearer first-secret",) * 2],
    ids=["wrong-then-right", "right-twice"],
)
async def test_a_call_carrying_two_tokens_is_refused_whatever_they_are(channel, values):
    twice = tuple(("authorization", value) for value in values)
    once = (("authorization", "Bearer first-secret"),)
    for path, shape in methods():
        assert await call(channel, path, shape, twice) == UNAUTHENTICATED
        assert await call(channel, path, shape, once) != UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary("/kimball.v1.KimballService/ListNamespaces")(b"", metadata=twice)
    assert info.value.details() == "More than one authorization header: send exactly one"


async def test_each_refused_call_is_one_log_line_rate_limited_and_counted(channel, server, caplog):
    caplog.set_level(logging.DEBUG)
    path = "/kimball.v1.KimballService/TrackEvent"
    for _ in range(3 * BURST_LINES):
        await call(channel, path, "unary_unary", (("authorization", "Bearer wrong-secret"),))

    lines = [r for r in caplog.records if r.name == "kimball_grpc.api.auth"]
    # A burst, then one line every few seconds (the rest are counted, and said later).
    assert BURST_LINES <= len(lines) < 2 * BURST_LINES
    line = lines[0].getMessage()
    assert line.startswith(f"refused a grpc call to {path} from ipv4:127.0.0.1:")
    assert "wrong-secret" not in line
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)
    refused = samples(server.metrics.registry)
    assert refused[("kimball_unauthenticated_requests_total", (("api", "grpc"),))] == 30


async def test_health_list_answers_without_a_token_and_logs_nothing(channel, caplog):
    caplog.set_level(logging.DEBUG)
    health = health_pb2_grpc.HealthStub(channel)

    answer = await health.List(health_pb2.HealthListRequest())

    statuses = {name: status.status for name, status in answer.statuses.items()}
    assert statuses[""] == health_pb2.HealthCheckResponse.SERVING
    assert statuses["kimball.v1.KimballService"] == health_pb2.HealthCheckResponse.SERVING
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []

"""The in-process channel answers as a network channel to the same server does."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from support.polling import until

from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.app import RunningServer
from kimball_grpc.codec.error_details import error_metadata
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc


def _failure(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    return error.code(), error.details(), error_metadata(error.trailing_metadata())


async def test_answers_and_state_are_those_of_the_network_channel(
    server: RunningServer, stub: pb_grpc.KimballServiceStub
):
    local = pb_grpc.KimballServiceStub(server.local_channel)
    event = pb.Event(namespace="shop", event_name="view", user_id="u1")

    answer = await local.TrackEvents(pb.TrackEventsRequest(events=[event, event]))

    assert answer.accepted == 2
    over_network = await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace="shop"))
    assert await local.GetAnalytics(pb.GetAnalyticsRequest(namespace="shop")) == over_network
    assert {c.name: c.count for c in over_network.counts}["view"] == 1


async def test_a_domain_error_is_the_same_status_details_and_error_info(
    server: RunningServer, stub: pb_grpc.KimballServiceStub
):
    local = pb_grpc.KimballServiceStub(server.local_channel)
    bad = pb.TrackEventRequest(event=pb.Event(event_name="", user_id="u"))

    with pytest.raises(grpc.aio.AioRpcError) as over_network:
        await stub.TrackEvent(bad)
    with pytest.raises(grpc.aio.AioRpcError) as locally:
        await local.TrackEvent(bad)

    assert _failure(locally.value) == _failure(over_network.value)
    assert locally.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(locally.value.trailing_metadata())  # names the parameter


async def test_an_unknown_method_is_unimplemented(server: RunningServer):
    call = server.local_channel.unary_unary("/kimball.v1.KimballService/NoSuchMethod")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"")

    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_a_subscription_over_it_answers_as_over_the_network(server: RunningServer):
    local = pb_grpc.KimballServiceStub(server.local_channel)
    call = local.Subscribe(pb.SubscribeRequest(event_names=["signup"]))
    await call.initial_metadata()  # the subscription is in place before any event

    await local.TrackEvent(pb.TrackEventRequest(event=pb.Event(event_name="signup", user_id="u")))
    first = await call.read()
    call.cancel()

    assert (first.event.event_name, first.event.user_id) == ("signup", "u")
    await until(lambda: server.hub.subscriber_count == 0, "the cancelled call to unsubscribe")


async def test_a_refused_subscription_fails_as_over_the_network(server: RunningServer, stub):
    bad = pb.SubscribeRequest(after_sequence=server.ingestor.last_sequence + 5)
    with pytest.raises(grpc.aio.AioRpcError) as over_network:
        await stub.Subscribe(bad).read()
    call = pb_grpc.KimballServiceStub(server.local_channel).Subscribe(bad)
    with pytest.raises(grpc.aio.AioRpcError) as locally:
        await call.read()

    assert _failure(locally.value) == _failure(over_network.value)
    assert locally.value.code() is grpc.StatusCode.OUT_OF_RANGE


async def test_bidirectional_calls_are_refused_clearly():
    call = LocalChannel([], []).stream_stream("/test.Any/Call")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        call(iter(()))

    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


def _channel_to(behavior) -> LocalChannel:
    handler = grpc.unary_unary_rpc_method_handler(behavior)
    generic = grpc.method_handlers_generic_handler("test.Slow", {"Call": handler})
    return LocalChannel([generic], [])


async def test_a_call_past_its_timeout_is_deadline_exceeded_and_the_handler_cancelled():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(request, context):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    call = _channel_to(hang).unary_unary("/test.Slow/Call")

    with pytest.raises(grpc.aio.AioRpcError) as late:
        await call(b"", timeout=0.05)

    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert started.is_set() and cancelled.is_set()


async def test_an_unexpected_handler_error_is_unknown_and_logged(caplog):
    async def broken(request, context):
        raise RuntimeError("boom")

    call = _channel_to(broken).unary_unary("/test.Slow/Call")

    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(b"")

    assert failed.value.code() is grpc.StatusCode.UNKNOWN
    assert "boom" in failed.value.details()
    assert "Unexpected error in /test.Slow/Call" in caplog.text


async def test_a_handler_setting_a_code_without_aborting_fails_the_call():
    async def not_found(request, context):
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such thing")
        return b""

    call = _channel_to(not_found).unary_unary("/test.Slow/Call")

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(b"")

    assert (failed.value.code(), failed.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "no such thing",
    )

"""Long-lived streams on a real server: resuming past the last sequence number, the end of
every stream at shutdown, a subscriber that falls behind, and the limits on open streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from support.grpc_errors import error_metadata
from support.in_process import gateway_of, local_settings, rest_client, started, stub_of
from support.metrics import samples
from support.polling import until

from kimball_grpc.codec.error_details import error_info
from kimball_grpc.config.settings import PredictionTarget, Settings
from kimball_grpc.generated import features_proto_pb2 as ipb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

API = "/kimball.v1.KimballService/"


def events(names: list[str], namespace: str = "") -> pb.TrackEventsRequest:
    return pb.TrackEventsRequest(
        events=[
            pb.Event(namespace=namespace, event_name=n, user_id=f"u{i}")
            for i, n in enumerate(names)
        ]
    )


async def expect(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def held_open(messages: list[pb.TrackEventsRequest]) -> AsyncIterator[pb.TrackEventsRequest]:
    """``messages``, then nothing, without ending: a ``StreamEvents`` client that stays."""
    for message in messages:
        yield message
    await asyncio.Event().wait()


async def subscribers(server, count: int) -> None:
    await until(lambda: server.hub.subscriber_count == count, f"{count} subscribers")


# -- resuming ----------------------------------------------------------------------------


async def test_resuming_past_the_last_sequence_number_is_out_of_range_at_once(stub, server):
    await stub.TrackEvents(events(["a", "b", "c"]))
    head = server.ingestor.last_sequence
    call = stub.Subscribe(pb.SubscribeRequest(after_sequence=head + 10), timeout=5)
    error = await expect(call.read(), grpc.StatusCode.OUT_OF_RANGE)  # not DEADLINE_EXCEEDED
    assert error.details() == (
        f"after_sequence {head + 10} is past the last sequence number, {head}: "
        f"resume from {head} or lower"
    )
    assert error_metadata(error) == {"after_sequence": str(head + 10), "last_sequence": str(head)}
    assert server.hub.subscriber_count == 0


async def test_resuming_from_the_last_sequence_number_goes_on_live(stub, server):
    await stub.TrackEvents(events(["a", "b", "c"]))
    head = server.ingestor.last_sequence
    call = stub.Subscribe(pb.SubscribeRequest(after_sequence=head))
    await subscribers(server, 1)
    await stub.TrackEvents(events(["d"]))
    got = await asyncio.wait_for(call.read(), 5)
    assert (got.sequence, got.event.event_name, got.replayed) == (head + 1, "d", False)
    call.cancel()


# -- several events per response ---------------------------------------------------------


async def test_a_subscriber_asking_for_batches_gets_every_event_in_few_responses(stub, server):
    call = stub.Subscribe(pb.SubscribeRequest(namespace="shop", max_events_per_response=100))
    plain = stub.Subscribe(pb.SubscribeRequest(namespace="shop"))  # one event per response
    await subscribers(server, 2)
    names = [f"e{i}" for i in range(250)]
    await stub.TrackEvents(events(names, "shop"))
    await stub.TrackEvents(events(["other"], "blog"))
    responses = []
    while sum(len(r.events) for r in responses) < len(names):
        responses.append(await asyncio.wait_for(call.read(), 5))
    assert [len(r.events) for r in responses] == [100, 100, 50]
    got = [e for r in responses for e in r.events]
    assert [e.event.event_name for e in got] == names
    assert [e.sequence for e in got] == sorted(e.sequence for e in got)
    assert all(e.user_hash and not e.dropped and not e.replayed for e in got)
    assert all(not r.HasField("event") and r.dropped == 0 for r in responses)
    one = [await asyncio.wait_for(plain.read(), 5) for _ in range(3)]
    assert [(r.event.event_name, len(r.events)) for r in one] == [("e0", 0), ("e1", 0), ("e2", 0)]
    assert one[0].sequence == got[0].sequence and one[0].user_hash == got[0].user_hash
    call.cancel()
    plain.cancel()


async def test_a_subscriber_gets_stream_events_as_sent(stub, server):
    # StreamEvents messages are read into plain field tuples: subscribers still get each
    # event whole, its namespace resolved.
    call = stub.Subscribe(pb.SubscribeRequest())
    await subscribers(server, 1)
    sent = [
        pb.Event(event_name="view", user_id="u1"),
        pb.Event(namespace="shop", event_name="buy", user_id="u2", value=2.5, ensure_goal=True),
    ]
    sent[1].datetime.FromSeconds(1_700_000_000)

    async def messages():
        yield pb.TrackEventsRequest(events=sent)

    assert (await stub.StreamEvents(messages())).accepted == 2
    got = [(await asyncio.wait_for(call.read(), 5)).event for _ in sent]
    sent[0].namespace = "default"
    assert got == sent
    call.cancel()


async def test_a_streams_messages_reach_the_log_in_the_order_sent(stub, server):
    # The next message is accepted while the last one is being made durable: the order of
    # the log (what subscribers see, and what a goal's prior events depend on) stays the
    # order sent, over several streams at once.
    call = stub.Subscribe(pb.SubscribeRequest())
    await subscribers(server, 1)

    async def messages(stream: int):
        for i in range(40):
            yield pb.TrackEventsRequest(
                events=[pb.Event(event_name=f"s{stream}", user_id=f"{i}-{j}") for j in range(5)]
            )

    answers = await asyncio.gather(*(stub.StreamEvents(messages(s)) for s in range(3)))
    assert [(a.accepted, a.messages) for a in answers] == [(200, 40)] * 3
    got = [(await asyncio.wait_for(call.read(), 5)).event for _ in range(600)]
    for stream in range(3):
        users = [e.user_id for e in got if e.event_name == f"s{stream}"]
        assert users == [f"{i}-{j}" for i in range(40) for j in range(5)]
    call.cancel()


async def test_a_bad_message_after_messages_in_flight_counts_them_and_stops_there(stub, server):
    async def messages():
        for i in range(10):
            yield events([f"ok{i}"] * 3)
        yield events(["bad", ""])
        yield events(["after"])

    error = await expect(stub.StreamEvents(messages()), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details().startswith("message 10: ")
    assert "(30 events accepted before it)" in error.details()
    response = await stub.GetAnalytics(pb.GetAnalyticsRequest())
    names = {c.name for c in response.counts}
    assert {f"ok{i}" for i in range(10)} <= names and not names & {"bad", "after"}


@pytest.mark.parametrize("bad", [1001, 2**32 - 1])
async def test_more_events_per_response_than_the_limit_is_refused(stub, server, bad):
    call = stub.Subscribe(pb.SubscribeRequest(max_events_per_response=bad), timeout=5)
    error = await expect(call.read(), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details() == f"max_events_per_response is at most 1000, not {bad}"
    assert server.hub.subscriber_count == 0


# -- a subscriber that falls behind ------------------------------------------------------


class TestFallingBehind:
    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        return local_settings(tmp_path, subscriber_buffer_events=5)

    async def test_it_sees_what_it_dropped_and_resumes_from_the_log(self, stub, server):
        call = stub.Subscribe(pb.SubscribeRequest(namespace="shop"))
        await subscribers(server, 1)
        await stub.TrackEvents(events(["first"], "shop"))
        first = await asyncio.wait_for(call.read(), 5)
        assert first.dropped == 0
        # One batch, applied before the subscriber runs again: 20 events of "shop" among
        # 30, the last 5 of them held (positions 25..29: shop, blog, shop, shop, blog).
        names = [f"e{i}" for i in range(30)]
        batch = [
            pb.Event(namespace="blog" if i % 3 == 2 else "shop", event_name=n, user_id="u")
            for i, n in enumerate(names)
        ]
        await stub.TrackEvents(pb.TrackEventsRequest(events=batch))
        after = [await asyncio.wait_for(call.read(), 5) for _ in range(3)]
        assert [a.event.event_name for a in after] == ["e25", "e27", "e28"]
        assert [a.dropped for a in after] == [17, 17, 17]  # the shop events missed, no more
        call.cancel()

        # Resuming after the last event read before the gap gets every one from the log.
        resumed = stub.Subscribe(
            pb.SubscribeRequest(namespace="shop", after_sequence=first.sequence)
        )
        again = [await asyncio.wait_for(resumed.read(), 5) for _ in range(20)]
        resumed.cancel()
        shop = [n for i, n in enumerate(names) if i % 3 != 2]
        assert [a.event.event_name for a in again] == shop
        assert all(a.replayed and a.dropped == 0 for a in again)
        assert [a.sequence for a in again] == sorted(a.sequence for a in again)

    async def test_batches_carry_what_was_dropped_and_resume_from_the_log(self, stub, server):
        call = stub.Subscribe(pb.SubscribeRequest(namespace="shop", max_events_per_response=10))
        await subscribers(server, 1)
        await stub.TrackEvents(events(["first"], "shop"))
        (first,) = (await asyncio.wait_for(call.read(), 5)).events
        await stub.TrackEvents(events([f"e{i}" for i in range(30)], "shop"))
        late = await asyncio.wait_for(call.read(), 5)
        # The ring holds the last 5: the 25 before them are dropped.
        assert ([e.event.event_name for e in late.events], late.dropped) == (
            ["e25", "e26", "e27", "e28", "e29"],
            25,
        )
        call.cancel()
        resumed = stub.Subscribe(
            pb.SubscribeRequest(
                namespace="shop", after_sequence=first.sequence, max_events_per_response=10
            )
        )
        again = [await asyncio.wait_for(resumed.read(), 5) for _ in range(3)]
        resumed.cancel()
        assert [len(r.events) for r in again] == [10, 10, 10]
        assert [e.event.event_name for r in again for e in r.events] == [f"e{i}" for i in range(30)]
        assert all(e.replayed for r in again for e in r.events)


# -- shutdown ----------------------------------------------------------------------------


async def test_shutdown_ends_every_stream_with_unavailable_well_within_the_grace(tmp_path):
    server = await started(local_settings(tmp_path))
    stopped = False
    try:
        async with stub_of(server) as stub:
            idle = stub.Subscribe(pb.SubscribeRequest(namespace="quiet"))
            reading = stub.Subscribe(pb.SubscribeRequest())
            watch = stub.WatchFeatureSpecs(pb.WatchFeatureSpecsRequest())
            await asyncio.wait_for(watch.read(), 5)  # the current set
            await subscribers(server, 2)
            streaming = stub.StreamEvents(held_open([events(["s1", "s2"])]))
            got = [await asyncio.wait_for(reading.read(), 5) for _ in range(2)]
            assert [g.event.event_name for g in got] == ["s1", "s2"]

            begun = time.monotonic()
            await server.stop(grace=10)
            stopped = True
            assert time.monotonic() - begun < 2  # not the 10 s grace period

            for call in (idle, reading, watch):
                error = await expect(call.read(), grpc.StatusCode.UNAVAILABLE)
                assert "shutting down" in error.details()
                assert "after_sequence" in error.details()  # how to resume
                assert error_info(error.trailing_metadata()).reason == "ShuttingDown"
            error = await expect(streaming, grpc.StatusCode.UNAVAILABLE)
            assert "the first 1 messages of this stream (2 events) were accepted" in error.details()
            assert error_metadata(error) == {"messages": "1", "accepted": "2"}
    finally:
        if not stopped:
            await server.stop(grace=None)


class SlowTarget(integration_grpc.KimballIntegrationServicer):
    """A prediction target that answers once released: keeps a unary call in flight."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def Prediction(self, request, context):
        self.asked.set()
        await self.release.wait()
        return ipb.PredictionResponse()


async def test_shutdown_lets_unary_calls_in_flight_finish_and_refuses_new_ones(tmp_path):
    target = SlowTarget()
    target_server = grpc.aio.server()
    integration_grpc.add_KimballIntegrationServicer_to_server(target, target_server)
    port = target_server.add_insecure_port("127.0.0.1:0")
    await target_server.start()
    settings = local_settings(
        tmp_path,
        external_grpc_prediction_targets=(PredictionTarget("slow", "127.0.0.1", port),),
        external_prediction_deadline_ms=30_000,
    )
    server = await started(settings)
    stopping = None
    try:
        async with stub_of(server) as stub:
            in_flight = asyncio.ensure_future(stub.GetPredictions(pb.GetPredictionsRequest()))
            await asyncio.wait_for(target.asked.wait(), 5)
            stopping = asyncio.ensure_future(server.stop(grace=10))
            await until(lambda: server.front.calls.closing, "the shutdown to begin")
            error = await expect(
                stub.ListNamespaces(pb.ListNamespacesRequest()), grpc.StatusCode.UNAVAILABLE
            )
            assert "shutting down" in error.details()
            # Longer than streams get: a unary call keeps the grace period.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), 1.5)
            target.release.set()
            assert (await asyncio.wait_for(in_flight, 5)) == pb.GetPredictionsResponse()
            await asyncio.wait_for(stopping, 5)
    finally:
        if stopping is None:
            await server.stop(grace=None)
        await target_server.stop(None)


# -- limits ------------------------------------------------------------------------------


class TestLimits:
    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        return local_settings(tmp_path, max_streams=3, max_subscribers=2)

    async def test_subscriptions_past_their_limit_are_refused_naming_the_setting(
        self, stub, server
    ):
        first = stub.Subscribe(pb.SubscribeRequest())
        watch = stub.WatchFeatureSpecs(pb.WatchFeatureSpecsRequest())
        await asyncio.wait_for(watch.read(), 5)
        await subscribers(server, 1)

        for call in (
            stub.Subscribe(pb.SubscribeRequest(namespace="shop")),
            stub.WatchFeatureSpecs(pb.WatchFeatureSpecsRequest()),
        ):
            error = await expect(call.read(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert error.details() == (
                "subscriber limit reached: 2 subscribers open at once (KIMBALL_MAX_SUBSCRIBERS)"
            )
            assert error_metadata(error) == {
                "limit": "subscribers",
                "setting": "KIMBALL_MAX_SUBSCRIBERS",
            }
        assert server.hub.subscriber_count == 1  # the refused ones hold nothing

        # A stream that is no subscription still fits, up to the limit on streams.
        streaming = stub.StreamEvents(held_open([events(["a"])]))
        await until(lambda: server.ingestor.last_sequence == 1, "the streamed event")
        error = await expect(
            stub.StreamEvents(held_open([events(["refused"])])), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert "stream limit reached: 3 streams open at once" in error.details()
        assert error_metadata(error) == {"limit": "streams", "setting": "KIMBALL_MAX_STREAMS"}
        assert server.ingestor.last_sequence == 1  # nothing of it accepted

        got = samples(server.metrics.registry)
        assert got[("kimball_limit_refusals_total", (("limit", "subscribers"),))] == 2
        assert got[("kimball_limit_refusals_total", (("limit", "streams"),))] == 1
        for method in ("Subscribe", "WatchFeatureSpecs", "StreamEvents"):
            assert got[("kimball_streams_open", (("method", API + method),))] == 1

        # A closed subscription frees its place.
        first.cancel()
        await subscribers(server, 0)
        again = stub.Subscribe(pb.SubscribeRequest())
        await subscribers(server, 1)
        await stub.TrackEvents(events(["welcome"]))
        assert (await asyncio.wait_for(again.read(), 5)).event.event_name == "welcome"
        for call in (again, watch, streaming):
            call.cancel()

    async def test_a_rest_stream_past_the_limit_is_429(self, stub, server):
        held = [stub.StreamEvents(held_open([])) for _ in range(3)]
        await until(lambda: server.front.calls.open_streams == 3, "three open streams")
        async with gateway_of(server) as gateway, rest_client(gateway) as http:
            body = b'{"event_name": "refused", "user_id": "u1"}\n'
            headers = {"Content-Type": "application/x-ndjson"}
            async with http.post("/v0/analytics:stream", data=body, headers=headers) as answer:
                assert answer.status == 429
                assert "KIMBALL_MAX_STREAMS" in await answer.text()
            for call in held:
                call.cancel()
            await until(lambda: server.front.calls.open_streams == 0, "the streams closed")
            async with http.post("/v0/analytics:stream", data=body, headers=headers) as answer:
                assert answer.status == 200, await answer.text()

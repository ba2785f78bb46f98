"""The kimball.v1 API over a real gRPC server on loopback, good and bad input side by side."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.grpc_errors import error_metadata
from support.in_process import local_settings, weekly_counters
from support.polling import until
from support.worked_example import as_protos

from kimball_grpc.config.settings import Settings
from kimball_grpc.core.limits import MAX_BATCH_EVENTS, MAX_MESSAGE_BYTES, MAX_NAME_LENGTH
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVING = health_pb2.HealthCheckResponse.SERVING


def ev(name: str, user: str, **fields: object) -> pb.Event:
    return pb.Event(event_name=name, user_id=user, **fields)


async def expect(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def counts(stub, namespace: str = "") -> dict[str, int]:
    response = await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace=namespace))
    return {c.name: c.count for c in response.counts if c.type != pb.COUNTER_TYPE_WEEKLY}


async def worked_example(stub) -> None:
    """The worked example (support/worked_example.py): global 6, goal_1 4 with
    {feature_1: 1}, feature_1 2."""
    await stub.TrackEvents(pb.TrackEventsRequest(events=as_protos("other")))


async def test_spec_example_analytics(stub) -> None:
    await worked_example(stub)
    response = await stub.GetAnalytics(pb.GetAnalyticsRequest())
    by_name = {c.name: c for c in response.counts}
    assert response.counts[0].name == "global_counter"
    assert response.counts[0].type == pb.COUNTER_TYPE_INTERNAL
    assert by_name["global_counter"].count == 6
    goal = by_name["goal_1"]
    assert (goal.count, goal.goal, goal.type) == (4, True, pb.COUNTER_TYPE_NAMED)
    assert {s.name: s.count for s in goal.single_event_counts} == {"feature_1": 1}
    assert {tuple(c.events): c.count for c in goal.event_counts} == {(): 3, ("feature_1",): 1}
    assert by_name["feature_1"].count == 2
    assert not by_name["feature_1"].event_counts
    assert not by_name["feature_1"].goal


async def test_predictions_for_all_goals(stub) -> None:
    await worked_example(stub)
    response = await stub.GetPredictions(pb.GetPredictionsRequest())
    assert set(response.goals) == {"goal_1"}
    assert response.goals["goal_1"].events["feature_1"].bayes == 0.5


async def test_predictions_for_events(stub) -> None:
    await worked_example(stub)
    response = await stub.GetPredictions(pb.GetPredictionsRequest(events=["feature_1"]))
    goal = response.goals["goal_1"]
    assert (goal.yes, goal.no, goal.likelihood) == (0.25, 0.25, 1.0)
    assert 0 < goal.probability < 1
    assert not goal.note


async def test_predictions_for_events_including_the_goal_give_a_note(stub) -> None:
    await worked_example(stub)
    response = await stub.GetPredictions(pb.GetPredictionsRequest(events=["goal_1"]))
    goal = response.goals["goal_1"]
    assert goal.note == "Submitted events included this goal, no prediction made"
    assert not goal.HasField("yes")


async def test_predictions_for_unknown_event_is_invalid(stub) -> None:
    await worked_example(stub)
    error = await expect(stub.GetPredictions(pb.GetPredictionsRequest(events=["nope"])), INVALID)
    assert "not known" in error.details()
    assert error_metadata(error) == {"event": "nope"}


async def test_predictions_for_user(stub) -> None:
    await worked_example(stub)
    response = await stub.GetPredictions(pb.GetPredictionsRequest(user_id="u2"))
    goal = response.goals["goal_1"]
    assert (goal.yes, goal.no, goal.likelihood) == (0.25, 0.25, 1.0)


async def test_predictions_for_user_and_events_together_is_invalid(stub) -> None:
    await worked_example(stub)
    request = pb.GetPredictionsRequest(user_id="u2", events=["feature_1"])
    error = await expect(stub.GetPredictions(request), INVALID)
    assert error_metadata(error) == {"user": "u2"}


async def test_predictions_for_user_without_events_is_not_found(stub) -> None:
    await worked_example(stub)
    request = pb.GetPredictionsRequest(user_id="stranger")
    error = await expect(stub.GetPredictions(request), grpc.StatusCode.NOT_FOUND)
    assert error_metadata(error) == {"user": "stranger"}


async def test_predictions_in_an_empty_namespace(stub) -> None:
    response = await stub.GetPredictions(pb.GetPredictionsRequest(namespace="empty"))
    assert dict(response.goals) == {}


async def test_track_event_counts_unique_users(stub) -> None:
    for user in ("a", "b", "a", "a"):
        await stub.TrackEvent(pb.TrackEventRequest(event=ev("signup", user)))
    assert await counts(stub) == {"global_counter": 2, "signup": 2}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (ev("", "u1"), "key"),
        (ev("signup", ""), "key"),
        (ev("x" * (MAX_NAME_LENGTH + 1), "u1"), "event_name"),
        (ev("signup", "u" * (MAX_NAME_LENGTH + 1)), "user_id"),
        (ev("sign\nup", "u1"), "event_name"),
        (ev("pay\u200bment", "u1"), "event_name"),  # invisible: looks like "payment"
        (ev("\u202etxt.exe", "u1"), "event_name"),  # shown reversed
        (pb.Event(namespace="sh\u200bop", event_name="e", user_id="u"), "namespace"),
        (pb.Event(namespace="n" * (MAX_NAME_LENGTH + 1), event_name="e", user_id="u"), "namespace"),
        (ev("signup", "u1", value=math.nan), "value"),
        (ev("signup", "u1", value=math.inf), "value"),
        (ev("signup", "u1", value=1e308), "value"),
        (ev("signup", "u1", value=-1.5e15), "value"),
        (ev("signup", "u1", datetime=Timestamp(seconds=0, nanos=2_000_000_000)), "datetime"),
        (ev("signup", "u1", datetime=Timestamp(seconds=-(10**12))), "datetime"),
    ],
)
async def test_track_event_rejects_bad_input_and_changes_nothing(stub, event, field) -> None:
    await stub.TrackEvent(pb.TrackEventRequest(event=ev("ok", "u0")))
    before = await counts(stub)
    error = await expect(stub.TrackEvent(pb.TrackEventRequest(event=event)), INVALID)
    assert field in error_metadata(error)
    assert await counts(stub) == before


async def test_batch_is_applied_whole(stub) -> None:
    events = [ev("a", "u1"), ev("b", "u2", value=2.5), ev("a", "u3")]
    response = await stub.TrackEvents(pb.TrackEventsRequest(events=events))
    assert response.accepted == 3
    assert await counts(stub) == {"global_counter": 3, "a": 2, "b": 1}


async def test_batch_with_one_bad_event_applies_nothing(stub) -> None:
    events = [ev("a", "u1"), ev("b", "u2"), ev("", "u3")]
    error = await expect(stub.TrackEvents(pb.TrackEventsRequest(events=events)), INVALID)
    assert "event 2" in error.details()
    assert error_metadata(error)["index"] == "2"
    assert await counts(stub) == {}


async def test_batch_over_the_limit_is_invalid(stub) -> None:
    events = [ev("a", f"u{i}") for i in range(MAX_BATCH_EVENTS + 1)]
    await expect(stub.TrackEvents(pb.TrackEventsRequest(events=events)), INVALID)
    assert await counts(stub) == {}


async def test_malformed_protobuf_is_invalid(channel) -> None:
    call = channel.unary_unary("/kimball.v1.KimballService/TrackEvent")(b"\xff\xff\xff")
    error = await expect(call, INVALID)
    assert "malformed protobuf" in error.details()


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/grpc.health.v1.Health/Check", "unary"),
        ("/grpc.health.v1.Health/List", "unary"),
        ("/grpc.health.v1.Health/Watch", "server-stream"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi"),
    ],
)
async def test_malformed_health_and_reflection_requests_are_invalid_and_log_no_traceback(
    channel, caplog, path, shape
) -> None:
    caplog.set_level(logging.DEBUG)
    garbage = b"\xff\xff\xff"
    if shape == "unary":
        call = channel.unary_unary(path)(garbage)
    elif shape == "server-stream":
        call = channel.unary_stream(path)(garbage).read()
    else:
        call = channel.stream_stream(path)(iter([garbage])).read()
    error = await expect(call, INVALID)
    assert "malformed protobuf" in error.details()
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    health = health_pb2_grpc.HealthStub(channel)  # a well-formed request is answered
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING


async def test_non_utf8_string_is_invalid(channel) -> None:
    # Field 1 (event), holding field 2 (event_name) with bytes that are not UTF-8.
    inner = b"\x12\x02\xff\xfe\x1a\x01u"
    call = channel.unary_unary("/kimball.v1.KimballService/TrackEvent")(
        b"\x0a" + bytes([len(inner)]) + inner
    )
    await expect(call, INVALID)


async def test_oversized_message_is_refused(stub) -> None:
    big = ev("a", "u1", namespace="")
    request = pb.TrackEventsRequest(events=[big] * (MAX_MESSAGE_BYTES // 8))
    await expect(stub.TrackEvents(request), grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_stream_applies_each_message_as_it_arrives(stub) -> None:
    async def messages():
        for i in range(3):
            yield pb.TrackEventsRequest(events=[ev("s", f"u{i}-{j}") for j in range(10)])

    response = await stub.StreamEvents(messages())
    assert (response.accepted, response.messages) == (30, 3)
    assert (await counts(stub))["s"] == 30


async def test_stream_stops_at_a_bad_message_keeping_earlier_ones(stub) -> None:
    async def messages():
        yield pb.TrackEventsRequest(events=[ev("s", "u1"), ev("s", "u2")])
        yield pb.TrackEventsRequest(events=[ev("s", "u3"), ev("s", "")])
        yield pb.TrackEventsRequest(events=[ev("s", "u4")])

    error = await expect(stub.StreamEvents(messages()), INVALID)
    assert "message 1" in error.details()
    assert error_metadata(error)["message"] == "1"
    assert (await counts(stub))["s"] == 2


async def test_value_sums_first_occurrences_only(stub) -> None:
    events = [ev("buy", "u1", value=10), ev("buy", "u1", value=99), ev("buy", "u2", value=2.5)]
    await stub.TrackEvents(pb.TrackEventsRequest(events=events))
    response = await stub.GetAnalytics(pb.GetAnalyticsRequest())
    assert {c.name: c.value.sum for c in response.counts}["buy"] == 12.5


async def test_goals_are_created_listed_and_never_unmarked(stub) -> None:
    await stub.CreateGoal(pb.CreateGoalRequest(goal_name="purchase"))
    await stub.TrackEvent(pb.TrackEventRequest(event=ev("signup", "u1", ensure_goal=True)))
    await stub.TrackEvent(pb.TrackEventRequest(event=ev("signup", "u2", ensure_goal=False)))
    response = await stub.ListGoals(pb.ListGoalsRequest())
    assert list(response.goals) == ["purchase", "signup"]
    other = await stub.ListGoals(pb.ListGoalsRequest(namespace="other"))
    assert list(other.goals) == []


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (pb.CreateGoalRequest(goal_name="pay\u200bment"), "goal_name"),
        (pb.CreateGoalRequest(goal_name="\u202etxt.exe"), "goal_name"),
        (pb.CreateGoalRequest(namespace="sh\u200bop", goal_name="buy"), "namespace"),
    ],
)
async def test_goal_names_with_invisible_characters_are_invalid(
    stub, request_message, field
) -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # joiners inside an emoji: fine
    await stub.CreateGoal(pb.CreateGoalRequest(goal_name=family))
    error = await expect(stub.CreateGoal(request_message), INVALID)
    assert field in error_metadata(error)
    assert "invisible" in error.details()
    assert list((await stub.ListGoals(pb.ListGoalsRequest())).goals) == [family]


async def test_create_goal_without_name_is_invalid(stub) -> None:
    error = await expect(stub.CreateGoal(pb.CreateGoalRequest(goal_name="")), INVALID)
    assert error_metadata(error) == {"key": "goal_name"}
    assert list((await stub.ListGoals(pb.ListGoalsRequest())).goals) == []


async def test_namespaces_are_separate(stub) -> None:
    await stub.TrackEvent(pb.TrackEventRequest(event=ev("a", "u1")))
    await stub.TrackEvent(
        pb.TrackEventRequest(event=pb.Event(namespace="shop", event_name="b", user_id="u1"))
    )
    response = await stub.ListNamespaces(pb.ListNamespacesRequest())
    assert list(response.namespaces) == ["default", "shop"]
    assert await counts(stub, "shop") == {"global_counter": 1, "b": 1}
    assert await counts(stub, "nowhere") == {}


async def nudge_data(stub) -> None:
    # goal g: reached by u1 (after a, b), u2 (after a), u3 (after c); c and a also done by others.
    events = [ev("a", "u1"), ev("b", "u1"), ev("a", "u2"), ev("c", "u3"), ev("a", "u4")]
    events += [ev("c", "u5"), ev("c", "u6")]
    events += [ev("g", u, ensure_goal=True) for u in ("u1", "u2", "u3")]
    events += [ev("b", "u9")]
    await stub.TrackEvents(pb.TrackEventsRequest(events=events))


async def test_nudges_rank_events_the_user_has_not_done(stub) -> None:
    await nudge_data(stub)
    # bayes: a = 2/3, b = 1/2, c = 1/3. u9 did b.
    response = await stub.GetNudges(pb.GetNudgesRequest(goal="g", user_id="u9"))
    assert [(n.event_name, round(n.prediction, 4)) for n in response.nudges] == [
        ("a", 0.6667),
        ("c", 0.3333),
    ]
    assert (response.goal, response.user_id) == ("g", "u9")
    stranger = await stub.GetNudges(pb.GetNudgesRequest(goal="g", user_id="new"))
    assert [n.event_name for n in stranger.nudges] == ["a", "b", "c"]
    unknown = await stub.GetNudges(pb.GetNudgesRequest(goal="nope", user_id="u9"))
    assert list(unknown.nudges) == []


@pytest.mark.parametrize(
    ("request_fields", "missing"), [({"user_id": "u1"}, "goal"), ({"goal": "g"}, "user_id")]
)
async def test_nudges_need_goal_and_user(stub, request_fields, missing) -> None:
    error = await expect(stub.GetNudges(pb.GetNudgesRequest(**request_fields)), INVALID)
    assert error_metadata(error) == {"key": missing}


async def test_subscription_gets_matching_events_live(stub, server) -> None:
    request = pb.SubscribeRequest(namespace="shop", event_names=["buy"])
    stream = stub.Subscribe(request)
    prefix_stream = stub.Subscribe(pb.SubscribeRequest(event_name_prefix="b"))
    await _wait_for_subscribers(server.hub, 2)
    await stub.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(namespace="shop", event_name="view", user_id="u1"),
                pb.Event(namespace="shop", event_name="buy", user_id="u1", value=3),
                ev("buy", "u2"),
            ]
        )
    )
    got = await asyncio.wait_for(stream.read(), timeout=5)
    assert (got.event.namespace, got.event.event_name, got.event.user_id) == ("shop", "buy", "u1")
    assert got.event.value == 3 and got.dropped == 0
    first = await asyncio.wait_for(prefix_stream.read(), timeout=5)
    second = await asyncio.wait_for(prefix_stream.read(), timeout=5)
    assert [(first.event.namespace, first.sequence), (second.event.namespace,)] == [
        ("shop", got.sequence),
        ("default",),
    ]
    assert second.sequence == first.sequence + 1
    stream.cancel()
    prefix_stream.cancel()


async def _wait_for_subscribers(hub, count: int) -> None:
    """Subscribing is asynchronous: poll, with a deadline, until the server holds them."""
    await until(lambda: hub.subscriber_count >= count, "subscriptions registered", interval=0.01)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"event_names": [""]}, "key"),
        ({"event_names": [f"e{i}" for i in range(1001)]}, "key"),
        ({"event_name_prefix": "p" * (MAX_NAME_LENGTH + 1)}, "event_name_prefix"),
        ({"event_name_prefix": "a\x00"}, "event_name_prefix"),
    ],
)
async def test_subscription_with_bad_filter_is_invalid(stub, request_fields, field) -> None:
    stream = stub.Subscribe(pb.SubscribeRequest(**request_fields))
    error = await expect(stream.read(), INVALID)
    assert field in error_metadata(error)


async def test_deadline_ends_a_subscription(stub) -> None:
    stream = stub.Subscribe(pb.SubscribeRequest(), timeout=0.2)
    await expect(stream.read(), grpc.StatusCode.DEADLINE_EXCEEDED)


class TestWeekly:
    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        return local_settings(tmp_path, counter_config=weekly_counters("^w_", 100, 0.01))

    async def test_weekly_counters_by_iso_week_in_utc(self, stub) -> None:
        def at(when: datetime) -> Timestamp:
            stamp = Timestamp()
            stamp.FromDatetime(when)
            return stamp

        monday = datetime(2024, 1, 1, 12, tzinfo=UTC)  # ISO 2024-W01
        # Sunday 23:30 at UTC-2 is Monday 01:30 UTC: week 2, not week 1.
        late_sunday = datetime(2024, 1, 7, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
        events = [
            ev("w_login", "u1", datetime=at(monday)),
            ev("w_login", "u2", datetime=at(monday)),
            ev("w_login", "u1", datetime=at(late_sunday)),
            ev("plain", "u1", datetime=at(monday)),
        ]
        await stub.TrackEvents(pb.TrackEventsRequest(events=events))
        response = await stub.GetAnalytics(pb.GetAnalyticsRequest())
        weekly = {
            (c.name, c.year, c.week): c.count
            for c in response.counts
            if c.type == pb.COUNTER_TYPE_WEEKLY
        }
        assert weekly == {("w_login", 2024, 1): 2, ("w_login", 2024, 2): 1}
        assert await counts(stub) == {"global_counter": 2, "w_login": 2, "plain": 1}

    async def test_weekly_goal_counters_record_prior_events(self, stub) -> None:
        events = [ev("view", "u1"), ev("w_buy", "u1", ensure_goal=True)]
        await stub.TrackEvents(pb.TrackEventsRequest(events=events))
        response = await stub.GetAnalytics(pb.GetAnalyticsRequest())
        weekly = [c for c in response.counts if c.type == pb.COUNTER_TYPE_WEEKLY]
        assert len(weekly) == 1 and weekly[0].goal
        assert {s.name: s.count for s in weekly[0].single_event_counts} == {"view": 1}


async def test_health_is_serving(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "kimball.v1.KimballService", "KimballIntegration"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(ask()):
        names = {s.name for s in response.list_services_response.service}
        break
    assert {"kimball.v1.KimballService", "KimballIntegration", "grpc.health.v1.Health"} <= names


LONG_NAMESPACE = "n" * (MAX_NAME_LENGTH + 1)


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        ("GetAnalytics", pb.GetAnalyticsRequest(namespace=LONG_NAMESPACE)),
        ("ListGoals", pb.ListGoalsRequest(namespace=LONG_NAMESPACE)),
        ("CreateGoal", pb.CreateGoalRequest(namespace=LONG_NAMESPACE, goal_name="g")),
        ("GetPredictions", pb.GetPredictionsRequest(namespace=LONG_NAMESPACE)),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="bad\x00", events=["a"])),
        ("GetNudges", pb.GetNudgesRequest(namespace=LONG_NAMESPACE, goal="g", user_id="u")),
    ],
)
async def test_every_read_rejects_a_bad_namespace(stub, method, request_message) -> None:
    error = await expect(getattr(stub, method)(request_message), INVALID)
    assert "namespace" in error_metadata(error)
    assert list((await stub.ListNamespaces(pb.ListNamespacesRequest())).namespaces) == []


async def test_subscription_rejects_a_bad_namespace(stub) -> None:
    stream = stub.Subscribe(pb.SubscribeRequest(namespace=LONG_NAMESPACE))
    error = await expect(stream.read(), INVALID)
    assert "namespace" in error_metadata(error)


async def test_reflection_serves_descriptors_as_grpcurl_needs(server) -> None:
    """grpcurl resolves services and message types through reflection, with no proto files."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    def resolve() -> tuple[str, str, str]:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as sync_channel:
            pool = DescriptorPool(ProtoReflectionDescriptorDatabase(sync_channel))
            service = pool.FindServiceByName("kimball.v1.KimballService")
            track = service.FindMethodByName("TrackEvents")
            integration = pool.FindServiceByName("KimballIntegration")
            return (
                track.input_type.fields_by_name["events"].message_type.full_name,
                integration.FindMethodByName("Prediction").output_type.full_name,
                pool.FindMessageTypeByName("kimball.v1.Event")
                .fields_by_name["datetime"]
                .message_type.full_name,
            )

    assert await asyncio.to_thread(resolve) == (
        "kimball.v1.Event",
        "PredictionResponse",
        "google.protobuf.Timestamp",
    )

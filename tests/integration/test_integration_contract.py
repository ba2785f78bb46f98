"""The original KimballIntegration contract, served by Kimball."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from support import worked_example as example
from support.grpc_errors import error_metadata

from kimball_grpc.generated import features_proto_pb2 as ipb
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb


async def stream(integration, events: list[tuple[str, str, str]]):
    async def messages():
        for namespace, name, key in events:
            yield ipb.KimballEvent(namespace=namespace, name=name, key=key)

    return await integration.EventStream(messages())


async def test_event_stream_ingests_like_any_event(integration, stub) -> None:
    response = await stream(
        integration, [("", "feature_1", "u1"), ("", "feature_1", "u2"), ("shop", "buy", "u1")]
    )
    assert response.code == 0
    analytics = await stub.GetAnalytics(pb.GetAnalyticsRequest())
    assert {c.name: c.count for c in analytics.counts} == {"global_counter": 2, "feature_1": 2}
    shop = await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace="shop"))
    assert {c.name: c.count for c in shop.counts} == {"global_counter": 1, "buy": 1}


async def test_event_stream_stops_at_a_bad_event(integration, stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(integration, [("", "a", "u1"), ("", "", "u2"), ("", "a", "u3")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(info.value)["index"] == "1"
    analytics = await stub.GetAnalytics(pb.GetAnalyticsRequest())
    assert {c.name: c.count for c in analytics.counts} == {"global_counter": 1, "a": 1}


async def worked_example(integration, stub) -> None:
    """The worked example (support/worked_example.py) over the event stream, which has no
    ensure_goal: the goal is created first."""
    await stub.CreateGoal(pb.CreateGoalRequest(goal_name=example.GOAL))
    events = [("", name, user) for name, user, _ in example.EVENTS]
    await stream(integration, [*events, ("", "other", example.SIXTH_USER)])


async def test_prediction_for_events(integration, stub) -> None:
    await worked_example(integration, stub)
    response = await integration.Prediction(ipb.PredictionRequest(event_names=["feature_1"]))
    assert [(p.prediction_name, p.yes, p.no) for p in response.predictions] == [
        ("goal_1", 0.25, 0.25)
    ]


async def test_prediction_for_user(integration, stub) -> None:
    await worked_example(integration, stub)
    response = await integration.Prediction(ipb.PredictionRequest(user_id="u2"))
    assert [(p.prediction_name, p.yes, p.no) for p in response.predictions] == [
        ("goal_1", 0.25, 0.25)
    ]
    # u1 reached the goal: no prediction is made for a goal among the user's events.
    reached = await integration.Prediction(ipb.PredictionRequest(user_id="u1"))
    assert list(reached.predictions) == []


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"event_names": ["nope"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"user_id": "u2", "event_names": ["feature_1"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"user_id": "stranger"}, grpc.StatusCode.NOT_FOUND),
        ({}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_prediction_bad_requests(integration, stub, request_fields, code) -> None:
    await worked_example(integration, stub)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await integration.Prediction(ipb.PredictionRequest(**request_fields))
    assert info.value.code() == code


def test_wire_contract_is_the_original() -> None:
    """No package, original names and field numbers: the method paths and tags must not move."""
    service = ipb.DESCRIPTOR.services_by_name["KimballIntegration"]
    assert service.full_name == "KimballIntegration"
    assert [m.name for m in service.methods] == ["EventStream", "Prediction"]
    fields = {
        name: {
            f.name: (f.number, f.type) for f in ipb.DESCRIPTOR.message_types_by_name[name].fields
        }
        for name in (
            "KimballEvent",
            "PredictionRequest",
            "Prediction",
            "PredictionResponse",
            "Response",
        )
    }

    assert fields == {
        "KimballEvent": {
            "namespace": (1, F.TYPE_STRING),
            "name": (2, F.TYPE_STRING),
            "key": (3, F.TYPE_STRING),
        },
        "PredictionRequest": {
            "namespace": (1, F.TYPE_STRING),
            "user_id": (2, F.TYPE_STRING),
            "event_names": (3, F.TYPE_STRING),
        },
        "Prediction": {
            "prediction_name": (1, F.TYPE_STRING),
            "yes": (2, F.TYPE_FLOAT),
            "no": (3, F.TYPE_FLOAT),
        },
        "PredictionResponse": {"predictions": (1, F.TYPE_MESSAGE)},
        "Response": {"code": (1, F.TYPE_INT32)},
    }

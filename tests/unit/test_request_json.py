"""Request JSON to protobuf: the direct build gives ParseDict's message, or ParseDict decides."""

from __future__ import annotations

import json

import pytest
from google.api import http_pb2
from google.protobuf import json_format

from gateway import request_json
from gateway.request_json import LongNumber, RequestJsonError, message_from_json, parse_json
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

EVENT = {"namespace": "shop", "event_name": "view", "user_id": "u1"}

# (message type, JSON text): every one is accepted by ParseDict, and must give its message.
ACCEPTED = [
    (pb.TrackEventsRequest, {"events": [EVENT, {**EVENT, "ensure_goal": True}]}),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "value": 2.5}, {**EVENT, "value": 3}]}),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "value": 0}]}),  # presence kept
    (pb.TrackEventsRequest, {"events": []}),
    (pb.TrackEventsRequest, {}),
    (pb.TrackEventRequest, {"event": EVENT}),
    (pb.GetPredictionsRequest, {"events": ["a", "b"], "user_id": "u"}),
    # From here on ParseDict decides (not plain JSON): the answer must not change.
    (pb.TrackEventsRequest, {"events": [{"eventName": "view", "userId": "u1"}]}),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "datetime": "2024-05-01T10:00:00Z"}]}),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "value": "2.5"}]}),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "value": 2**60}]}),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "value": None}]}),
    (pb.Counter, {"name": "x", "type": "COUNTER_TYPE_NAMED", "year": 2024, "week": 3}),
    (pb.Counter, {"name": "x", "count": "12", "value": {"sum": 1.5}}),
    (pb.GoalPrediction, {"events": {"view": {"bayes": 0.5}}}),
    (http_pb2.HttpRule, {"selector": "a.B", "get": "/v0/x"}),  # one member of a oneof
]

# Refused (by the type checks or by ParseDict): a RequestJsonError naming the field.
REFUSED = [
    (pb.TrackEventsRequest, {"events": [{**EVENT, "unknown": 1}]}, "unknown"),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "value": True}]}, "must be a number"),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "user_id": 7}]}, "user_id"),
    (pb.TrackEventsRequest, {"events": [{**EVENT, "ensure_goal": 1}]}, "ensure_goal"),
    (pb.TrackEventsRequest, {"events": "view"}, "events"),
    (pb.TrackEventsRequest, {"events": [["view"]]}, "events"),
    (pb.Counter, {"year": 2**40}, "year"),
    (pb.Counter, {"year": -1}, "year"),
    (http_pb2.HttpRule, {"get": "/v0/x", "post": "/v0/x"}, "oneof"),
    (pb.SubscribeRequest, {"after_sequence": 1.5}, "after_sequence must be a whole number"),
    (pb.SubscribeRequest, {"after_sequence": "soon"}, "after_sequence must be a whole number"),
    (pb.SubscribeRequest, {"event_names": [None]}, "event_names[0] must not be null"),
    (pb.EvaluateFeaturesRequest, {"user": [1]}, "user must be an object, got a list"),
    (pb.EvaluateFeaturesRequest, {"user": {"n": 10**400}}, "n must be a number that fits"),
]

# (message type, JSON, error message, field path): what a client is told.
NAMED = [
    (
        pb.TrackEventsRequest,
        {"events": [EVENT, {**EVENT, "user_id": 12}]},
        "user_id must be a string, got a number",
        "events[1].user_id",
    ),
    (
        pb.TrackEventsRequest,
        {"events": [{**EVENT, "userId": True}]},
        "userId must be a string, got a boolean",
        "events[0].userId",
    ),
    (
        pb.TrackEventsRequest,
        {"events": [{**EVENT, "value": "12.5x"}]},
        "value must be a number, got a string",
        "events[0].value",
    ),
    (
        pb.TrackEventsRequest,
        {"events": [{**EVENT, "datetime": 1700000000}]},
        "datetime must be an RFC 3339 date-time such as 2024-01-07T23:30:00Z, got a number",
        "events[0].datetime",
    ),
    (
        pb.SubscribeRequest,
        {"after_sequence": -1},
        "after_sequence must be a whole number from 0 to 18446744073709551615, got a number",
        "after_sequence",
    ),
    (
        pb.EvaluateFeaturesRequest,
        {"user": {"plan": {"tiers": [1, LongNumber(5000)]}}},
        "tiers[1] must be a number that fits a double, got a number of 5000 digits",
        "user.plan.tiers[1]",
    ),
]


@pytest.mark.parametrize(("message_type", "data"), ACCEPTED)
def test_gives_the_message_parse_dict_gives(message_type, data):
    expected = json_format.ParseDict(json.loads(json.dumps(data)), message_type())

    message = message_from_json(json.loads(json.dumps(data)), message_type)

    assert message == expected
    assert message.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize(("message_type", "data", "named"), REFUSED)
def test_refuses_what_parse_dict_refuses_and_says_what(message_type, data, named):
    with pytest.raises(RequestJsonError) as refused:
        message_from_json(data, message_type)

    assert named in refused.value.what


@pytest.mark.parametrize(("message_type", "data", "what", "field"), NAMED)
def test_a_wrong_type_is_named_with_its_field_and_the_type_expected(
    message_type, data, what, field
):
    with pytest.raises(RequestJsonError) as refused:
        message_from_json(data, message_type)

    assert refused.value.what == what
    assert refused.value.details["field"] == field


def test_integers_too_long_to_convert_are_kept_as_their_length():
    digits = "7" * 5000  # past int()'s default limit of 4,300 digits

    data = parse_json(f'{{"a": [-{digits}, 12]}}'.encode())

    assert isinstance(data["a"][0], LongNumber) and data["a"][0].digits == 5000
    assert data["a"][1] == 12
    with pytest.raises(RequestJsonError, match="user_id must be a string, got a number of 5000"):
        message_from_json({"events": [{**EVENT, "user_id": data["a"][0]}]}, pb.TrackEventsRequest)
    with pytest.raises(ValueError):
        parse_json(b'{"a": ' + digits.encode() + b",}")  # still invalid JSON


def test_plain_events_are_built_without_parse_dict(monkeypatch):
    """The point of the direct build: a batch of plain events never pays for ParseDict."""

    def unexpected(*args, **kwargs):
        raise AssertionError("ParseDict called for plain JSON")

    monkeypatch.setattr(request_json.json_format, "ParseDict", unexpected)
    events = [{**EVENT, "user_id": f"u{i}", "value": i / 2} for i in range(100)]

    message = message_from_json({"events": events}, pb.TrackEventsRequest)

    assert [e.user_id for e in message.events] == [f"u{i}" for i in range(100)]
    assert message.events[3].value == 1.5


def test_json_that_is_not_plain_still_goes_to_parse_dict(monkeypatch):
    calls = []
    parse = json_format.ParseDict
    monkeypatch.setattr(
        request_json.json_format,
        "ParseDict",
        lambda data, message: calls.append(data) or parse(data, message),
    )

    message_from_json({"events": [{"eventName": "view"}]}, pb.TrackEventsRequest)

    assert calls == [{"events": [{"eventName": "view"}]}]

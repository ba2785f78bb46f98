"""Request JSON to protobuf: the direct build gives ParseDict's message, or ParseDict decides."""

from __future__ import annotations

import json

import pytest
from google.api import http_pb2
from google.protobuf import json_format

from gateway import request_json
from gateway.request_json import RequestJsonError, message_from_json
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

# Refused by ParseDict (or by the booleans check before it): a RequestJsonError naming it.
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

"""``plain_events``: a REST worker reads plain JSON events straight into events, exactly
as the request message would give them, and leaves anything else to the message path."""

from __future__ import annotations

import json

import pytest

from gateway.request_json import message_from_json, parse_json, plain_events
from kimball_grpc.codec.proto_mapping import event_from_proto
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb


def through_message(data: dict) -> list:
    return [event_from_proto(e) for e in message_from_json(data, pb.TrackEventsRequest).events]


@pytest.mark.parametrize(
    "events",
    [
        [{"event_name": "signup", "user_id": "u1"}],
        [{"namespace": "ns", "event_name": "buy", "user_id": "u2", "value": 3}],
        [{"event_name": "buy", "user_id": "u2", "value": 2.5, "ensure_goal": True}],
        [{"event_name": "buy", "user_id": "u2", "value": None}],  # null: not set
        [{"event_name": "buy", "user_id": "u2", "value": -(2**53)}],
        [],
        [{"user_id": "only a user"}],  # refused later by the same validation
    ],
)
def test_plain_events_are_what_the_message_gives(events):
    data = parse_json(json.dumps({"events": events}))
    assert plain_events(data) == through_message(data)


@pytest.mark.parametrize(
    "events",
    [
        [{"event_name": "a", "user_id": "u", "datetime": "2024-01-07T23:30:00Z"}],
        [{"event_name": "a", "user_id": "u", "eventName": "b"}],  # a JSON name, unknown key
        [{"event_name": "a", "user_id": 7}],
        [{"event_name": "a", "user_id": "u", "value": True}],
        [{"event_name": "a", "user_id": "u", "value": "3"}],
        [{"event_name": "a", "user_id": "u", "value": 2**53 + 1}],
        [{"event_name": "a", "user_id": "u", "ensure_goal": 1}],
        [{"event_name": "café", "user_id": "u"}],
        ["not an object"],
    ],
)
def test_anything_else_is_left_to_the_message_path(events):
    assert plain_events({"events": events}) is None


def test_a_non_finite_value_and_a_lone_surrogate_are_left_to_the_message_path():
    assert plain_events(parse_json('{"events": [{"event_name": "a", "value": NaN}]}')) is None
    assert (
        plain_events(parse_json('{"events": [{"event_name": "a", "user_id": "\\ud800"}]}')) is None
    )
    assert plain_events({"events": [], "other": 1}) is None

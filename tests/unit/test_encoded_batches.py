"""Event batches as the log keeps them and as REST workers hand them to the engine."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.codec.proto_mapping import subscribe_response_wire
from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, prepare_events
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.streaming.subscriptions import EventFilter, SubscriptionHub

WEEK = (2026, 49)
WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def batch() -> list[Event]:
    return [
        Event("plain", "u1", "shop"),
        Event("paid", "u2", "shop", 12.5),
        Event("signup", "u3", "", None, WHEN, True),
        Event("plain", "u4", "shop", 0.0),
    ]


def test_values_and_goals_stay_with_their_events() -> None:
    records = prepare_events(batch(), WEEK)
    decoded = decode_records(encode_records(records))
    assert decoded == records
    assert [(r.value, r.ensure_goal) for r in decoded] == [
        (None, False),
        (12.5, False),
        (None, True),
        (0.0, False),
    ]


async def test_a_subscriber_gets_the_workers_user_ids_and_datetimes() -> None:
    events = batch()
    hub = SubscriptionHub()
    subscription = hub.subscribe(EventFilter())
    ingestor = Ingestor(Engine(), hub)
    payload = encode_records(prepare_events(events, WEEK))
    origins = [(e.user_id, e.datetime) for e in events]
    assert await ingestor.accept_encoded(payload, origins) == 4
    wire = subscribe_response_wire(subscription.poll(limit=10), 0, True)
    got = pb.SubscribeResponse.FromString(wire).events
    assert [(e.sequence, e.event.user_id, e.event.namespace) for e in got] == [
        (1, "u1", "shop"),
        (2, "u2", "shop"),
        (3, "u3", "default"),
        (4, "u4", "shop"),
    ]
    assert got[2].event.datetime.ToDatetime(tzinfo=UTC) == WHEN


async def test_origins_that_do_not_match_the_events_change_nothing() -> None:
    events = batch()
    engine = Engine()
    ingestor = Ingestor(engine, SubscriptionHub())
    payload = encode_records(prepare_events(events, WEEK))
    with pytest.raises(ValueError, match="3 origins for 4 events"):
        await ingestor.accept_encoded(payload, [(e.user_id, e.datetime) for e in events[:3]])
    assert engine.namespace_count == 0
    assert ingestor.last_sequence == 0

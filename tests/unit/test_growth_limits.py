"""Growth limits in the core: what a batch adds to the state, and admitting it against the
limits with the batches admitted before it and not yet applied."""

from __future__ import annotations

import pytest
from support.state import encoded_state

from kimball_grpc.codec.state_codec import decode_state
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine, Growth, GrowthKind
from kimball_grpc.core.errors import LimitExceeded
from kimball_grpc.core.events import Event, prepare_event, prepare_goal
from kimball_grpc.core.growth_limits import GrowthLimits
from kimball_grpc.core.limits import StateLimits
from kimball_grpc.core.records import Record

WEEK = (2024, 10)
WEEKLY = CounterConfig.from_mappings(
    [
        {
            "pattern": "^weekly_",
            "type": "bloom_scalable",
            "size": 10,
            "error_probability": 0.01,
            "date_cohort": "weekly",
        }
    ]
)


def event(name: str, namespace: str = "a", user: str = "u", goal: bool = False, week=WEEK):
    return prepare_event(Event(name, user, namespace, ensure_goal=goal), week)


def apply(engine: Engine, records: list[Record]) -> None:
    for record in records:
        engine.apply(record)


def test_growth_names_each_new_thing_once_in_order():
    engine = Engine(WEEKLY)
    apply(engine, [event("known"), event("weekly_w")])
    records = [
        event("known", user="v"),  # nothing new
        event("new"),
        event("new", user="v"),  # the same again
        event("known", goal=True),  # an event that becomes a goal
        event("weekly_w", week=(2024, 11)),  # a new week of a weekly event
        event("weekly_w", user="v"),  # a known week
        event("x", namespace="b"),
        prepare_goal("b", "g"),
    ]
    assert engine.growth(records) == [
        Growth(GrowthKind.EVENT_NAME, "a", "new"),
        Growth(GrowthKind.GOAL, "a", "known"),
        Growth(GrowthKind.WEEKLY, "a", "weekly_w", (2024, 11)),
        Growth(GrowthKind.NAMESPACE, "b"),
        Growth(GrowthKind.EVENT_NAME, "b", "x"),
        Growth(GrowthKind.GOAL, "b", "g"),
    ]
    assert engine.growth([event("known", user="w"), prepare_goal("a", "known")]) == [
        Growth(GrowthKind.GOAL, "a", "known")
    ]


def test_the_engine_counts_named_and_weekly_counters_also_when_restored():
    engine = Engine(WEEKLY)
    apply(engine, [event("e"), event("weekly_w"), event("weekly_w", week=(2024, 11))])
    apply(engine, [event("e", namespace="b")])
    assert engine.counter_count == 5  # e, weekly_w and its two weeks; b's e
    assert (engine.namespace_count, engine.event_name_count("a"), engine.goal_count("a")) == (
        2,
        2,
        0,
    )
    restored = decode_state(encoded_state(engine), WEEKLY)
    assert restored.counter_count == 5
    restored.restore_namespace(engine.namespace_objects()[0])  # replacing "a": not twice
    assert restored.counter_count == 5


def test_a_batch_at_the_limit_is_admitted_and_one_past_it_refused():
    engine = Engine()
    limits = GrowthLimits(engine, StateLimits(namespaces=2))
    reservation = limits.admit([event("e", "a"), event("e", "b")])
    with pytest.raises(LimitExceeded) as refused:
        limits.admit([event("e", "c")])  # a and b are not applied yet: counted all the same
    assert refused.value.details == {"limit": "namespaces", "setting": "KIMBALL_MAX_NAMESPACES"}
    apply(engine, [event("e", "a"), event("e", "b")])
    limits.release(reservation)
    with pytest.raises(LimitExceeded):
        limits.admit([event("e", "c")])  # now counted in the engine
    limits.admit([event("f", "a")])  # no new namespace


def test_batches_in_flight_that_add_the_same_thing_count_it_once():
    engine = Engine()
    limits = GrowthLimits(engine, StateLimits(event_names=2))
    first = limits.admit([event("x")])
    second = limits.admit([event("x", user="v"), event("y")])  # x counted once: 2 names
    with pytest.raises(LimitExceeded, match="2 event names in namespace 'a'"):
        limits.admit([event("z")])
    limits.release(first)  # refused by the log, say: x is still held by the second batch
    with pytest.raises(LimitExceeded):
        limits.admit([event("z")])
    limits.release(second)
    limits.release(second)  # a second release changes nothing
    limits.admit([event("x"), event("z")])  # nothing held any more


def test_each_limit_is_checked_with_its_scope():
    engine = Engine(WEEKLY)
    apply(engine, [event("e1"), event("e2")])
    limits = GrowthLimits(
        engine, StateLimits(namespaces=3, event_names=2, counters=3, goals=1, feature_specs=1)
    )
    with pytest.raises(LimitExceeded) as names:
        limits.admit([event("e3")])
    assert names.value.limit == "event_names"
    with pytest.raises(LimitExceeded) as counters:
        limits.admit([event("e", namespace="b"), event("f", namespace="b")])  # 4 counters
    assert counters.value.limit == "counters"
    with pytest.raises(LimitExceeded) as weekly:
        limits.admit([event("weekly_w", namespace="b")])  # a named and a weekly counter
    assert weekly.value.limit == "counters"
    limits.admit([prepare_goal("a", "g")])
    with pytest.raises(LimitExceeded) as goals:
        limits.admit([event("e1", goal=True)])
    assert goals.value.limit == "goals"
    limits.admit([prepare_goal("b", "g")])  # another namespace's goals


def test_a_refused_batch_reserves_nothing():
    engine = Engine()
    limits = GrowthLimits(engine, StateLimits(namespaces=1, event_names=1))
    with pytest.raises(LimitExceeded):
        limits.admit([event("e", "a"), event("f", "a")])
    limits.admit([event("e", "a")])

"""The core engine as plain Python: counters, goals, predictions, state and records."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
from support.state import encoded_state

from kimball_grpc.codec.state_codec import (
    decode_records,
    decode_state,
    encode_records,
)
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import InvalidArgument, InvalidStoredData, NotFound
from kimball_grpc.core.events import Event, iso_week, prepare_event, prepare_events, prepare_goal
from kimball_grpc.core.predictions import EventEvidence, naive_bayes
from kimball_grpc.core.records import EventRecord

NOW = iso_week(datetime(2024, 5, 15, tzinfo=UTC))
WEEKLY = CounterConfig.from_mappings(
    [
        {
            "pattern": ".",
            "type": "bloom_scalable",
            "size": 8,
            "error_probability": 0.001,
            "date_cohort": "weekly",
        }
    ]
)


def track(engine: Engine, name: str, user: str, **fields: object) -> EventRecord:
    record = prepare_event(Event(event_name=name, user_id=user, **fields), NOW)
    engine.apply(record)
    return record


def test_goal_records_combinations_of_prior_events() -> None:
    engine = Engine()
    engine.apply(prepare_goal("", "buy"))
    track(engine, "view", "u1")
    track(engine, "cart", "u1")
    track(engine, "buy", "u1")
    track(engine, "view", "u2")
    track(engine, "buy", "u2")
    track(engine, "buy", "u3")
    track(engine, "buy", "u1")  # a repeat changes nothing
    goal = {c.name: c for c in engine.counters("")}["buy"]
    assert goal.count == 3
    assert dict(goal.event_counts) == {("cart", "view"): 1, ("view",): 1, (): 1}
    assert dict(goal.single_event_counts) == {"view": 2, "cart": 1}


def test_events_after_the_goal_are_not_prior_events() -> None:
    engine = Engine()
    track(engine, "buy", "u1", ensure_goal=True)
    track(engine, "view", "u1")
    goal = {c.name: c for c in engine.counters("")}["buy"]
    assert dict(goal.event_counts) == {(): 1}
    assert engine.event_predictions("") == {}


def test_events_for_user() -> None:
    engine = Engine()
    track(engine, "b", "u1")
    track(engine, "a", "u1")
    track(engine, "c", "u2")
    assert engine.events_for_user("", "u1") == ["a", "b"]
    assert engine.events_for_user("", "nobody") == []
    assert engine.events_for_user("elsewhere", "u1") == []


def test_probability_is_a_normalised_posterior() -> None:
    # 100 users, 10 reach the goal; of 20 who did e, 8 reached it.
    answer = naive_bayes(100, 10, [EventEvidence(20, 8)])
    prior = 11 / 102
    p_e_goal, p_e_other = 9 / 12, 13 / 92
    expected = prior * p_e_goal / (prior * p_e_goal + (1 - prior) * p_e_other)
    assert answer.probability == pytest.approx(expected)
    assert answer.yes == pytest.approx(0.8)
    assert answer.no == pytest.approx(1.2)
    assert answer.likelihood == pytest.approx(0.8 / 1.2)


def test_probability_survives_many_events_without_underflow() -> None:
    evidence = [EventEvidence(1000, 900)] * 500
    answer = naive_bayes(10_000, 1000, evidence)
    assert math.isfinite(answer.probability) and answer.probability > 0.99
    assert answer.yes == pytest.approx(0.9**500)


def test_goal_without_users_gets_a_note() -> None:
    engine = Engine()
    engine.apply(prepare_goal("", "later"))
    track(engine, "view", "u1")
    assert engine.predict_for_events("", ["view"])["later"].note


@pytest.mark.parametrize("events", [[], ["x"] * 1001])
def test_prediction_event_list_limits(events: list[str]) -> None:
    engine = Engine()
    track(engine, "x", "u1")
    with pytest.raises(InvalidArgument):
        engine.predict("", events, "")


def test_prediction_for_a_user_with_more_events_than_a_request_may_name() -> None:
    engine = Engine()
    for i in range(1001):
        track(engine, f"e{i}", "busy")
    track(engine, "g", "other", ensure_goal=True)
    track(engine, "e0", "other")
    assert set(engine.predict("", [], "busy")) == {"g"}


def test_repeated_events_in_a_prediction_count_once() -> None:
    engine = Engine()
    track(engine, "a", "u1")
    track(engine, "g", "u1", ensure_goal=True)
    track(engine, "a", "u2")
    once = engine.predict_for_events("", ["a"])
    assert engine.predict_for_events("", ["a", "a"]) == once


def test_user_without_events_is_not_found() -> None:
    engine = Engine()
    track(engine, "a", "u1")
    with pytest.raises(NotFound):
        engine.predict_for_user("", "nobody")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_name": "", "user_id": "u"}, "key"),
        ({"event_name": "e", "user_id": "u", "value": math.nan}, "value"),
        ({"event_name": "e", "user_id": "u", "value": True}, "value"),
        ({"event_name": "e", "user_id": "u", "datetime": datetime(2024, 1, 1)}, "datetime"),
        ({"event_name": "e", "user_id": "u\x00"}, "user_id"),
    ],
)
def test_prepare_event_rejects_bad_input(fields: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        prepare_event(Event(**fields), NOW)
    assert field in info.value.details


def test_prepare_event_keeps_no_raw_user_id() -> None:
    record = prepare_event(Event(event_name="e", user_id="alice@example.com"), NOW)
    assert "alice" not in repr(record)
    assert record.namespace == "default"
    assert (record.iso_year, record.iso_week) == (2024, 20)


def test_prepare_events_checks_repeated_fields_as_each_event() -> None:
    # A batch checks each distinct name, namespace and user id once: the records are those
    # of each event alone, and the first bad event is named even where it repeats a field
    # an earlier, good event had, or a bad field an earlier one had in a later place.
    events = [("a", "u1", "", None, None, False), ("a", "u1", "", 2.0, None, True)]
    assert prepare_events(events, NOW) == [prepare_event(e, NOW) for e in events]
    bad = [*events, ("a", "u1", "", math.inf, None, False), ("", "u1", "", None, None, False)]
    with pytest.raises(InvalidArgument) as info:
        prepare_events(bad, NOW)
    assert info.value.details["index"] == "2"
    assert "value" in info.value.details


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (("a", ["u"], "", None, None, False), "user_id"),
        (("a", "u", {}, None, None, False), "namespace"),
        ((["a"], "u", "", None, None, False), "event_name"),
    ],
)
def test_prepare_events_refuses_a_field_of_another_type(fields: tuple, field: str) -> None:
    good = ("a", "u", "", None, None, False)
    with pytest.raises(InvalidArgument) as info:
        prepare_events([good, fields], NOW)
    assert info.value.details["index"] == "1"
    assert field in info.value.details


def populated_engine(seed: int = 7) -> Engine:
    rng = random.Random(seed)
    engine = Engine(WEEKLY)
    engine.apply(prepare_goal("shop", "buy"))
    for _ in range(3000):
        namespace = rng.choice(["", "shop"])
        name = rng.choice(["view", "cart", "buy", "search"])
        when = datetime(2024, 1, 1, tzinfo=UTC).replace(day=rng.randint(1, 28))
        value = rng.choice([None, rng.uniform(0, 10)])
        track(
            engine,
            name,
            f"user{rng.randint(0, 700)}",
            namespace=namespace,
            datetime=when,
            value=value,
            ensure_goal=name == "search" and rng.random() < 0.01,
        )
    return engine


def snapshot(engine: Engine) -> dict:
    return {
        ns: [
            (
                c.name,
                c.kind,
                c.iso_week,
                c.count,
                round(c.value_sum, 9),
                dict(c.event_counts),
                dict(c.single_event_counts),
            )
            for c in engine.counters(ns)
        ]
        for ns in engine.namespaces()
    }


def test_state_round_trips_exactly() -> None:
    engine = populated_engine()
    data = encoded_state(engine)
    restored = decode_state(data, WEEKLY)
    assert encoded_state(restored) == data
    assert snapshot(restored) == snapshot(engine)
    assert restored.goals("shop") == engine.goals("shop")
    # The restored filters still know their users and keep counting from there.
    for e in (engine, restored):
        track(e, "view", "user1", namespace="shop")
        track(e, "view", "brand-new", namespace="shop")
    assert encoded_state(restored) == encoded_state(engine)


def test_replaying_records_rebuilds_the_same_state() -> None:
    rng = random.Random(3)
    engine = Engine(WEEKLY)
    goal = prepare_goal("", "g")
    engine.apply(goal)
    log = [encode_records([goal])]
    batch = []
    for i in range(2000):
        fields = {"value": rng.random()} if i % 3 else {}
        if i % 7 == 0:
            fields["ensure_goal"] = True
        if i % 5 == 0:
            fields["namespace"] = "other"
        record = prepare_event(
            Event(event_name=rng.choice("abcg"), user_id=f"u{rng.randint(0, 300)}", **fields),
            NOW,
        )
        engine.apply(record)
        batch.append(record)
        if len(batch) == 37:
            log.append(encode_records(batch))
            batch = []
    log.append(encode_records(batch))
    replayed = Engine(WEEKLY)
    for data in log:
        for record in decode_records(data):
            replayed.apply(record)
    assert encoded_state(replayed) == encoded_state(engine)


def test_a_record_batch_holds_events_or_goals_not_both() -> None:
    event = prepare_event(Event(event_name="a", user_id="u"), NOW)
    goal = prepare_goal("", "g")
    assert decode_records(encode_records([goal, goal])) == [goal, goal]
    assert decode_records(encode_records([event])) == [event]
    with pytest.raises(ValueError, match="events or goals"):
        encode_records([event, goal])
    with pytest.raises(ValueError, match="events or goals"):
        encode_records([goal, event])


@pytest.mark.parametrize("data", [b"\xff\xff", b"\x08\x63"])
def test_unreadable_state_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidStoredData):
        decode_state(data)


def test_damaged_filter_is_refused() -> None:
    from kimball_grpc.generated.kimball.storage.v1 import state_pb2

    message = state_pb2.EngineState.FromString(encoded_state(populated_engine()))
    message.namespaces[0].counters[0].filter.slices[0].data = b"short"
    with pytest.raises(InvalidStoredData, match="damaged"):
        decode_state(message.SerializeToString())


def _damaged_batches() -> list[tuple[str, bytes]]:
    from kimball_grpc.generated.kimball.storage.v1 import state_pb2

    events = [
        prepare_event(Event(event_name="a", user_id="u", value=1.0, ensure_goal=True), NOW),
        prepare_event(Event(event_name="b", user_id="v"), NOW),
    ]

    def damaged(change) -> bytes:
        batch = state_pb2.RecordBatch.FromString(encode_records(events))
        change(batch)
        return batch.SerializeToString()

    return [
        ("not readable", b"\xff"),
        ("differ in length", damaged(lambda b: b.iso_week.append(3))),
        ("differ in length", damaged(lambda b: setattr(b, "user_hashes", b"short"))),
        ("do not match", damaged(lambda b: b.values.append(2.0))),
        ("value must be", damaged(lambda b: b.values.__setitem__(0, float("nan")))),
        ("does not hold", damaged(lambda b: b.ensure_goal.append(9))),
        ("name it does not hold", damaged(lambda b: b.event_name.__setitem__(1, 40))),
        ("ISO week", damaged(lambda b: b.iso_week.__setitem__(0, 60))),
        ("both events and goals", damaged(lambda b: b.goals.add(namespace="n", goal_name="g"))),
        ("name", damaged(lambda b: b.strings.__setitem__(0, "bad\x00name"))),
    ]


@pytest.mark.parametrize(("problem", "data"), _damaged_batches())
def test_a_damaged_record_batch_is_refused_saying_what_is_wrong(problem: str, data: bytes) -> None:
    with pytest.raises(InvalidStoredData, match=problem):
        decode_records(data)


def test_weekly_goal_in_a_later_week_still_records_prior_events() -> None:
    engine = Engine(WEEKLY)
    week_1 = datetime(2024, 1, 1, tzinfo=UTC)
    week_2 = datetime(2024, 1, 8, tzinfo=UTC)
    track(engine, "view", "u1", datetime=week_1)
    track(engine, "buy", "u1", datetime=week_1, ensure_goal=True)
    track(engine, "buy", "u1", datetime=week_2)  # repeat for the named counter, new this week
    weekly = {c.iso_week: c for c in engine.counters("") if c.name == "buy" and c.iso_week}
    assert dict(weekly[2].event_counts) == {("view",): 1}
    named = {c.name: c for c in engine.counters("") if not c.iso_week}["buy"]
    assert (named.count, dict(named.event_counts)) == (1, {("view",): 1})


def _damaged_states() -> list[tuple[str, object]]:
    from kimball_grpc.generated.kimball.storage.v1 import state_pb2

    def base() -> state_pb2.EngineState:
        return state_pb2.EngineState.FromString(encoded_state(populated_engine()))

    cases = []
    m = base()
    m.namespaces.append(m.namespaces[0])
    cases.append(("stored twice", m))
    m = base()
    m.namespaces[0].global_counter.kind = "named"
    cases.append(("not internal", m))
    m = base()
    m.namespaces[0].counters[0].count += 1
    cases.append(("disagrees with its filter", m))
    m = base()
    m.namespaces[0].counters[0].value_sum = math.inf
    cases.append(("not finite", m))
    m = base()
    m.namespaces[0].counters[0].filter.slices[0].hashes = 1 << 20
    cases.append(("damaged", m))
    m = base()
    weekly = next(c for c in m.namespaces[0].counters if c.kind == "weekly")
    weekly.iso_week = 99
    cases.append(("does not exist", m))
    m = base()
    m.namespaces[0].name = ""
    cases.append(("namespace", m))
    m = base()
    m.namespaces[0].counters.append(m.namespaces[0].counters[0])
    cases.append(("stored twice", m))
    return cases


@pytest.mark.parametrize(("problem", "message"), _damaged_states())
def test_semantically_damaged_state_is_refused(problem: str, message) -> None:
    with pytest.raises(InvalidStoredData, match=problem):
        decode_state(message.SerializeToString(), WEEKLY)


def _damaged_single_records() -> list[tuple[str, bytes]]:
    from kimball_grpc.generated.kimball.storage.v1 import state_pb2 as spb

    def event(**fields: object) -> bytes:
        good = {
            "strings": ["default", "e"],
            "namespace": [0],
            "event_name": [1],
            "user_hashes": bytes(16),
            "iso_year": [2024],
            "iso_week": [1],
        }
        return spb.RecordBatch(**{**good, **fields}).SerializeToString()

    return [
        ("name", event(strings=["", "e"])),
        ("does not exist", event(iso_week=[99])),
        ("does not exist", event(iso_year=[0])),
        ("value", event(valued=[0], values=[math.nan])),
        ("value", event(valued=[0], values=[1e308])),
        ("goal_name", spb.RecordBatch(goals=[spb.GoalRecord(namespace="d")]).SerializeToString()),
    ]


@pytest.mark.parametrize(("problem", "data"), _damaged_single_records())
def test_semantically_damaged_record_is_refused(problem: str, data: bytes) -> None:
    with pytest.raises(InvalidStoredData, match=problem):
        decode_records(data)

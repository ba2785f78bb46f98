"""Work in steps: a snapshot encoded while the engine goes on changing is the state as of its
freeze, exactly; sorting in steps; the engine's counter count."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from support.state import encoded_state

from kimball_grpc.codec.state_codec import decode_state, state_in_steps
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, iso_week, prepare_event, prepare_goal
from kimball_grpc.core.feature_flags import FeatureSpec, check_spec
from kimball_grpc.core.records import FeatureSpecRecord

WEEK = iso_week(datetime(2024, 5, 15, tzinfo=UTC))
WEEKLY = CounterConfig.from_mappings(
    [{"pattern": ".", "type": "bloom_scalable", "size": 4, "error_probability": 0.01,
      "date_cohort": "weekly"}]
)  # fmt: skip


def track(engine: Engine, name: str, user: str, namespace: str, **fields: object) -> None:
    engine.apply(prepare_event(Event(name, user, namespace, **fields), WEEK))


def populated() -> Engine:
    """A namespace of 700 event names (several steps alone), and 60 small ones, with goals."""
    engine = Engine(WEEKLY)
    engine.apply(prepare_goal("big", "name-3"))
    for i in range(700):
        track(engine, f"name-{i}", f"user-{i % 50}", "big", value=1.0)
    for n in range(60):
        for i in range(5):
            track(engine, f"event-{i}", f"user-{n}-{i}", f"small-{n:02d}", ensure_goal=i == 4)
    return engine


def change_everything(engine: Engine, rng: random.Random, round_: int) -> None:
    """New users in counters read and not read yet, new names, a new namespace, new goals
    and goal tallies, a feature spec."""
    for _ in range(40):
        n = rng.randrange(60)
        track(
            engine, f"event-{rng.randrange(6)}", f"late-{round_}-{rng.random()}", f"small-{n:02d}"
        )
    track(engine, f"name-{rng.randrange(800)}", f"late-user-{round_}", "big", value=2.0)
    track(engine, "name-3", f"user-{round_ % 50}", "big")  # a goal: tallies of prior events
    engine.apply(prepare_goal(f"small-{rng.randrange(60):02d}", f"goal-{round_}"))
    track(engine, "first", "someone", f"new-namespace-{round_}")
    engine.apply(FeatureSpecRecord(f"flag-{round_}", check_spec(FeatureSpec(f"flag-{round_}"))))


def test_a_snapshot_encoded_while_the_engine_changes_is_the_state_as_of_its_freeze() -> None:
    engine = populated()
    expected = encoded_state(engine)
    rng = random.Random(3)

    freeze = engine.freeze()
    steps = state_in_steps(freeze)
    rounds = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            state = b"".join(done.value)
            break
        change_everything(engine, rng, rounds)
        rounds += 1
    engine.thaw()

    assert rounds >= 3  # the changes came between steps, while the state was being read
    assert encoded_state(engine) != expected  # and they were real changes
    assert state == expected
    restored = decode_state(state, WEEKLY)
    assert encoded_state(restored) == expected


def test_one_freeze_at_a_time_and_nothing_is_copied_after_the_thaw() -> None:
    engine = populated()
    engine.freeze()
    with pytest.raises(RuntimeError):
        engine.freeze()
    engine.thaw()
    freeze = engine.freeze()
    engine.thaw()
    big = next(ns for ns in freeze.namespaces if ns.name == "big")
    counter = big.named["name-1"]
    track(engine, "name-1", "after-the-thaw", "big")
    assert freeze.as_of(big, counter) is counter  # the live one: no copy was kept


def test_the_counter_count_follows_new_counters_and_restored_namespaces() -> None:
    engine = populated()
    total = sum(len(engine.counters(ns)) for ns in engine.namespaces())
    assert engine.all_counter_count == total
    restored = decode_state(encoded_state(engine), WEEKLY)
    assert restored.all_counter_count == total
    track(restored, "brand-new", "u", "big")  # a named and a weekly counter
    assert restored.all_counter_count == total + 2
    restored.restore_namespace(decode_state(encoded_state(engine), WEEKLY).namespace_objects()[0])
    assert restored.all_counter_count == total  # the namespace replaced, with its own counters

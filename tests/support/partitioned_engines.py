"""One event set as a single node holds it and as P user partitions hold it.

The routing is the cluster's: an event goes to its user's partition; a goal, created or
made by an event's ``ensure_goal``, goes to every partition, in order with the events
(so each partition tallies the goal's later events as one engine would).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, prepare_event, prepare_goal
from kimball_grpc.core.partitions import partition_of
from kimball_grpc.core.records import EventRecord, GoalRecord, Record

NAMESPACES = ("shop", "default")
WEEKLY_NAMES = ("week_visit", "week_buy")
NAMES = ("view", "cart", "search", "share", "signup", "buy", *WEEKLY_NAMES)
GOALS = ("signup", "buy")  # "buy" created up front, "signup" and "week_buy" by ensure_goal
USERS = 2_000


def counter_config(error_probability: float) -> CounterConfig:
    """The default rules at ``error_probability``; ``week_*`` counted per week too."""
    rule = {"type": "bloom_scalable", "size": 16, "error_probability": error_probability}
    return CounterConfig.from_mappings(
        [{"pattern": "^week_", "date_cohort": "weekly", **rule}, {"pattern": ".*", **rule}]
    )


def workload(seed: int = 18, events: int = 12_000) -> list[Record]:
    """Events of ``USERS`` users (skewed, some with values, over three weeks) in two
    namespaces, a goal created before them and goals made along the way."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    records: list[Record] = [prepare_goal("shop", "buy")]
    for i in range(events):
        user = f"user-{int(USERS * rng.random() ** 2)}"
        name = NAMES[min(int(len(NAMES) * rng.random() ** 1.3), len(NAMES) - 1)]
        namespace = NAMESPACES[i % 3 == 0]
        # Binary fractions: their sums are exact in any order.
        value = rng.randrange(1, 400) / 8 if name in ("buy", "week_buy", "cart") else None
        # Made goals by some of their events: the later ones, ensure_goal or not, are tallied.
        ensure_goal = name in ("signup", "week_buy") and i > events // 4 and rng.random() < 0.2
        when = start + timedelta(minutes=3 * i)
        event = Event(name, user, namespace, value, when, ensure_goal)
        records.append(prepare_event(event, (2026, 10)))
    return records


def routed(records: Iterable[Record], partitions: int) -> list[list[Record]]:
    """Each partition's records, in order."""
    out: list[list[Record]] = [[] for _ in range(partitions)]
    for record in records:
        if isinstance(record, EventRecord):
            if record.ensure_goal:
                goal = GoalRecord(record.namespace, record.event_name)
                for p in range(partitions):
                    out[p].append(goal)
            out[partition_of(record.user_hash, partitions)].append(record)
        else:
            for p in range(partitions):
                out[p].append(record)
    return out


def engines(records: list[Record], partitions: int, config: CounterConfig) -> list[Engine]:
    """One engine per partition, each given its partition's records."""
    out = []
    for part in routed(records, partitions):
        engine = Engine(config)
        for record in part:
            engine.apply(record)
        out.append(engine)
    return out

"""A cluster's answers are a single node's: one event set split by user partition into
P engines, their counts merged, answers every question as one engine given it all."""

from __future__ import annotations

import math

import pytest

from kimball_grpc.api.servicers import analytics_response
from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.counters import CounterKind
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import InvalidArgument, NotFound
from kimball_grpc.core.merged_counts import (
    CounterCounts,
    MergedCounts,
    NamespaceCounts,
    merge,
)
from kimball_grpc.core.partitions import partition_of
from kimball_grpc.core.records import GoalRecord
from kimball_grpc.core.steps import finish
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from tests.support.partitioned_engines import (
    GOALS,
    NAMES,
    NAMESPACES,
    USERS,
    counter_config,
    engines,
    workload,
)

MAX_BYTES = 4 << 20
SOME_USERS = [f"user-{i}" for i in (0, 1, 2, 7, 40, 300, 1_999)] + ["never-seen"]
EVENT_SETS = [["view"], ["view", "cart"], ["search", "share", "week_visit"], ["buy"]]


def merged_of(parts: list[Engine]) -> MergedCounts:
    names = sorted({n for e in parts for n in e.namespaces()})
    return MergedCounts(
        merge(e.namespace_counts(n) for e in parts if n in e.namespaces()) for n in names
    )


def analytics(source: Engine | MergedCounts, namespace: str, page_size: int) -> list[pb.Counter]:
    """Every page of GetAnalytics, as a client reads them."""
    counters: list[pb.Counter] = []
    token = ""
    while True:
        request = pb.GetAnalyticsRequest(namespace=namespace, page_size=page_size, page_token=token)
        response = finish(analytics_response(source, request, MAX_BYTES))
        counters.extend(response.counts)
        token = response.next_page_token
        if not token:
            return counters


def outcome(answer):
    """An answer, or the kind and message of the error raised instead."""
    try:
        return answer()
    except (InvalidArgument, NotFound) as exc:
        return (type(exc).__name__, exc.message, exc.details)


def answers(single: Engine, parts: list[Engine]) -> tuple[dict, dict]:
    """Every question asked of one engine and of the merged parts (per-user ones with the
    user's events from the user's partition)."""
    merged = merged_of(parts)

    def user_events(namespace: str, user: str) -> list[str]:
        return parts[partition_of(hash_key(user), len(parts))].events_for_user(namespace, user)

    one: dict = {"namespaces": single.namespaces()}
    many: dict = {"namespaces": merged.namespaces()}
    for ns in NAMESPACES:
        for page_size in (0, 5):
            one["analytics", ns, page_size] = analytics(single, ns, page_size)
            many["analytics", ns, page_size] = analytics(merged, ns, page_size)
        one["goals", ns] = single.goals(ns)
        many["goals", ns] = merged.goals(ns)
        one["predictions", ns] = single.event_predictions(ns)
        many["predictions", ns] = merged.event_predictions(ns)
        for events in [*EVENT_SETS, ["nope"]]:
            one["by events", ns, *events] = outcome(
                lambda ns=ns, events=events: single.predict_for_events(ns, events)
            )
            many["by events", ns, *events] = outcome(
                lambda ns=ns, events=events: merged.predict_for_events(ns, events)
            )
        for user in SOME_USERS:
            done = user_events(ns, user)
            one["by user", ns, user] = outcome(
                lambda ns=ns, user=user: single.predict_for_user(ns, user)
            )
            many["by user", ns, user] = outcome(
                lambda ns=ns, user=user, done=done: merged.predict_for_user(ns, user, done)
            )
            for goal in [*GOALS, "week_buy", "view"]:
                one["nudges", ns, user, goal] = single.nudges(ns, goal, user)
                many["nudges", ns, user, goal] = merged.nudges(ns, goal, done)
    return one, many


def single_engine(records, config) -> Engine:
    (engine,) = engines(records, 1, config)
    return engine


@pytest.mark.parametrize("partitions", [1, 4, 64])
def test_merged_partitions_answer_as_one_engine(partitions: int) -> None:
    # Filters that make no mistake at this size: every count is exact on both sides, so
    # every answer must be equal, to the last bit.
    records = workload()
    config = counter_config(1e-9)
    one, many = answers(single_engine(records, config), engines(records, partitions, config))
    assert one.keys() == many.keys()
    for key in one:
        assert many[key] == one[key], key
    # The workload exercises what it claims to.
    counters = one["analytics", "shop", 0]
    assert {c.name for c in counters if c.week} == {"week_visit", "week_buy"}
    assert {c.name for c in counters if c.goal} == {"buy", "signup", "week_buy"}
    assert all(c.single_event_counts for c in counters if c.goal)
    assert any(c.value.sum for c in counters)
    assert sum(1 for k, v in one.items() if k[0] == "nudges" and v) > 10
    assert one["by user", "shop", "never-seen"][0] == "NotFound"


def test_unique_counts_agree_within_each_filters_own_error() -> None:
    # The default error probability (0.001) and tiny first slices: some users are lost to
    # false positives, differently on each side (a partition's filters hold other users).
    # Each side undercounts a counter of n users by about p·n on average; allow three
    # times that, plus 3 for small counters.
    p = 0.001
    records = workload()
    config = counter_config(p)
    single = single_engine(records, config)
    merged = merged_of(engines(records, 16, config))
    for ns in NAMESPACES:
        one = analytics(single, ns, 0)
        many = analytics(merged, ns, 0)
        assert [(c.name, c.year, c.week, c.goal) for c in many] == [
            (c.name, c.year, c.week, c.goal) for c in one
        ]
        for a, b in zip(one, many, strict=True):
            tolerance = 3 + 3 * p * a.count
            assert abs(a.count - b.count) <= tolerance, a.name
            for name, n in _tallies(a).items():
                assert abs(_tallies(b).get(name, 0) - n) <= tolerance, (a.name, name)
            assert math.isclose(a.value.sum, b.value.sum, rel_tol=p * 3, abs_tol=400)
    assert single.namespace_counts("shop").global_counter.count <= USERS


def _tallies(counter: pb.Counter) -> dict[str, int]:
    return {s.name: s.count for s in counter.single_event_counts}


def test_merge_adds_counts_and_unites_goals() -> None:
    a = NamespaceCounts(
        "shop",
        CounterCounts("global_counter", CounterKind.INTERNAL, count=3),
        {
            "buy": CounterCounts(
                "buy",
                CounterKind.NAMED,
                count=2,
                value_sum=1.5,
                event_counts={("view",): 1},
                single_event_counts={"view": 1},
            )
        },
        goals=frozenset({"buy"}),
    )
    b = NamespaceCounts(
        "shop",
        CounterCounts("global_counter", CounterKind.INTERNAL, count=4),
        {
            "view": CounterCounts("view", CounterKind.NAMED, count=4),
            "buy": CounterCounts(
                "buy",
                CounterKind.NAMED,
                count=1,
                value_sum=2.0,
                event_counts={("view",): 1, (): 0},
                single_event_counts={"view": 1},
            ),
        },
        goals=frozenset({"signup"}),
    )
    merged = merge([a, b])
    assert merged.global_counter.count == 7
    assert list(merged.named) == ["buy", "view"]
    assert merged.named["buy"] == CounterCounts(
        "buy",
        CounterKind.NAMED,
        count=3,
        value_sum=3.5,
        event_counts={("view",): 2},
        single_event_counts={"view": 2},
    )
    assert merged.goals == {"buy", "signup"}
    assert merge([]) is None
    with pytest.raises(ValueError, match="do not merge"):
        merge([a, NamespaceCounts("other", a.global_counter)])


def test_namespace_counts_are_a_copy() -> None:
    engine = single_engine(workload(events=200), counter_config(1e-9))
    counts = engine.namespace_counts("shop")
    before = counts.global_counter.count
    engine.apply(workload(seed=99, events=50)[-1])
    engine.apply(GoalRecord("shop", "view"))
    assert counts.global_counter.count == before
    assert "view" not in counts.goals
    assert engine.namespace_counts("unknown") is None
    assert set(NAMES) >= set(counts.named)

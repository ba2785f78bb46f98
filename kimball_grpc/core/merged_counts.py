"""A namespace's counts as plain data, their merge, and the questions answered from counts.

Every question about a namespace but "which events did this user do" is answered from
counts alone: per counter its unique users, value sum and goal tallies, and the goal set.
The questions here are asked of a namespace in the shape both an engine's live
``Namespace`` and a ``NamespaceCounts`` have, so a single node and a cluster answer with
the same code.

In a cluster each replica holds the counts of some user partitions. Every user lives in
exactly one partition, so a counter's unique users over all partitions are the sum of its
users in each (no user is in two), and so are its value sum and goal tallies, which count
a user's first event there: ``merge`` adds them up.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from kimball_grpc.core.counters import CounterKind, counter_key
from kimball_grpc.core.errors import InvalidArgument, NotFound
from kimball_grpc.core.limits import MAX_EVENTS_PER_PREDICTION
from kimball_grpc.core.names import check_name, check_namespace
from kimball_grpc.core.paging import itself, name_key
from kimball_grpc.core.predictions import (
    GOAL_AMONG_EVENTS_NOTE,
    EventEvidence,
    NaiveBayes,
    bayes,
    naive_bayes,
)

WeekKey = tuple[str, int, int]


class Counts(Protocol):
    """What is asked of a counter: an engine's ``Counter`` or a ``CounterCounts``."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> CounterKind: ...
    @property
    def iso_year(self) -> int: ...
    @property
    def iso_week(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def value_sum(self) -> float: ...
    @property
    def event_counts(self) -> Mapping[tuple[str, ...], int]: ...
    @property
    def single_event_counts(self) -> Mapping[str, int]: ...


class NamespaceView(Protocol):
    """What is asked of a namespace: an engine's ``Namespace`` or a ``NamespaceCounts``."""

    @property
    def goals(self) -> AbstractSet[str]: ...
    @property
    def global_counter(self) -> Counts: ...
    @property
    def named(self) -> Mapping[str, Counts]: ...
    @property
    def weekly(self) -> Mapping[WeekKey, Counts]: ...
    def sorted_names(self) -> list[str]: ...
    def sorted_weeks(self) -> list[WeekKey]: ...


@dataclass(slots=True)
class CounterCounts:
    """One counter's counts, without its filter of users."""

    name: str
    kind: CounterKind
    iso_year: int = 0
    iso_week: int = 0
    count: int = 0
    value_sum: float = 0.0
    event_counts: dict[tuple[str, ...], int] = field(default_factory=dict)
    single_event_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, counter: Counts) -> CounterCounts:
        """The counts of ``counter`` as of now (a copy: they no longer change with it)."""
        return cls(
            counter.name,
            counter.kind,
            counter.iso_year,
            counter.iso_week,
            counter.count,
            counter.value_sum,
            dict(counter.event_counts),
            dict(counter.single_event_counts),
        )


@dataclass
class NamespaceCounts:
    """A namespace's counts as plain data: what one engine (a partition's) holds of it,
    or the merge of several."""

    name: str
    global_counter: CounterCounts
    named: dict[str, CounterCounts] = field(default_factory=dict)
    weekly: dict[WeekKey, CounterCounts] = field(default_factory=dict)
    goals: frozenset[str] = frozenset()

    @classmethod
    def of(cls, ns: NamespaceView, name: str) -> NamespaceCounts:
        """The counts of the namespace ``ns``, named ``name``, as of now."""
        return cls(
            name,
            CounterCounts.of(ns.global_counter),
            {n: CounterCounts.of(ns.named[n]) for n in ns.sorted_names()},
            {k: CounterCounts.of(ns.weekly[k]) for k in ns.sorted_weeks()},
            frozenset(ns.goals),
        )

    def sorted_names(self) -> list[str]:
        """The event names of the named counters, sorted."""
        return sorted(self.named)

    def sorted_weeks(self) -> list[WeekKey]:
        """The (name, ISO year, ISO week) of the weekly counters, sorted."""
        return sorted(self.weekly)


def merge(parts: Iterable[NamespaceCounts]) -> NamespaceCounts | None:
    """The counts of one namespace over the users of all ``parts`` (each counting users no
    other part counts): users, value sums and goal tallies add, goal sets unite. None
    for no parts."""
    merged: NamespaceCounts | None = None
    for part in parts:
        if merged is None:
            merged = NamespaceCounts(
                part.name, CounterCounts(part.global_counter.name, CounterKind.INTERNAL)
            )
        elif part.name != merged.name:
            raise ValueError(f"counts of namespaces {merged.name!r} and {part.name!r} do not merge")
        _add(merged.global_counter, part.global_counter)
        for name, counts in part.named.items():
            _add(_slot(merged.named, name, counts), counts)
        for week, counts in part.weekly.items():
            _add(_slot(merged.weekly, week, counts), counts)
        merged.goals = merged.goals | part.goals
    if merged is not None:  # in the order a namespace gives them
        merged.named = {n: merged.named[n] for n in merged.sorted_names()}
        merged.weekly = {k: merged.weekly[k] for k in merged.sorted_weeks()}
    return merged


K = TypeVar("K", str, WeekKey)


def _slot(counters: dict[K, CounterCounts], key: K, like: CounterCounts) -> CounterCounts:
    counts = counters.get(key)
    if counts is None:
        counts = counters[key] = CounterCounts(like.name, like.kind, like.iso_year, like.iso_week)
    return counts


def _add(total: CounterCounts, part: CounterCounts) -> None:
    total.count += part.count
    total.value_sum += part.value_sum
    if part.event_counts:
        total.event_counts = dict(Tally(total.event_counts) + Tally(part.event_counts))
    if part.single_event_counts:
        total.single_event_counts = dict(
            Tally(total.single_event_counts) + Tally(part.single_event_counts)
        )


# -- the questions, over a namespace's counts ------------------------------


def _week_key(week: WeekKey) -> tuple[str, ...]:
    """A weekly counter's ``counter_key`` without its section."""
    name, year, number = week
    return (name, f"{year:04d}", f"{number:02d}")


def _week_name(week: WeekKey) -> str:
    return week[0]


def _start_after(
    keys: list[K], section: str, after: tuple[str, ...] | None, key: Callable[[K], object]
) -> int:
    """Where the keys of a ``counter_key`` section (sorted ``keys``, compared by ``key``
    without the section) pass ``after``."""
    if after is None or after[0] < section:
        return 0
    if after[0] > section:
        return len(keys)
    return bisect.bisect_right(keys, after[1:], key=key)


def _with_prefix(keys: list[K], start: int, prefix: str, name: Callable[[K], str]) -> Iterator[K]:
    """``keys[start:]`` (sorted, by name first) whose name starts with ``prefix``."""
    if prefix:
        start = max(start, bisect.bisect_left(keys, prefix, key=name))
    for index in range(start, len(keys)):
        if not name(keys[index]).startswith(prefix):
            return
        yield keys[index]


def counters_after(
    ns: NamespaceView, name_prefix: str, after: tuple[str, ...] | None
) -> Iterator[Counts]:
    """The counters of ``ns`` in ``counter_key`` order, from the first whose key is above
    ``after`` (None: from the start); with ``name_prefix``, only those of events whose name
    starts with it (not the global counter). Each step costs a lookup, whatever the
    namespace's size."""
    if not name_prefix and (after is None or counter_key(ns.global_counter) > after):
        yield ns.global_counter
    names = ns.sorted_names()
    start = _start_after(names, "1", after, name_key)
    yield from (ns.named[n] for n in _with_prefix(names, start, name_prefix, itself))
    weeks = ns.sorted_weeks()
    start = _start_after(weeks, "2", after, _week_key)
    yield from (ns.weekly[k] for k in _with_prefix(weeks, start, name_prefix, _week_name))


def event_predictions(
    ns: NamespaceView, only_goal: str | None = None
) -> dict[str, dict[str, float]]:
    """Per goal with prior events (or only ``only_goal``), P(goal | event) for each of
    those events."""
    out: dict[str, dict[str, float]] = {}
    for goal in sorted(ns.goals) if only_goal is None else [only_goal]:
        counter = ns.named.get(goal)
        if goal not in ns.goals or counter is None or not counter.single_event_counts:
            continue
        out[goal] = {
            event: bayes(n, _users(ns, event))
            for event, n in sorted(counter.single_event_counts.items())
        }
    return out


def _users(ns: NamespaceView, event: str) -> int:
    counter = ns.named.get(event)
    return counter.count if counter else 0


def check_prediction_request(events: list[str], user_id: str) -> None:
    """Refuse a prediction request naming both a user and events, or neither, or too
    many events (a user's own events may be any number)."""
    if user_id and events:
        raise InvalidArgument("user_id and event cannot both be specified", user=user_id)
    if user_id:
        return
    if not events:
        raise InvalidArgument("at least one event is required", key="event")
    if len(events) > MAX_EVENTS_PER_PREDICTION:
        raise InvalidArgument(
            f"at most {MAX_EVENTS_PER_PREDICTION} events per prediction", key="event"
        )


def predict_for_events(ns: NamespaceView | None, events: list[str]) -> dict[str, NaiveBayes]:
    """Naive Bayes per goal of ``ns`` given that a user did ``events`` (at least one);
    ``InvalidArgument`` for an event the namespace does not know."""
    wanted = list(dict.fromkeys(check_name("event", e) for e in events))
    for event in wanted:
        if ns is None or event not in ns.named:
            raise InvalidArgument("Event is not known in this namespace", event=event)
    assert ns is not None
    total = ns.global_counter.count
    out: dict[str, NaiveBayes] = {}
    for goal in sorted(ns.goals):
        if goal in wanted:
            out[goal] = NaiveBayes(note=GOAL_AMONG_EVENTS_NOTE)
            continue
        counter = ns.named.get(goal)
        goal_users = counter.count if counter else 0
        tallies = counter.single_event_counts if counter else {}
        evidence = [EventEvidence(ns.named[e].count, tallies.get(e, 0)) for e in wanted]
        out[goal] = naive_bayes(total, goal_users, evidence)
    return out


def predict_for_user(
    ns: NamespaceView | None, user_id: str, user_events: list[str]
) -> dict[str, NaiveBayes]:
    """Naive Bayes per goal given ``user_events``, the events ``user_id`` has done;
    ``NotFound`` for a user without any."""
    if not user_events:
        raise NotFound("No events found for user", user=user_id)
    return predict_for_events(ns, user_events)


@dataclass(frozen=True)
class Nudge:
    """An event a user has not done yet, with P(goal | event)."""

    event_name: str
    prediction: float


def nudges(ns: NamespaceView | None, goal: str, done: AbstractSet[str]) -> list[Nudge]:
    """The events of ``goal`` (checked already) not in ``done`` (the user's events), best
    P(goal | event) first."""
    per_event = event_predictions(ns, goal).get(goal, {}) if ns is not None else {}
    found = [Nudge(e, p) for e, p in per_event.items() if e not in done]
    found.sort(key=lambda n: (-n.prediction, n.event_name))
    return found


class MergedCounts:
    """The namespaces of a cluster (or of some partitions) as merged counts, asked the
    questions an ``Engine`` is asked, with the same answers for the same events."""

    def __init__(self, namespaces: Iterable[NamespaceCounts]) -> None:
        self._namespaces = {ns.name: ns for ns in namespaces}

    def namespace(self, namespace: str) -> NamespaceCounts | None:
        return self._namespaces.get(check_namespace(namespace))

    def namespaces(self) -> list[str]:
        return sorted(self._namespaces)

    def goals(self, namespace: str) -> list[str]:
        return sorted(self.goal_set(namespace))

    def goal_set(self, namespace: str) -> AbstractSet[str]:
        ns = self.namespace(namespace)
        return ns.goals if ns else frozenset()

    def counters_after(
        self, namespace: str, name_prefix: str, after: tuple[str, ...] | None
    ) -> Iterator[Counts]:
        """As ``Engine.counters_after``."""
        ns = self.namespace(namespace)
        return counters_after(ns, name_prefix, after) if ns else iter(())

    def event_predictions(self, namespace: str) -> dict[str, dict[str, float]]:
        ns = self.namespace(namespace)
        return event_predictions(ns) if ns else {}

    def predict_for_events(self, namespace: str, events: list[str]) -> dict[str, NaiveBayes]:
        return predict_for_events(self.namespace(namespace), events)

    def predict_for_user(
        self, namespace: str, user_id: str, user_events: list[str]
    ) -> dict[str, NaiveBayes]:
        """Naive Bayes per goal for ``user_id``, given the user's events (asked of the
        user's partition)."""
        return predict_for_user(self.namespace(namespace), user_id, user_events)

    def nudges(self, namespace: str, goal: str, user_events: list[str]) -> list[Nudge]:
        """The goal's events the user (who did ``user_events``) has not done, best first."""
        goal = check_name("goal", goal)
        return nudges(self.namespace(namespace), goal, set(user_events))

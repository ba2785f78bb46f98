"""The engine: namespaces of counters and goals, and the questions asked of them.

Plain Python, no I/O. State changes only through ``apply`` (records), so a log
of records replayed into a restored snapshot rebuilds the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, TypeVar

from kimball_grpc.core import merged_counts
from kimball_grpc.core.bloom import KeyHash, hash_key
from kimball_grpc.core.counter_config import (
    DEFAULT_RULE,
    GLOBAL_RULE,
    CounterConfig,
    CounterRule,
    DateCohort,
)
from kimball_grpc.core.counters import GLOBAL_COUNTER_NAME, Counter, CounterKind
from kimball_grpc.core.feature_flags import FeatureFlags
from kimball_grpc.core.merged_counts import NamespaceCounts, Nudge, WeekKey
from kimball_grpc.core.names import check_name, check_namespace, check_text
from kimball_grpc.core.predictions import NaiveBayes
from kimball_grpc.core.records import EventRecord, FeatureSpecRecord, GoalRecord, Record


@dataclass(eq=False)
class Namespace:
    """All counters and goals of one namespace."""

    name: str
    global_counter: Counter
    named: dict[str, Counter] = field(default_factory=dict)
    weekly: dict[WeekKey, Counter] = field(default_factory=dict)
    goals: set[str] = field(default_factory=set)
    # The keys of named and weekly, sorted: kept between reads (a page of 220,000 names
    # would sort them all again), brought up to date when counters were added (they
    # never go away).
    _sorted_names: list[str] = field(default_factory=list, init=False, repr=False)
    _sorted_weeks: list[WeekKey] = field(default_factory=list, init=False, repr=False)

    def counters(self) -> list[Counter]:
        """Every counter: global first, then named by name, then weekly by name and week."""
        return (
            [self.global_counter]
            + [self.named[n] for n in self.sorted_names()]
            + [self.weekly[k] for k in self.sorted_weeks()]
        )

    def sorted_names(self) -> list[str]:
        """The event names of the named counters, sorted."""
        self._sorted_names = _caught_up(self._sorted_names, self.named)
        return self._sorted_names

    def sorted_weeks(self) -> list[WeekKey]:
        """The (name, ISO year, ISO week) of the weekly counters, sorted."""
        self._sorted_weeks = _caught_up(self._sorted_weeks, self.weekly)
        return self._sorted_weeks


K = TypeVar("K", str, WeekKey)


def _caught_up(sorted_keys: list[K], keys: dict[K, Counter]) -> list[K]:
    """``sorted_keys`` with the keys added to ``keys`` since (a dict keeps its insertion
    order, and counters are only ever added): a merge of two sorted runs, which the sort
    does in linear time. A new list, so that a read going through the old one is safe."""
    if len(sorted_keys) == len(keys):
        return sorted_keys
    added = list(keys)[len(sorted_keys) :]
    return sorted(sorted_keys + sorted(added))


class GrowthKind(StrEnum):
    NAMESPACE = "namespace"
    EVENT_NAME = "event_name"  # a new event name in a namespace: a new named counter
    WEEKLY = "weekly"  # a new weekly counter
    GOAL = "goal"


class Growth(NamedTuple):
    """One thing a record would add to the state (a weekly counter's week in ``week``)."""

    kind: GrowthKind
    namespace: str
    name: str = ""
    week: tuple[int, int] = (0, 0)


class Engine:
    """Counters, goals, predictions and nudges for every namespace, and the feature flags."""

    def __init__(self, counter_config: CounterConfig | None = None) -> None:
        self.counter_config = counter_config or CounterConfig()
        self._namespaces: dict[str, Namespace] = {}
        self._rules: dict[str, CounterRule] = {}  # per event name: regex search once
        self._weekly_rules = any(r.date_cohort for r in self.counter_config.rules)
        self._counter_count = 0  # named and weekly counters of every namespace
        self._freeze: Freeze | None = None
        self.flags = FeatureFlags()

    # -- state changes -------------------------------------------------

    def apply(self, record: Record) -> None:
        """Apply one validated record."""
        if isinstance(record, EventRecord):
            self.apply_event(record)
        elif isinstance(record, GoalRecord):
            self.apply_goal(record)
        elif record.spec is None:
            self.flags.delete(record.name, record.time, record.token_id)
        else:
            self.flags.put(record.spec, record.time, record.token_id)

    def apply_goal(self, record: GoalRecord) -> None:
        self._add_goal(self._namespace(record.namespace), record.goal_name)

    def _add_goal(self, ns: Namespace, goal: str) -> None:
        if goal not in ns.goals:
            if self._freeze is not None:
                self._freeze.keep_goals(ns)
            ns.goals.add(goal)

    def apply_event(self, record: EventRecord) -> None:
        namespace, name, user, iso_year, iso_week, value, ensure_goal = record
        ns = self._namespaces.get(namespace) or self._namespace(namespace)
        if ensure_goal:
            self._add_goal(ns, name)
        # The global filter holds every user of the namespace: a user new there
        # is new to every counter, which then need no membership test.
        new_user = self._first(ns, ns.global_counter, user, False)
        if new_user:
            ns.global_counter.record_first(value, None)
        is_goal = name in ns.goals
        # A goal's prior events are worked out only for a user new to one of its
        # counters (a repeat goal event changes nothing), and then only once.
        prior: tuple[str, ...] | None = None

        named = ns.named.get(name)
        rule = self._rules.get(name) or self._rule(name)
        if named is None:
            self._new_counter(ns)
            named = ns.named[name] = Counter(name, CounterKind.NAMED, rule.new_filter())
        if self._first(ns, named, user, new_user):
            if is_goal:
                prior = () if new_user else self._prior_events(ns, name, user)
            named.record_first(value, prior)
        if rule.date_cohort is DateCohort.WEEKLY:
            key = (name, iso_year, iso_week)
            weekly = ns.weekly.get(key)
            if weekly is None:
                self._new_counter(ns)
                weekly = ns.weekly[key] = Counter(
                    name, CounterKind.WEEKLY, rule.new_filter(), iso_year, iso_week
                )
            if self._first(ns, weekly, user, new_user):
                if is_goal and prior is None:
                    prior = () if new_user else self._prior_events(ns, name, user)
                weekly.record_first(value, prior)

    def _first(self, ns: Namespace, counter: Counter, user: KeyHash, new_user: bool) -> bool:
        """Add a user to the counter's filter; whether it was new there (then it is counted).
        ``new_user``: known to be new (new to the namespace), so not tested."""
        freeze = self._freeze
        if freeze is None:
            if new_user:
                counter.filter.add_new(user)
                return True
            # The test and the add in one call.
            return counter.filter.add_if_absent(user)
        # Frozen: the counter is copied before it changes, so test first.
        if not new_user and user in counter.filter:
            return False
        freeze.keep_counter(ns, counter)
        counter.filter.add_new(user)
        return True

    def _new_counter(self, ns: Namespace) -> None:
        """Before a counter is added to ``ns``."""
        if self._freeze is not None:
            self._freeze.keep_sizes(ns)
        self._counter_count += 1

    def _prior_events(self, ns: Namespace, goal: str, user: KeyHash) -> tuple[str, ...]:
        return tuple(sorted(n for n, c in ns.named.items() if n != goal and user in c))

    def _rule(self, event_name: str) -> CounterRule:
        rule = self._rules.get(event_name)
        if rule is None:
            rule = self._rules[event_name] = self.counter_config.rule_for(event_name)
        return rule

    def _namespace(self, name: str) -> Namespace:
        ns = self._namespaces.get(name)
        if ns is None:
            counter = Counter(GLOBAL_COUNTER_NAME, CounterKind.INTERNAL, GLOBAL_RULE.new_filter())
            ns = self._namespaces[name] = Namespace(name, counter)
        return ns

    # -- growth, for the limits ------------------------------------------

    def growth(self, records: Iterable[Record]) -> list[Growth]:
        """What applying ``records`` would add to the state, each thing once, in the order
        first met: namespaces, event names, weekly counters and goals (feature specs are
        not counted here)."""
        new: dict[Growth, None] = {}
        namespaces = self._namespaces
        for record in records:
            if record.__class__ is FeatureSpecRecord:
                continue
            name_space = record.namespace
            ns = namespaces.get(name_space)
            if ns is None:
                new[Growth(GrowthKind.NAMESPACE, name_space)] = None
            if record.__class__ is GoalRecord:
                if ns is None or record.goal_name not in ns.goals:
                    new[Growth(GrowthKind.GOAL, name_space, record.goal_name)] = None
                continue
            name = record.event_name
            if ns is None or name not in ns.named:
                new[Growth(GrowthKind.EVENT_NAME, name_space, name)] = None
            if record.ensure_goal and (ns is None or name not in ns.goals):
                new[Growth(GrowthKind.GOAL, name_space, name)] = None
            # Not through the cache of rules: a refused name must leave nothing behind.
            rule = self._rules.get(name) if self._weekly_rules else DEFAULT_RULE
            if rule is None:
                rule = self.counter_config.rule_for(name)
            if rule.date_cohort is DateCohort.WEEKLY:
                week = (record.iso_year, record.iso_week)
                if ns is None or (name, *week) not in ns.weekly:
                    new[Growth(GrowthKind.WEEKLY, name_space, name, week)] = None
        return list(new)

    @property
    def namespace_count(self) -> int:
        return len(self._namespaces)

    @property
    def counter_count(self) -> int:
        """Named and weekly counters of every namespace (global counters not included)."""
        return self._counter_count

    @property
    def all_counter_count(self) -> int:
        """Every counter: named, weekly and each namespace's global one."""
        return self._counter_count + len(self._namespaces)

    def event_name_count(self, namespace: str) -> int:
        """Event names (named counters) of a namespace; 0 for an unknown one."""
        ns = self._namespaces.get(namespace)
        return len(ns.named) if ns else 0

    def goal_count(self, namespace: str) -> int:
        """Goals of a namespace; 0 for an unknown one."""
        ns = self._namespaces.get(namespace)
        return len(ns.goals) if ns else 0

    # -- questions -----------------------------------------------------

    def namespaces(self) -> list[str]:
        return sorted(self._namespaces)

    def goals(self, namespace: str) -> list[str]:
        ns = self._namespaces.get(check_namespace(namespace))
        return sorted(ns.goals) if ns else []

    def goal_set(self, namespace: str) -> AbstractSet[str]:
        """The namespace's goals, to test names against (not to change)."""
        ns = self._namespaces.get(check_namespace(namespace))
        return ns.goals if ns else frozenset()

    def counters(self, namespace: str) -> list[Counter]:
        """The namespace's counters (analytics); empty for an unknown namespace."""
        ns = self._namespaces.get(check_namespace(namespace))
        return ns.counters() if ns else []

    def counters_after(
        self, namespace: str, name_prefix: str, after: tuple[str, ...] | None
    ) -> Iterator[Counter]:
        """The namespace's counters in ``counter_key`` order, from the first whose key is
        above ``after`` (None: from the start); with ``name_prefix``, only those of events
        whose name starts with it (not the global counter). Each step costs a lookup,
        whatever the namespace's size."""
        ns = self._namespaces.get(check_namespace(namespace))
        return merged_counts.counters_after(ns, name_prefix, after) if ns else iter(())

    def namespace_counts(self, namespace: str) -> NamespaceCounts | None:
        """The namespace's counts as plain data, as of now (None for an unknown one): what
        a replica sends of its partitions, to be merged with the others'."""
        ns = self._namespaces.get(check_namespace(namespace))
        return NamespaceCounts.of(ns, ns.name) if ns else None

    def events_for_user(self, namespace: str, user_id: str) -> list[str]:
        """Named events whose counters contain the user."""
        user = hash_key(check_text("user_id", user_id))
        ns = self._namespaces.get(check_namespace(namespace))
        if ns is None:
            return []
        return sorted(n for n, c in ns.named.items() if user in c)

    def event_predictions(self, namespace: str) -> dict[str, dict[str, float]]:
        """Per goal with prior events, P(goal | event) for each of those events."""
        ns = self._namespaces.get(check_namespace(namespace))
        return merged_counts.event_predictions(ns) if ns else {}

    def predict(self, namespace: str, events: list[str], user_id: str) -> dict[str, NaiveBayes]:
        """Naive Bayes per goal for ``events`` or for ``user_id``'s events (one of them)."""
        merged_counts.check_prediction_request(events, user_id)
        if user_id:
            return self.predict_for_user(namespace, user_id)
        return self.predict_for_events(namespace, events)

    def predict_for_events(self, namespace: str, events: list[str]) -> dict[str, NaiveBayes]:
        """Naive Bayes per goal given that a user did ``events`` (at least one)."""
        ns = self._namespaces.get(check_namespace(namespace))
        return merged_counts.predict_for_events(ns, events)

    def predict_for_user(self, namespace: str, user_id: str) -> dict[str, NaiveBayes]:
        """Naive Bayes per goal given the events the user has done."""
        events = self.events_for_user(namespace, user_id)
        return merged_counts.predict_for_user(
            self._namespaces.get(check_namespace(namespace)), user_id, events
        )

    def nudges(self, namespace: str, goal: str, user_id: str) -> list[Nudge]:
        """The goal's events the user has not done, best P(goal | event) first."""
        goal = check_name("goal", goal)
        done = set(self.events_for_user(namespace, user_id))
        return merged_counts.nudges(self._namespaces.get(check_namespace(namespace)), goal, done)

    # -- whole state ---------------------------------------------------

    def freeze(self) -> Freeze:
        """The engine as of now, to read while it goes on changing (one at a time), until
        ``thaw``. Costs the copy of what changes meanwhile, once per counter."""
        if self._freeze is not None:
            raise RuntimeError("the engine is frozen already")
        self._freeze = Freeze(self)
        return self._freeze

    def thaw(self) -> None:
        """Stop keeping the state of the last ``freeze``."""
        self._freeze = None

    def namespace_objects(self) -> list[Namespace]:
        """The namespaces themselves, for serialization."""
        return [self._namespaces[n] for n in sorted(self._namespaces)]

    def restore_namespace(self, ns: Namespace) -> None:
        """Put a deserialized namespace in place (replacing one of the same name), whatever
        the limits: state already kept is never refused."""
        old = self._namespaces.get(ns.name)
        if old is not None:
            self._counter_count -= len(old.named) + len(old.weekly)
        self._namespaces[ns.name] = ns
        self._counter_count += len(ns.named) + len(ns.weekly)


class Freeze:
    """An engine as of one moment, readable while the engine goes on changing.

    From that moment until ``Engine.thaw``, the engine copies a counter, or a namespace's
    goals, before it first changes them, and notes how many counters a namespace had
    before it first adds one. So ``goals`` and ``counters`` give a namespace as of the
    moment (counters and namespaces made since are left out), and ``as_of`` a counter: its
    copy if it changed since, else the counter itself, unchanged. The engine may change a
    counter between two reads: read each one whole at once (no ``await`` in the middle).
    A namespace ``done`` with is copied no more.
    """

    def __init__(self, engine: Engine) -> None:
        self.namespaces: list[Namespace] = list(engine._namespaces.values())
        self.counter_count = engine.all_counter_count
        self.flag_specs = engine.flags.listed()  # specs are immutable: the list is a copy
        self.flags_version = engine.flags.version
        self.flag_histories = engine.flags.histories()  # changes are immutable
        self._pending = set(self.namespaces)  # not read whole yet: changes there are kept
        self._copies: dict[Namespace, dict[Counter, Counter]] = {}  # as of the moment
        self._goals: dict[Namespace, set[str]] = {}
        self._sizes: dict[Namespace, tuple[int, int]] = {}  # named and weekly counters then

    def keep_counter(self, ns: Namespace, counter: Counter) -> None:
        """Before ``counter`` of ``ns`` changes."""
        if ns in self._pending:
            copies = self._copies.setdefault(ns, {})
            if counter not in copies:
                copies[counter] = counter.copy()

    def keep_goals(self, ns: Namespace) -> None:
        """Before the goals of ``ns`` change."""
        if ns in self._pending and ns not in self._goals:
            self._goals[ns] = set(ns.goals)

    def keep_sizes(self, ns: Namespace) -> None:
        """Before a counter is added to ``ns``."""
        if ns in self._pending and ns not in self._sizes:
            self._sizes[ns] = (len(ns.named), len(ns.weekly))

    def goals(self, ns: Namespace) -> set[str]:
        return self._goals.get(ns, ns.goals)

    def counters(self, ns: Namespace) -> list[Counter]:
        """The counters ``ns`` had at the moment: global first, then named, then weekly, each
        in the order they were made (those made since come last: they are cut). Read each
        through ``as_of``."""
        named, weekly = self._sizes.get(ns, (len(ns.named), len(ns.weekly)))
        return [
            ns.global_counter,
            *list(ns.named.values())[:named],
            *list(ns.weekly.values())[:weekly],
        ]

    def as_of(self, ns: Namespace, counter: Counter) -> Counter:
        """``counter`` of ``ns`` as of the moment, now (it may change after this returns)."""
        copies = self._copies.get(ns)
        return copies.get(counter, counter) if copies else counter

    def done(self, ns: Namespace) -> None:
        """``ns`` was read whole: stop keeping its changes, drop its copies."""
        self._pending.discard(ns)
        self._copies.pop(ns, None)
        self._goals.pop(ns, None)
        self._sizes.pop(ns, None)

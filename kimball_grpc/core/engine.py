"""The engine: namespaces of counters and goals, and the questions asked of them.

Plain Python, no I/O. State changes only through ``apply`` (records), so a log
of records replayed into a restored snapshot rebuilds the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kimball_grpc.core.bloom import KeyHash, hash_key
from kimball_grpc.core.counter_config import GLOBAL_RULE, CounterConfig, CounterRule, DateCohort
from kimball_grpc.core.counters import GLOBAL_COUNTER_NAME, Counter, CounterKind
from kimball_grpc.core.errors import InvalidArgument, NotFound
from kimball_grpc.core.feature_flags import FeatureFlags
from kimball_grpc.core.limits import MAX_EVENTS_PER_PREDICTION
from kimball_grpc.core.names import check_name, check_namespace
from kimball_grpc.core.predictions import (
    GOAL_AMONG_EVENTS_NOTE,
    EventEvidence,
    NaiveBayes,
    bayes,
    naive_bayes,
)
from kimball_grpc.core.records import EventRecord, GoalRecord, Record
from kimball_grpc.core.steps import Steps, finish, sorted_in_steps

WeekKey = tuple[str, int, int]


@dataclass(eq=False)
class Namespace:
    """All counters and goals of one namespace."""

    name: str
    global_counter: Counter
    named: dict[str, Counter] = field(default_factory=dict)
    weekly: dict[WeekKey, Counter] = field(default_factory=dict)
    goals: set[str] = field(default_factory=set)

    def counters(self) -> list[Counter]:
        """Every counter: global first, then named by name, then weekly by name and week."""
        return finish(self.counters_in_steps())

    def counters_in_steps(self) -> Steps[list[Counter]]:
        """``counters()`` in steps (sorting 200,000 names takes 50-90 ms). The counters
        are those there at the first step; one made later is left out."""
        named = yield from sorted_in_steps(self.named)
        weekly = yield from sorted_in_steps(self.weekly)
        return (
            [self.global_counter]
            + [self.named[n] for n in named]
            + [self.weekly[k] for k in weekly]
        )

    @property
    def counter_count(self) -> int:
        """Global, named and weekly counters."""
        return 1 + len(self.named) + len(self.weekly)


@dataclass(frozen=True)
class Nudge:
    """An event a user has not done yet, with P(goal | event)."""

    event_name: str
    prediction: float


class Engine:
    """Counters, goals, predictions and nudges for every namespace, and the feature flags."""

    def __init__(self, counter_config: CounterConfig | None = None) -> None:
        self.counter_config = counter_config or CounterConfig()
        self._namespaces: dict[str, Namespace] = {}
        self._rules: dict[str, CounterRule] = {}  # per event name: regex search once
        self._counter_count = 0  # kept as counters are made: summing them takes a while
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
            self.flags.delete(record.name)
        else:
            self.flags.put(record.spec)

    def apply_goal(self, record: GoalRecord) -> None:
        self._add_goal(self._namespace(record.namespace), record.goal_name)

    def _add_goal(self, ns: Namespace, goal: str) -> None:
        if goal not in ns.goals:
            if self._freeze is not None:
                self._freeze.keep_goals(ns)
            ns.goals.add(goal)

    def apply_event(self, record: EventRecord) -> None:
        ns = self._namespace(record.namespace)
        name = record.event_name
        user = record.user_hash
        value = record.value
        if record.ensure_goal:
            self._add_goal(ns, name)
        # The global filter holds every user of the namespace: a user new there
        # is new to every counter, which then need no membership test.
        global_filter = ns.global_counter.filter
        new_user = user not in global_filter
        if new_user:
            if self._freeze is not None:
                self._freeze.keep_counter(ns, ns.global_counter)
            global_filter.add_new(user)
            ns.global_counter.record_first(value, None)
        is_goal = name in ns.goals
        # A goal's prior events are worked out only for a user new to one of its
        # counters (a repeat goal event changes nothing), and then only once.
        prior: tuple[str, ...] | None = None

        named = ns.named.get(name)
        rule = self._rule(name)
        if named is None:
            self._new_counter(ns)
            named = ns.named[name] = Counter(name, CounterKind.NAMED, rule.new_filter())
        if self._first(ns, named, user, new_user):
            if is_goal:
                prior = () if new_user else self._prior_events(ns, name, user)
            named.record_first(value, prior)
        if rule.date_cohort is DateCohort.WEEKLY:
            key = (name, record.iso_year, record.iso_week)
            weekly = ns.weekly.get(key)
            if weekly is None:
                self._new_counter(ns)
                weekly = ns.weekly[key] = Counter(
                    name, CounterKind.WEEKLY, rule.new_filter(), record.iso_year, record.iso_week
                )
            if self._first(ns, weekly, user, new_user):
                if is_goal and prior is None:
                    prior = () if new_user else self._prior_events(ns, name, user)
                weekly.record_first(value, prior)

    def _first(self, ns: Namespace, counter: Counter, user: KeyHash, new_user: bool) -> bool:
        """Add a user to the counter's filter; whether it was new there (then it is counted)."""
        if not new_user and user in counter.filter:
            return False
        if self._freeze is not None:
            self._freeze.keep_counter(ns, counter)
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
            self._counter_count += 1
        return ns

    # -- questions -----------------------------------------------------

    def namespaces(self) -> list[str]:
        return sorted(self._namespaces)

    def goals(self, namespace: str) -> list[str]:
        ns = self._namespaces.get(check_namespace(namespace))
        return sorted(ns.goals) if ns else []

    def counters(self, namespace: str) -> list[Counter]:
        """The namespace's counters (analytics); empty for an unknown namespace."""
        return finish(self.counters_in_steps(namespace))

    def counters_in_steps(self, namespace: str) -> Steps[list[Counter]]:
        """``counters(namespace)`` in steps."""
        ns = self._namespaces.get(check_namespace(namespace))
        if ns is None:
            return []
        return (yield from ns.counters_in_steps())

    def events_for_user(self, namespace: str, user_id: str) -> list[str]:
        """Named events whose counters contain the user."""
        user = hash_key(check_name("user_id", user_id))
        ns = self._namespaces.get(check_namespace(namespace))
        if ns is None:
            return []
        return sorted(n for n, c in ns.named.items() if user in c)

    def event_predictions(self, namespace: str) -> dict[str, dict[str, float]]:
        """Per goal with prior events, P(goal | event) for each of those events."""
        ns = self._namespaces.get(check_namespace(namespace))
        if ns is None:
            return {}
        out: dict[str, dict[str, float]] = {}
        for goal in sorted(ns.goals):
            counter = ns.named.get(goal)
            if counter is None or not counter.single_event_counts:
                continue
            out[goal] = {
                event: bayes(n, self._users(ns, event))
                for event, n in sorted(counter.single_event_counts.items())
            }
        return out

    def predict(self, namespace: str, events: list[str], user_id: str) -> dict[str, NaiveBayes]:
        """Naive Bayes per goal for ``events`` or for ``user_id``'s events (one of them)."""
        if user_id and events:
            raise InvalidArgument("user_id and event cannot both be specified", user=user_id)
        if user_id:
            return self.predict_for_user(namespace, user_id)
        # Limits on what a client names; a user's own events may be any number.
        if not events:
            raise InvalidArgument("at least one event is required", key="event")
        if len(events) > MAX_EVENTS_PER_PREDICTION:
            raise InvalidArgument(
                f"at most {MAX_EVENTS_PER_PREDICTION} events per prediction", key="event"
            )
        return self.predict_for_events(namespace, events)

    def predict_for_events(self, namespace: str, events: list[str]) -> dict[str, NaiveBayes]:
        """Naive Bayes per goal given that a user did ``events`` (at least one)."""
        namespace = check_namespace(namespace)
        ns = self._namespaces.get(namespace)
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

    def predict_for_user(self, namespace: str, user_id: str) -> dict[str, NaiveBayes]:
        """Naive Bayes per goal given the events the user has done."""
        events = self.events_for_user(namespace, user_id)
        if not events:
            raise NotFound("No events found for user", user=user_id)
        return self.predict_for_events(namespace, events)

    def nudges(self, namespace: str, goal: str, user_id: str) -> list[Nudge]:
        """The goal's events the user has not done, best P(goal | event) first."""
        goal = check_name("goal", goal)
        done = set(self.events_for_user(namespace, user_id))
        per_event = self.event_predictions(namespace).get(goal, {})
        nudges = [Nudge(e, p) for e, p in per_event.items() if e not in done]
        nudges.sort(key=lambda n: (-n.prediction, n.event_name))
        return nudges

    @staticmethod
    def _users(ns: Namespace, event: str) -> int:
        counter = ns.named.get(event)
        return counter.count if counter else 0

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
        """Put a deserialized namespace in place (replacing one of the same name)."""
        replaced = self._namespaces.get(ns.name)
        if replaced is not None:
            self._counter_count -= replaced.counter_count
        self._namespaces[ns.name] = ns
        self._counter_count += ns.counter_count

    @property
    def counter_count(self) -> int:
        """Counters in every namespace (global, named and weekly)."""
        return self._counter_count


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
        self.counter_count = engine.counter_count
        self.flag_specs = engine.flags.listed()  # specs are immutable: the list is a copy
        self.flags_version = engine.flags.version
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

"""Growth limits: a batch that would grow the state past a limit is refused whole, before
it is logged.

The check counts the engine's state plus what the batches already admitted and not yet
applied will add (they wait for the write-ahead log), plus what the batch itself adds.
Applying a logged record never checks anything (a replay must not fail), so this is
the one gate; state restored past a lowered limit loads, and only new growth is refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kimball_grpc.core.engine import Engine, Growth, GrowthKind
from kimball_grpc.core.limits import COUNTERS, EVENT_NAMES, GOALS, NAMESPACES, StateLimits
from kimball_grpc.core.records import Record


class Reservation:
    """What one admitted batch will add; released once applied (or refused by the log)."""

    __slots__ = ("growth", "released")

    def __init__(self, growth: Sequence[Growth]) -> None:
        self.growth = growth
        self.released = not growth  # nothing to give back


NOTHING = Reservation(())


@dataclass
class _Tally:
    """Distinct things by kind: namespaces, counters, and event names and goals by namespace."""

    namespaces: int = 0
    counters: int = 0
    event_names: Counter[str] = field(default_factory=Counter)
    goals: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, things: Iterable[Growth]) -> _Tally:
        tally = cls()
        for thing in things:
            kind = thing.kind
            if kind is GrowthKind.NAMESPACE:
                tally.namespaces += 1
            elif kind is GrowthKind.EVENT_NAME:
                tally.event_names[thing.namespace] += 1
                tally.counters += 1
            elif kind is GrowthKind.WEEKLY:
                tally.counters += 1
            else:
                tally.goals[thing.namespace] += 1
        return tally

    def add(self, other: _Tally, sign: int) -> None:
        self.namespaces += sign * other.namespaces
        self.counters += sign * other.counters
        for mine, theirs in ((self.event_names, other.event_names), (self.goals, other.goals)):
            for namespace, count in theirs.items():
                left = mine[namespace] + sign * count
                if left:
                    mine[namespace] = left
                else:
                    del mine[namespace]  # no empty entries pile up


class GrowthLimits:
    """Admits batches of records against ``limits``, counting batches in flight."""

    def __init__(self, engine: Engine, limits: StateLimits) -> None:
        self.engine = engine
        self.limits = limits
        # Growth of the admitted batches not yet applied: how many of them hold each
        # thing, and the distinct things held, by kind.
        self._held: dict[Growth, int] = {}
        self._pending = _Tally()

    def admit(self, records: Sequence[Record]) -> Reservation:
        """A reservation for what ``records`` add, or ``LimitExceeded`` naming the first
        limit they would pass (nothing reserved)."""
        growth = self.engine.growth(records)
        if not growth:
            return NOTHING
        held = self._held
        # What another admitted batch adds is counted there already.
        added = _Tally.of(thing for thing in growth if thing not in held)
        self._check(added)
        for thing in growth:
            held[thing] = held.get(thing, 0) + 1
        self._pending.add(added, 1)
        return Reservation(growth)

    def release(self, reservation: Reservation) -> None:
        """The reserved growth is applied, or will never be: stop counting it here. Once."""
        if reservation.released:
            return
        reservation.released = True
        held = self._held
        gone = []
        for thing in reservation.growth:
            left = held[thing] - 1
            if left:
                held[thing] = left
            else:
                del held[thing]
                gone.append(thing)
        self._pending.add(_Tally.of(gone), -1)

    def _check(self, added: _Tally) -> None:
        engine, limits, pending = self.engine, self.limits, self._pending
        if (
            added.namespaces
            and engine.namespace_count + pending.namespaces + added.namespaces > limits.namespaces
        ):
            raise NAMESPACES.exceeded(limits.namespaces)
        for ns, count in added.event_names.items():
            if engine.event_name_count(ns) + pending.event_names[ns] + count > limits.event_names:
                raise EVENT_NAMES.exceeded(
                    limits.event_names, f" in namespace {ns!r}", namespace=ns
                )
        for ns, count in added.goals.items():
            if engine.goal_count(ns) + pending.goals[ns] + count > limits.goals:
                raise GOALS.exceeded(limits.goals, f" in namespace {ns!r}", namespace=ns)
        if added.counters and engine.counter_count + pending.counters + added.counters > (
            limits.counters
        ):
            raise COUNTERS.exceeded(limits.counters, " in all namespaces")

"""Counters: a unique-user set (Bloom filter) with its count, value sum and goal tallies."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from kimball_grpc.core.bloom import BloomFilter, KeyHash

GLOBAL_COUNTER_NAME = "global_counter"


class _NoTally(Mapping):
    """The read-only empty tally shared by every counter that never recorded a goal
    (two empty tallies per counter were a third of a quiet counter's memory)."""

    def __getitem__(self, key: object) -> int:
        raise KeyError(key)

    def __iter__(self) -> Iterator:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __deepcopy__(self, memo: dict) -> _NoTally:
        return self  # stays the shared one, so "is NO_TALLY" keeps its meaning


NO_TALLY = _NoTally()


class CounterKind(StrEnum):
    INTERNAL = "internal"  # every user seen in the namespace
    NAMED = "named"  # one per event name
    WEEKLY = "weekly"  # one per event name and ISO week


@dataclass(eq=False, slots=True)
class Counter:
    """Unique users of one event (or of the namespace, or of one week of an event).

    Only a user's first occurrence changes a counter. For goal counters,
    ``event_counts`` tallies each combination of prior events (a sorted tuple)
    and ``single_event_counts`` each prior event on its own.
    """

    name: str
    kind: CounterKind
    filter: BloomFilter
    iso_year: int = 0
    iso_week: int = 0
    count: int = 0
    value_sum: float = 0.0
    event_counts: Mapping[tuple[str, ...], int] = field(default_factory=lambda: NO_TALLY)
    single_event_counts: Mapping[str, int] = field(default_factory=lambda: NO_TALLY)

    def __contains__(self, user_hash: KeyHash) -> bool:
        return user_hash in self.filter

    def record_first(self, value: float | None, prior_events: tuple[str, ...] | None) -> None:
        """Count a user seen here for the first time; ``prior_events`` only for goals."""
        self.count += 1
        if value is not None:
            self.value_sum += value
        if prior_events is not None:
            if self.event_counts is NO_TALLY:
                self.event_counts = Tally()
                self.single_event_counts = Tally()
            self.event_counts[prior_events] += 1
            for name in prior_events:
                self.single_event_counts[name] += 1

    @property
    def nbytes(self) -> int:
        """Bytes of Bloom filter storage."""
        return self.filter.nbytes

    def copy(self) -> Counter:
        """An independent copy: this counter as of now."""
        return Counter(
            self.name,
            self.kind,
            self.filter.copy(),
            self.iso_year,
            self.iso_week,
            self.count,
            self.value_sum,
            _copied(self.event_counts),
            _copied(self.single_event_counts),
        )


def _copied(tally: Mapping) -> Mapping:
    return tally if tally is NO_TALLY else Tally(tally)


def counter_key(counter: Counter) -> tuple[str, ...]:
    """A counter's place in its namespace: the global counter first, then named counters
    by name, then weekly ones by name and week (year and week zero-padded, so that keys
    of strings sort as the numbers do)."""
    if counter.kind is CounterKind.INTERNAL:
        return ("0",)
    if counter.kind is CounterKind.NAMED:
        return ("1", counter.name)
    return ("2", counter.name, f"{counter.iso_year:04d}", f"{counter.iso_week:02d}")

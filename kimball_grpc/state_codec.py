"""Engine state and records to bytes and back (protobuf ``kimball.storage.v1``).

Decoding validates what it reads: stored data that cannot be used raises
``InvalidStoredData`` with a message saying what is wrong, and builds nothing.
"""

from __future__ import annotations

import math
from collections import Counter as Tally

from google.protobuf.message import DecodeError

from kimball_grpc.bloom import (
    BloomFilter,
    FixedBloomFilter,
    KeyHash,
    ScalableBloomFilter,
    SliceState,
)
from kimball_grpc.counter_config import CounterConfig
from kimball_grpc.counters import NO_TALLY, Counter, CounterKind
from kimball_grpc.engine import Engine, Namespace
from kimball_grpc.errors import InvalidArgument, KimballError
from kimball_grpc.events import check_name, check_value
from kimball_grpc.generated.kimball.storage.v1 import state_pb2 as spb
from kimball_grpc.records import EventRecord, GoalRecord, Record

FORMAT_VERSION = 1
# A slice's positions per key: the optimum for p = 1e-300 is 997.
MAX_HASHES = 1024
_FILTERS: dict[str, type[FixedBloomFilter] | type[ScalableBloomFilter]] = {
    FixedBloomFilter.kind: FixedBloomFilter,
    ScalableBloomFilter.kind: ScalableBloomFilter,
}


class InvalidStoredData(KimballError):
    """Stored state or a record cannot be decoded."""

    grpc_code = "DATA_LOSS"


def encode_state(engine: Engine) -> bytes:
    """The whole engine state."""
    message = spb.EngineState(format_version=FORMAT_VERSION)
    for ns in engine.namespace_objects():
        message.namespaces.append(
            spb.NamespaceState(
                name=ns.name,
                goals=sorted(ns.goals),
                global_counter=_counter_to_proto(ns.global_counter),
                counters=[_counter_to_proto(c) for c in ns.counters()[1:]],
            )
        )
    return message.SerializeToString(deterministic=True)


def decode_state(data: bytes, counter_config: CounterConfig | None = None) -> Engine:
    """An engine holding exactly the encoded state."""
    message = spb.EngineState()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidStoredData(f"engine state is not readable: {exc}") from None
    if message.format_version != FORMAT_VERSION:
        raise InvalidStoredData(
            f"engine state has format version {message.format_version}, "
            f"this Kimball reads {FORMAT_VERSION}"
        )
    engine = Engine(counter_config)
    seen: set[str] = set()
    for ns_state in message.namespaces:
        name = _stored_name("namespace", ns_state.name)
        if name in seen:
            raise InvalidStoredData(f"namespace {name!r} is stored twice")
        seen.add(name)
        global_counter = _counter_from_proto(ns_state.global_counter)
        if global_counter.kind is not CounterKind.INTERNAL:
            raise InvalidStoredData(f"namespace {name!r}: its global counter is not internal")
        ns = Namespace(name, global_counter)
        ns.goals.update(_stored_name("goal", g) for g in ns_state.goals)
        for counter_state in ns_state.counters:
            counter = _counter_from_proto(counter_state)
            if counter.kind is CounterKind.WEEKLY:
                key = (counter.name, counter.iso_year, counter.iso_week)
                place: dict = ns.weekly
            elif counter.kind is CounterKind.NAMED:
                key, place = counter.name, ns.named
            else:
                raise InvalidStoredData(f"namespace {name!r}: a second internal counter")
            if key in place:
                raise InvalidStoredData(f"namespace {name!r}: counter {key!r} is stored twice")
            place[key] = counter
        engine.restore_namespace(ns)
    return engine


def _stored_name(field: str, value: str) -> str:
    try:
        return check_name(field, value)
    except InvalidArgument as exc:
        raise InvalidStoredData(f"stored {exc.message}: {value[:64]!r}") from None


def _stored_week(year: int, week: int) -> None:
    if not (1 <= year <= 9999 and 1 <= week <= 53):
        raise InvalidStoredData(f"stored ISO week {year}-W{week} does not exist")


def _counter_to_proto(counter: Counter) -> spb.CounterState:
    return spb.CounterState(
        name=counter.name,
        kind=counter.kind.value,
        iso_year=counter.iso_year,
        iso_week=counter.iso_week,
        count=counter.count,
        value_sum=counter.value_sum,
        event_counts=[
            spb.CombinationCount(events=list(events), count=n)
            for events, n in counter.event_counts.items()
        ],
        single_event_counts=dict(counter.single_event_counts),
        filter=_filter_to_proto(counter.filter),
    )


def _counter_from_proto(state: spb.CounterState) -> Counter:
    name = state.name
    try:
        kind = CounterKind(state.kind)
    except ValueError:
        raise InvalidStoredData(f"counter {name!r}: unknown kind {state.kind!r}") from None
    _stored_name("counter", name)
    if kind is CounterKind.WEEKLY:
        _stored_week(state.iso_year, state.iso_week)
    bloom = _filter_from_proto(name, state.filter)
    if state.count != bloom.items:
        raise InvalidStoredData(
            f"counter {name!r}: count {state.count} disagrees with its filter ({bloom.items})"
        )
    if not math.isfinite(state.value_sum):
        raise InvalidStoredData(f"counter {name!r}: value sum is not finite")
    return Counter(
        name=name,
        kind=kind,
        filter=bloom,
        iso_year=state.iso_year,
        iso_week=state.iso_week,
        count=state.count,
        value_sum=state.value_sum,
        # A counter that never recorded a goal user shares the empty tallies.
        event_counts=(
            Tally({tuple(c.events): c.count for c in state.event_counts})
            if state.event_counts
            else NO_TALLY
        ),
        single_event_counts=(
            Tally(dict(state.single_event_counts)) if state.event_counts else NO_TALLY
        ),
    )


def _filter_to_proto(bloom: BloomFilter) -> spb.FilterState:
    return spb.FilterState(
        type=bloom.kind,
        capacity=bloom.capacity,
        error_probability=bloom.error_probability,
        slices=[
            spb.SliceState(
                capacity=s.capacity,
                error_probability=s.error_probability,
                bits=s.bits,
                hashes=s.hashes,
                items=s.items,
                data=s.data,
            )
            for s in bloom.slice_states()
        ],
    )


def _filter_from_proto(counter: str, state: spb.FilterState) -> BloomFilter:
    cls = _FILTERS.get(state.type)
    if cls is None:
        raise InvalidStoredData(f"counter {counter!r}: unknown filter type {state.type!r}")
    slices = []
    for s in state.slices:
        if not 1 <= s.hashes <= MAX_HASHES or s.bits < 1 or len(s.data) != (s.bits + 7) // 8:
            raise InvalidStoredData(f"counter {counter!r}: a filter slice is damaged")
        slices.append(
            SliceState(s.capacity, s.error_probability, s.bits, s.hashes, s.items, s.data)
        )
    if state.capacity < 1 or not 0 < state.error_probability < 1:
        raise InvalidStoredData(f"counter {counter!r}: filter settings are out of range")
    try:
        return cls.from_slice_states(state.capacity, state.error_probability, slices)
    except ValueError as exc:
        raise InvalidStoredData(f"counter {counter!r}: {exc}") from None


def encode_record(record: Record) -> bytes:
    """One state change."""
    if isinstance(record, EventRecord):
        event = spb.EventRecord(
            namespace=record.namespace,
            event_name=record.event_name,
            user_hash_low=record.user_hash.low,
            user_hash_high=record.user_hash.high,
            iso_year=record.iso_year,
            iso_week=record.iso_week,
            ensure_goal=record.ensure_goal,
        )
        if record.value is not None:
            event.value = record.value
        return spb.Record(event=event).SerializeToString()
    goal = spb.GoalRecord(namespace=record.namespace, goal_name=record.goal_name)
    return spb.Record(goal=goal).SerializeToString()


def decode_record(data: bytes) -> Record:
    """A state change encoded by ``encode_record``."""
    message = spb.Record()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidStoredData(f"record is not readable: {exc}") from None
    change = message.WhichOneof("change")
    if change == "event":
        e = message.event
        _stored_week(e.iso_year, e.iso_week)
        value = e.value if e.HasField("value") else None
        if value is not None:
            try:
                check_value(value)
            except InvalidArgument as exc:
                raise InvalidStoredData(f"stored {exc.message}") from None
        return EventRecord(
            namespace=_stored_name("namespace", e.namespace),
            event_name=_stored_name("event_name", e.event_name),
            user_hash=KeyHash.from_halves(e.user_hash_low, e.user_hash_high),
            iso_year=e.iso_year,
            iso_week=e.iso_week,
            value=value,
            ensure_goal=e.ensure_goal,
        )
    if change == "goal":
        return GoalRecord(
            namespace=_stored_name("namespace", message.goal.namespace),
            goal_name=_stored_name("goal_name", message.goal.goal_name),
        )
    raise InvalidStoredData("record holds no change")

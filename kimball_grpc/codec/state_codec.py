"""Engine state and records to bytes and back (protobuf ``kimball.storage.v1``).

Decoding validates what it reads: stored data that cannot be used raises
``InvalidStoredData`` with a message saying what is wrong, and builds nothing.
"""

from __future__ import annotations

import json
import math
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import attrgetter

from google.protobuf.message import DecodeError

from kimball_grpc.core.bloom import (
    BloomFilter,
    FixedBloomFilter,
    ScalableBloomFilter,
    SliceState,
    key_hashes,
)
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.counters import NO_TALLY, Counter, CounterKind
from kimball_grpc.core.engine import Engine, Freeze, Namespace
from kimball_grpc.core.errors import InvalidArgument, InvalidStoredData
from kimball_grpc.core.feature_flags import (
    FeatureSpec,
    SpecChange,
    UserCondition,
    Variant,
    check_spec,
)
from kimball_grpc.core.names import check_text, check_value
from kimball_grpc.core.records import EventRecord, FeatureSpecRecord, GoalRecord, Record
from kimball_grpc.core.steps import Steps
from kimball_grpc.generated.kimball.storage.v1 import state_pb2 as spb

FORMAT_VERSION = 1
# A slice's positions per key: the optimum for p = 1e-300 is 997.
MAX_HASHES = 1024
_FILTERS: dict[str, type[FixedBloomFilter] | type[ScalableBloomFilter]] = {
    FixedBloomFilter.kind: FixedBloomFilter,
    ScalableBloomFilter.kind: ScalableBloomFilter,
}


def state_in_steps(freeze: Freeze) -> Steps[list[bytes]]:
    """The engine's state as of ``freeze``'s moment as one ``EngineState`` message in
    pieces of about ``STEP_BYTES``, to join, encoded in steps of up to ``STEP_COUNTERS``
    counters or ``STEP_BYTES`` of filters (about a millisecond each). The message is never
    built whole: the format and the feature specs, then each namespace in parts, are
    serialized one after another (serialized messages one after another parse as one
    message, their repeated fields' elements in order). ``freeze.done`` is called for each
    namespace once read.
    """
    head = spb.EngineState(
        format_version=FORMAT_VERSION,
        feature_specs=[spec_to_state(spec) for spec in freeze.flag_specs],
        feature_specs_version=freeze.flags_version,
        feature_spec_histories=[
            spb.FeatureSpecHistoryState(
                name=name, changes=[_change_to_state(name, c) for c in changes]
            )
            for name, changes in freeze.flag_histories.items()
        ],
    )
    pieces: list[bytes] = []
    pending = bytearray(head.SerializeToString(deterministic=True))
    counters_done = bytes_done = 0
    for ns in freeze.namespaces:
        counters = freeze.counters(ns)
        start = spb.NamespaceState(name=ns.name, goals=sorted(freeze.goals(ns)))
        _fill_counter(start.global_counter, freeze.as_of(ns, counters[0]))
        parts = [start.SerializeToString(deterministic=True)]
        part = spb.NamespaceState()
        for counter in counters[1:]:
            counter = freeze.as_of(ns, counter)  # read whole within this step
            _fill_counter(part.counters.add(), counter)
            counters_done += 1
            bytes_done += counter.nbytes
            if counters_done >= STEP_COUNTERS or bytes_done >= STEP_BYTES:
                parts.append(part.SerializeToString(deterministic=True))
                part = spb.NamespaceState()
                counters_done = bytes_done = 0
                yield
        parts.append(part.SerializeToString(deterministic=True))
        freeze.done(ns)
        # One element of EngineState.namespaces: its key and length, then its parts.
        pending += _length_delimited(_NAMESPACES_FIELD, sum(map(len, parts)))
        for piece in parts:
            pending += piece
            if len(pending) >= STEP_BYTES:  # few large pieces: joined, they free cleanly
                pieces.append(bytes(pending))
                pending.clear()
                counters_done = bytes_done = 0
                yield
        counters_done += 1
        if counters_done >= STEP_COUNTERS:
            counters_done = bytes_done = 0
            yield
    pieces.append(bytes(pending))
    return pieces


_NAMESPACES_FIELD = spb.EngineState.DESCRIPTOR.fields_by_name["namespaces"].number
# A step of the encoding: about a millisecond (16 µs per counter; filters copied 3 times).
STEP_COUNTERS = 64
STEP_BYTES = 1 << 20


def _length_delimited(field: int, length: int) -> bytes:
    """The start of a length-delimited field on the protobuf wire: the key (the field number
    and wire type 2) and the length, as varints."""
    out = bytearray()
    for value in (field << 3 | 2, length):
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def decode_state(
    data: bytes | memoryview,
    counter_config: CounterConfig | None = None,
    pause: Callable[[], None] | None = None,
) -> Engine:
    """An engine holding exactly the encoded state; ``pause()`` after each counter
    (``counter_startup_delay``)."""
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
        if pause is not None:
            pause()
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
            if pause is not None:
                pause()
        engine.restore_namespace(ns)
    engine.flags.replace_all(
        [spec_from_state(state) for state in message.feature_specs], message.feature_specs_version
    )
    engine.flags.restore_histories(
        {
            _stored_name("feature spec", h.name): [_change_from_state(c) for c in h.changes]
            for h in message.feature_spec_histories
        }
    )
    return engine


def _change_to_state(name: str, change: SpecChange) -> spb.FeatureSpecChange:
    state = spb.FeatureSpecChange(name=name, token_id=change.token_id)
    if change.time is not None:
        state.time_us = _microseconds(change.time)
    if change.old is not None:
        state.old_spec.CopyFrom(spec_to_state(change.old))
    if change.new is not None:
        state.spec.CopyFrom(spec_to_state(change.new))
    return state


def _change_from_state(state: spb.FeatureSpecChange) -> SpecChange:
    has = state.HasField
    return SpecChange(
        _stored_time(state) if has("time_us") else None,
        state.token_id,
        spec_from_state(state.old_spec) if has("old_spec") else None,
        spec_from_state(state.spec) if has("spec") else None,
    )


def _stored_time(state: spb.FeatureSpecChange) -> datetime:
    try:
        return _from_microseconds(state.time_us)
    except OverflowError:
        raise InvalidStoredData(f"feature spec change {state.name!r}: time out of range") from None


def _stored_name(field: str, value: str) -> str:
    try:
        return check_text(field, value)  # what was taken when it was stored: not Cf
    except InvalidArgument as exc:
        raise InvalidStoredData(f"stored {exc.message}: {value[:64]!r}") from None


def _stored_week(year: int, week: int) -> None:
    if not (1 <= year <= 9999 and 1 <= week <= 53):
        raise InvalidStoredData(f"stored ISO week {year}-W{week} does not exist")


def _fill_counter(state: spb.CounterState, counter: Counter) -> None:
    """``counter`` into ``state``, in place (building messages to copy in costs twice)."""
    state.name = counter.name
    state.kind = counter.kind.value
    state.iso_year = counter.iso_year
    state.iso_week = counter.iso_week
    state.count = counter.count
    state.value_sum = counter.value_sum
    for events, n in counter.event_counts.items():
        state.event_counts.add(events=events, count=n)
    state.single_event_counts.update(counter.single_event_counts)
    bloom = counter.filter
    state.filter.type = bloom.kind
    state.filter.capacity = bloom.capacity
    state.filter.error_probability = bloom.error_probability
    for s in bloom.slice_states():
        state.filter.slices.add(**vars(s))  # the proto's fields are the dataclass's, by name


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


def encode_records(records: Sequence[Record]) -> bytes:
    """A batch of state changes, all events, all goals or all feature spec changes (one
    write-ahead log entry)."""
    batch = spb.RecordBatch()
    if records and isinstance(records[0], FeatureSpecRecord):
        if not all(isinstance(r, FeatureSpecRecord) for r in records):
            raise ValueError("a record batch holds one kind of record")
        for r in records:
            change = batch.spec_changes.add(name=r.name, token_id=r.token_id)  # type: ignore[union-attr]
            if r.spec is not None:  # type: ignore[union-attr]
                change.spec.CopyFrom(spec_to_state(r.spec))  # type: ignore[union-attr]
            if r.time is not None:  # type: ignore[union-attr]
                change.time_us = _microseconds(r.time)  # type: ignore[union-attr]
        return batch.SerializeToString()
    if records and isinstance(records[0], GoalRecord):
        if not all(isinstance(r, GoalRecord) for r in records):
            raise ValueError("a record batch holds events or goals, not both")
        batch.goals.extend(
            spb.GoalRecord(namespace=r.namespace, goal_name=r.goal_name)
            for r in records  # type: ignore[union-attr]
        )
        return batch.SerializeToString()
    if not records:
        return b""
    if any(r.__class__ is not EventRecord for r in records):
        raise ValueError("a record batch holds events or goals, not both")
    # Column by column (one C-level pass each, no Python step per event): a batch's
    # namespaces and names repeat, each stored once in ``strings`` and referred to by index.
    namespaces, names, users, years, weeks, values, goals = zip(*records, strict=True)
    index = {text: i for i, text in enumerate(dict.fromkeys((*namespaces, *names)))}
    batch.strings.extend(index)
    batch.namespace.extend(map(index.__getitem__, namespaces))
    batch.event_name.extend(map(index.__getitem__, names))
    batch.user_hashes = b"".join(map(_DIGEST, users))
    batch.iso_year.extend(years)
    batch.iso_week.extend(weeks)
    if values.count(None) != len(values):
        batch.valued.extend(i for i, value in enumerate(values) if value is not None)
        batch.values.extend(value for value in values if value is not None)
    if any(goals):
        batch.ensure_goal.extend(i for i, goal in enumerate(goals) if goal)
    return batch.SerializeToString()


def decode_records(data: bytes) -> list[Record]:
    """The state changes encoded by ``encode_records``, validated; ``InvalidStoredData`` if not."""
    batch = spb.RecordBatch()
    try:
        batch.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidStoredData(f"record batch is not readable: {exc}") from None
    if batch.spec_changes:
        if batch.namespace or batch.goals:
            raise InvalidStoredData("record batch holds more than one kind of record")
        return [
            FeatureSpecRecord(
                _stored_name("feature spec", change.name),
                spec_from_state(change.spec) if change.HasField("spec") else None,
                _stored_time(change) if change.HasField("time_us") else None,
                change.token_id,
            )
            for change in batch.spec_changes
        ]
    if batch.goals:
        if batch.namespace:
            raise InvalidStoredData("record batch holds both events and goals")
        return [
            GoalRecord(
                _stored_name("namespace", g.namespace), _stored_name("goal_name", g.goal_name)
            )
            for g in batch.goals
        ]
    count = len(batch.namespace)
    columns = (batch.event_name, batch.iso_year, batch.iso_week)
    if any(len(c) != count for c in columns) or len(batch.user_hashes) != 16 * count:
        raise InvalidStoredData("record batch columns differ in length")
    if len(batch.valued) != len(batch.values):
        raise InvalidStoredData("record batch values do not match their indexes")
    strings = [_stored_name("name", s) for s in batch.strings]
    values: dict[int, float] = {}
    for i, value in zip(batch.valued, batch.values, strict=True):
        try:
            values[i] = check_value(value)
        except InvalidArgument as exc:
            raise InvalidStoredData(f"stored {exc.message}") from None
    goals = set(batch.ensure_goal)
    if any(i >= count for i in (*values, *goals)):
        raise InvalidStoredData("record batch refers to an event it does not hold")
    for year, week in dict.fromkeys(zip(batch.iso_year, batch.iso_week, strict=True)):
        _stored_week(year, week)
    try:
        namespaces = [strings[i] for i in batch.namespace]
        names = [strings[i] for i in batch.event_name]
    except IndexError:
        raise InvalidStoredData("record batch refers to a name it does not hold") from None
    # Columns read whole (one call each) rather than element by element, and each record
    # made straight from its row (``_make``: no keyword handling); most batches have no
    # values and no goals, whose columns are then constants.
    return list(
        map(
            EventRecord._make,
            zip(
                namespaces,
                names,
                key_hashes(batch.user_hashes),
                batch.iso_year,
                batch.iso_week,
                [values.get(i) for i in range(count)] if values else repeat(None, count),
                [i in goals for i in range(count)] if goals else repeat(False, count),
                strict=True,
            ),
        )
    )


def spec_to_state(spec: FeatureSpec) -> spb.FeatureSpecState:
    state = spb.FeatureSpecState(
        name=spec.name,
        boolean=spec.boolean,
        user=[
            spb.UserConditionState(
                property=c.property, comparator=c.comparator, value_json=json.dumps(c.value)
            )
            for c in spec.user
        ],
        stickiness=spec.stickiness,
        group_id=spec.group_id,
        variants=[
            spb.VariantState(name=v.name, weight=v.weight, payload=v.payload) for v in spec.variants
        ],
    )
    if spec.rollout_percentage is not None:
        state.rollout_percentage = spec.rollout_percentage
    if spec.rollout_start is not None and spec.rollout_end is not None:
        state.rollout_start_us = _microseconds(spec.rollout_start)
        state.rollout_end_us = _microseconds(spec.rollout_end)
    return state


def spec_from_state(state: spb.FeatureSpecState) -> FeatureSpec:
    """A stored spec, checked as a new one is; ``InvalidStoredData`` if it cannot be used."""
    try:
        user = tuple(
            UserCondition(c.property, c.comparator, json.loads(c.value_json)) for c in state.user
        )
        spec = FeatureSpec(
            state.name,
            state.boolean,
            _from_microseconds(state.rollout_start_us)
            if state.HasField("rollout_start_us")
            else None,
            _from_microseconds(state.rollout_end_us) if state.HasField("rollout_end_us") else None,
            user,
            state.rollout_percentage if state.HasField("rollout_percentage") else None,
            state.stickiness,
            state.group_id,
            tuple(Variant(v.name, v.weight, v.payload) for v in state.variants),
        )
        return check_spec(spec)
    except (ValueError, OverflowError) as exc:  # JSON, or a time out of range
        raise InvalidStoredData(f"feature spec {state.name!r} is damaged: {exc}") from None
    except InvalidArgument as exc:
        raise InvalidStoredData(f"feature spec {state.name!r}: {exc.message}") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DIGEST = attrgetter("digest")  # a KeyHash's 16 bytes


def _microseconds(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _from_microseconds(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)

"""Conversions between protobuf messages and core types. No logic beyond the mapping."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, MutableSequence, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kimball_grpc.codec._event_reader import read_events
from kimball_grpc.core.counters import CounterKind
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.events import AcceptedEvent, Event, EventFields
from kimball_grpc.core.feature_flags import (
    FeatureFlags,
    FeatureSpec,
    Json,
    SpecChange,
    UserCondition,
    Variant,
    check_spec,
)
from kimball_grpc.core.merged_counts import Counts, Nudge
from kimball_grpc.core.predictions import NaiveBayes
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

T = TypeVar("T")

_COUNTER_TYPES = {
    CounterKind.INTERNAL: pb.COUNTER_TYPE_INTERNAL,
    CounterKind.NAMED: pb.COUNTER_TYPE_NAMED,
    CounterKind.WEEKLY: pb.COUNTER_TYPE_WEEKLY,
}
_COUNTER_TYPE_NAMES = {counter_type: kind.value for kind, counter_type in _COUNTER_TYPES.items()}


def counter_type_name(counter_type: int) -> str:
    """The name REST answers and the CLI show for a ``CounterType``: ``internal``, ``named``
    or ``weekly`` (``unknown`` for a value this version does not know)."""
    return _COUNTER_TYPE_NAMES.get(counter_type, "unknown")


def event_from_proto(message: pb.Event) -> Event:
    return Event._make(_event_fields(message))


def event_fields(messages: Iterable[pb.Event]) -> list[EventFields]:
    """Each message's fields, in ``Event``'s order, as plain tuples: what ``prepare_events``
    reads, cheaper to build than ``Event``s (``Event._make`` of one is its ``Event``)."""
    return [_event_fields(message) for message in messages]


def request_event_fields(request: pb.TrackEventsRequest) -> list[EventFields]:
    """``event_fields(request.events)``, read in C from the request serialized again (the
    library's serializing costs a tenth of reading the fields through its objects); through
    the library's objects when the C reader leaves the bytes to it."""
    fields = read_events(request.SerializeToString(), _datetime_of)
    return event_fields(request.events) if fields is None else fields


def _event_fields(message: pb.Event) -> EventFields:
    has = message.HasField
    return (
        message.event_name,
        message.user_id,
        message.namespace,
        message.value if has("value") else None,
        _datetime_from_proto(message.datetime) if has("datetime") else None,
        message.ensure_goal,
    )


def _datetime_of(seconds: int, nanos: int) -> datetime:
    return _datetime_from_proto(Timestamp(seconds=seconds, nanos=nanos))


def _datetime_from_proto(stamp: Timestamp, field: str = "datetime") -> datetime:
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} is not a valid timestamp (years 0001 to 9999, nanos below 1e9)",
            **{field: f"{stamp.seconds}s {stamp.nanos}ns"},
        ) from None


def event_to_proto(event: Event) -> pb.Event:
    message = pb.Event(
        namespace=event.namespace,
        event_name=event.event_name,
        user_id=event.user_id,
        ensure_goal=event.ensure_goal,
    )
    if event.value is not None:
        message.value = event.value
    if event.datetime is not None:
        message.datetime.FromDatetime(event.datetime)
    return message


def accepted_to_proto(
    accepted: AcceptedEvent, dropped: int, replayed: bool = False
) -> pb.SubscribeResponse:
    return pb.SubscribeResponse(
        event=event_to_proto(accepted.event),
        sequence=accepted.sequence,
        dropped=dropped,
        user_hash=accepted.user_hash.hex(),
        replayed=replayed,
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# The tags of SubscribeResponse's fields `dropped` (3, a varint) and `events` (6, a
# length-delimited message): protobuf parses fields in any order, so a response is put
# together from its events' shared bytes, without a message built per subscriber.
_DROPPED_TAG = b"\x18"
_EVENTS_TAG = b"\x32"


def subscribe_entry(accepted: AcceptedEvent, replayed: bool = False) -> bytes:
    """``accepted`` encoded once for every subscriber: an element of ``SubscribeResponse``'s
    ``events`` (its tag, its length, then a ``SubscribeResponse`` with no ``dropped``)."""
    wire = accepted_to_proto(accepted, 0, replayed).SerializeToString()
    return _EVENTS_TAG + _varint(len(wire)) + wire


def subscribe_response_wire(entries: Sequence[bytes], dropped: int, batched: bool) -> bytes:
    """The bytes of one ``SubscribeResponse`` from ``subscribe_entry`` results: all of them
    in ``events`` when ``batched``, else the one event in the response's own fields; with
    ``dropped`` when it is not 0."""
    if batched:
        body = b"".join(entries)
    else:
        (entry,) = entries
        start = 1  # after the tag: the length's varint, then the event's own fields
        while entry[start] & 0x80:
            start += 1
        body = entry[start + 1 :]
    return body + _DROPPED_TAG + _varint(dropped) if dropped else body


def add_counter(out: MutableSequence[pb.Counter], counter: Counts, goals: AbstractSet[str]) -> int:
    """``counter`` appended to ``out``, built in place (a message built and then copied in
    costs 3x); its bytes there."""
    target = out.add()
    target.name = counter.name
    target.type = _COUNTER_TYPES[counter.kind]
    target.count = counter.count
    for events, n in sorted(counter.event_counts.items(), key=lambda i: (-i[1], i[0])):
        target.event_counts.add(events=events, count=n)
    for name, n in sorted(counter.single_event_counts.items(), key=lambda i: (-i[1], i[0])):
        target.single_event_counts.add(name=name, count=n)
    target.value.sum = counter.value_sum
    target.year = counter.iso_year
    target.week = counter.iso_week
    target.goal = counter.kind is not CounterKind.INTERNAL and counter.name in goals
    return field_bytes(target)


def add_item(out: MutableSequence[T], item: T) -> int:
    """``item`` (a string or a message) appended to ``out``; its bytes there."""
    out.append(item)
    return field_bytes(item)


def event_predictions_to_proto(per_goal: dict[str, dict[str, float]]) -> pb.GetPredictionsResponse:
    response = pb.GetPredictionsResponse()
    for goal, per_event in per_goal.items():
        events = response.goals[goal].events
        for event, value in per_event.items():
            events[event].bayes = value
    return response


def naive_bayes_to_proto(per_goal: dict[str, NaiveBayes]) -> pb.GetPredictionsResponse:
    response = pb.GetPredictionsResponse()
    for goal, answer in per_goal.items():
        target = response.goals[goal]
        if answer.note:
            target.note = answer.note
            continue
        target.yes = answer.yes
        target.no = answer.no
        target.likelihood = answer.likelihood
        target.probability = answer.probability
    return response


def nudges_to_proto(nudges: list[Nudge], goal: str, user_id: str) -> pb.GetNudgesResponse:
    return pb.GetNudgesResponse(
        nudges=[pb.Nudge(event_name=n.event_name, prediction=n.prediction) for n in nudges],
        goal=goal,
        user_id=user_id,
    )


def spec_from_proto(message: pb.FeatureSpec) -> FeatureSpec:
    """A checked spec (``InvalidArgument`` naming what is wrong)."""
    has = message.HasField
    return check_spec(
        FeatureSpec(
            message.name,
            message.boolean,
            _datetime_from_proto(message.rollout_start, "rollout_start")
            if has("rollout_start")
            else None,
            _datetime_from_proto(message.rollout_end, "rollout_end")
            if has("rollout_end")
            else None,
            tuple(
                UserCondition(c.property, c.comparator, json_value(c.value, f"user[{i}].value"))
                for i, c in enumerate(message.user)
            ),
            message.rollout_percentage if has("rollout_percentage") else None,
            message.stickiness,
            message.group_id,
            tuple(Variant(v.name, v.weight, v.payload) for v in message.variants),
        )
    )


def spec_to_proto(spec: FeatureSpec) -> pb.FeatureSpec:
    message = pb.FeatureSpec(
        name=spec.name,
        boolean=spec.boolean,
        stickiness=spec.stickiness,
        group_id=spec.group_id,
        variants=[
            pb.Variant(name=v.name, weight=v.weight, payload=v.payload) for v in spec.variants
        ],
    )
    if spec.rollout_percentage is not None:
        message.rollout_percentage = spec.rollout_percentage
    if spec.rollout_start is not None and spec.rollout_end is not None:
        message.rollout_start.FromDatetime(spec.rollout_start)
        message.rollout_end.FromDatetime(spec.rollout_end)
    for condition in spec.user:
        added = message.user.add(property=condition.property, comparator=condition.comparator)
        json_format.ParseDict(condition.value, added.value)
    return message


def spec_change_to_proto(change: SpecChange) -> pb.FeatureSpecChange:
    message = pb.FeatureSpecChange(token_id=change.token_id)
    if change.time is not None:
        message.time.FromDatetime(change.time)
    if change.old is not None:
        message.old_spec.CopyFrom(spec_to_proto(change.old))
    if change.new is not None:
        message.new_spec.CopyFrom(spec_to_proto(change.new))
    return message


def spec_message_size(spec: FeatureSpec) -> int:
    """The bytes ``spec`` takes in the message that carries the specs to sidecars."""
    return spec_to_proto(spec).ByteSize() + 5  # its tag and length in FeatureSpecs


def field_bytes(item: Message | str) -> int:
    """The bytes ``item``, a message or a string, takes as one element of a repeated field
    numbered 1 to 15: its one-byte tag, its length and itself."""
    size = len(item.encode()) if isinstance(item, str) else item.ByteSize()
    return 1 + (max(size.bit_length(), 1) + 6) // 7 + size  # tag, varint length, bytes


def flags_to_proto(flags: FeatureFlags) -> pb.FeatureSpecs:
    message = pb.FeatureSpecs(specs=[spec_to_proto(s) for s in flags.listed()])
    specs = message.SerializeToString(deterministic=True)
    message.fingerprint = hashlib.sha256(specs).hexdigest()[:32]
    message.version = flags.version
    return message


def json_value(value: struct_pb2.Value | struct_pb2.Struct, field: str = "value") -> Json:
    """A ``google.protobuf.Value`` or ``Struct`` as plain JSON (whole numbers as ints: they
    are doubles); ``InvalidArgument`` naming ``field`` for a number JSON cannot hold."""
    try:
        return _whole_numbers(json_format.MessageToDict(value))
    except ValueError:  # NaN or infinity
        raise InvalidArgument(f"{field} holds a number that is not finite", key=field) from None


def _whole_numbers(value: Json) -> Json:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    return value

"""The C reader of a ``TrackEventsRequest``'s events gives exactly what reading the
message's fields gives, and leaves to the protobuf library what it does not understand."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime

import pytest
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from kimball_grpc.codec import _event_reader
from kimball_grpc.codec.proto_mapping import event_fields, request_event_fields
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb


def request(*events: pb.Event) -> pb.TrackEventsRequest:
    return pb.TrackEventsRequest(events=list(events))


def stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def made(seconds: int, nanos: int) -> tuple[int, int]:
    return seconds, nanos


def fields_of(data: bytes) -> list | None:
    return _event_reader.read_events(data, made)


@pytest.mark.parametrize(
    "message",
    [
        request(),
        request(pb.Event(event_name="signup", user_id="u1")),
        request(pb.Event()),  # empty fields: refused later by the same validation
        request(pb.Event(namespace="ns", event_name="buy", user_id="u2", value=2.5)),
        request(pb.Event(event_name="buy", user_id="u2", value=0.0)),  # set, though zero
        request(pb.Event(event_name="buy", user_id="u2", value=-1e300, ensure_goal=True)),
        request(pb.Event(event_name="a", user_id="u", datetime=stamp(1_704_670_200, 5_000))),
        request(pb.Event(event_name="a", user_id="u", datetime=stamp(0))),  # set, though 0
        request(pb.Event(event_name="café ☕", user_id="用户 👩‍👩‍👧", namespace="ñ")),
        request(*(pb.Event(event_name=f"e{i % 20}", user_id=f"u{i}") for i in range(300))),
    ],
)
def test_the_reader_gives_what_the_message_fields_give(message):
    assert request_event_fields(message) == event_fields(message.events)
    assert fields_of(message.SerializeToString()) is not None


def test_many_random_requests_read_alike():
    rng = random.Random(7)
    words = ["", "a", "signup", "é", "名前", "x" * 300, "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
    for _ in range(300):
        events = []
        for _ in range(rng.randrange(0, 30)):
            event = pb.Event(
                namespace=rng.choice(words),
                event_name=rng.choice(words),
                user_id=rng.choice(words) + str(rng.randrange(5)),
                ensure_goal=rng.random() < 0.3,
            )
            if rng.random() < 0.3:
                event.value = rng.uniform(-1e6, 1e6)
            if rng.random() < 0.3:
                event.datetime.CopyFrom(stamp(rng.randrange(0, 2**33), rng.randrange(10**9)))
            events.append(event)
        message = request(*events)
        assert request_event_fields(message) == event_fields(message.events)


def test_the_same_names_in_a_batch_are_one_object():
    message = request(*(pb.Event(namespace="ns", event_name="e", user_id="u") for _ in range(3)))
    (first, *others) = fields_of(message.SerializeToString())
    assert all(o[0] is first[0] and o[2] is first[2] for o in others)


def test_unknown_fields_are_skipped_as_the_library_skips_them():
    # Field 9 of each kind on the request and on an event, and event_name sent as a varint
    # (the library keeps a known number of another wire type as an unknown field).
    unknown = b"\x48\x01" + b"\x49" + bytes(8) + b"\x4a\x02hi" + b"\x4d" + bytes(4)
    event = pb.Event(event_name="buy", user_id="u").SerializeToString()
    data = unknown + b"\x0a" + bytes([len(event + unknown + b"\x10\x05")]) + event
    data += unknown + b"\x10\x05"
    parsed = pb.TrackEventsRequest.FromString(data)
    assert fields_of(data) == event_fields(parsed.events) == [("buy", "u", "", None, None, False)]
    assert request_event_fields(parsed) == event_fields(parsed.events)


def test_a_bad_datetime_is_refused_as_the_message_path_refuses_it():
    message = request(pb.Event(event_name="a", user_id="u", datetime=stamp(2**40)))
    with pytest.raises(InvalidArgument, match="datetime is not a valid timestamp"):
        request_event_fields(message)
    with pytest.raises(InvalidArgument, match="datetime is not a valid timestamp"):
        event_fields(message.events)


def test_a_good_datetime_is_an_aware_datetime():
    message = request(pb.Event(event_name="a", user_id="u", datetime=stamp(86_400, 1_000)))
    (event,) = request_event_fields(message)
    assert event[4] == datetime(1970, 1, 2, 0, 0, 0, 1, tzinfo=UTC)


def event_bytes(*fields: bytes) -> bytes:
    body = b"".join(fields)
    return b"\x0a" + bytes([len(body)]) + body


@pytest.mark.parametrize(
    "data",
    [
        event_bytes(b"\x12\x01a", b"\x12\x01b"),  # event_name twice: the library's rules
        event_bytes(b"\x2a\x02\x08\x01", b"\x2a\x02\x10\x01"),  # datetime twice: merged there
        event_bytes(b"\x2a\x04\x08\x01\x08\x02"),  # seconds twice
        event_bytes(b"\x12\x02\xff\xfe"),  # not UTF-8: the library says what is wrong
        event_bytes(b"\x12\x05ab"),  # a string past the event's end
        event_bytes(b"\x21" + struct.pack("<d", 1.0)[:4]),  # a value cut short
        event_bytes(b"\x30\xff"),  # a varint cut short
        event_bytes(b"\x4b\x4c"),  # a group (wire types 3 and 4)
        b"\x0a\x05\x12\x01a",  # an event past the request's end
        b"\x0a",  # a length missing
        event_bytes(b"\x00\x01"),  # field number 0 in an event
        b"\x05\x61\x30\x01\x02",  # field number 0 in the request
        event_bytes(b"\x80\x80\x80\x80\x10\x01"),  # field number 2**29, past the last
    ],
)
def test_what_the_reader_does_not_understand_is_left_to_the_library(data):
    assert fields_of(data) is None


def wire_fields(message: pb.TrackEventsRequest) -> list:
    """The message's events as the reader gives them with ``made``."""
    return [
        (
            e.event_name,
            e.user_id,
            e.namespace,
            e.value if e.HasField("value") else None,
            (e.datetime.seconds, e.datetime.nanos) if e.HasField("datetime") else None,
            e.ensure_goal,
        )
        for e in message.events
    ]


def test_damaged_bytes_are_read_as_the_library_reads_them_or_left_to_it():
    # Mutated requests: whenever the reader answers, the library parses the same bytes
    # into the same events (NaN values left out: they never compare equal).
    rng = random.Random(11)
    seeds = [
        pb.TrackEventsRequest(
            events=[
                pb.Event(
                    namespace="ns", event_name="é", user_id=f"u{i}", value=i, ensure_goal=True
                ),
                pb.Event(event_name="a", user_id="名", datetime=stamp(i * 1000, i)),
            ]
        ).SerializeToString()
        for i in range(20)
    ]
    answered = 0
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.5 and at < len(data):
                data[at] = rng.randrange(256)
            else:
                data.insert(at, rng.randrange(256))
        got = fields_of(bytes(data))
        if got is None or any(value != value for _, _, _, value, _, _ in got):  # NaN
            continue
        try:
            message = pb.TrackEventsRequest.FromString(bytes(data))
        except DecodeError:
            raise AssertionError(f"read what the library refuses: {bytes(data).hex()}") from None
        assert got == wire_fields(message), bytes(data).hex()
        answered += 1
    assert answered > 1_000  # the reader took part of them


def test_a_wrong_argument_is_a_type_error():
    with pytest.raises(TypeError):
        _event_reader.read_events("not bytes", made)
    with pytest.raises(TypeError):
        _event_reader.read_events(b"")  # type: ignore[call-arg]

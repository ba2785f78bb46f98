"""Cluster mode's event sequence numbers: an event's stream message and index in it, and
which message a resume after a number starts from."""

from __future__ import annotations

from kimball_grpc.cluster.event_feed import (
    RECORDS_PER_MESSAGE,
    event_sequence,
    first_message_after,
)
from kimball_grpc.cluster.event_log import GROUP_RECORDS
from kimball_grpc.core.limits import MAX_RELAYED_EVENTS

M = RECORDS_PER_MESSAGE


def test_a_message_numbers_its_records_after_those_of_every_earlier_message():
    assert event_sequence(1234, 0) == 1_234_000_000
    assert event_sequence(1234, 17) == 1_234_000_017
    # The most records a message can hold still number below the next message's.
    most = max(GROUP_RECORDS, MAX_RELAYED_EVENTS)
    assert event_sequence(7, most - 1) < event_sequence(8, 0)


def test_a_resume_starts_at_the_message_that_may_hold_the_next_event():
    assert first_message_after(0) == 1  # from the start: message 1 is the stream's first
    assert first_message_after(M - 1) == 1
    assert first_message_after(event_sequence(5, 3)) == 5  # the rest of message 5
    # After a message's last possible record: the next message.
    assert first_message_after(event_sequence(5, M - 1)) == 6

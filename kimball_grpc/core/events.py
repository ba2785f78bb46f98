"""Incoming events and their validation into records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.limits import MAX_BATCH_EVENTS
from kimball_grpc.core.names import check_name, check_namespace, check_text, check_value
from kimball_grpc.core.records import EventRecord, GoalRecord


class Event(NamedTuple):
    """An event as a client sent it: user ``user_id`` did ``event_name``."""

    event_name: str
    user_id: str
    namespace: str = ""
    value: float | None = None
    datetime: datetime | None = None  # timezone-aware; None means now
    ensure_goal: bool = False


def iso_week(when: datetime) -> tuple[int, int]:
    """The ISO (year, week) of a timezone-aware datetime, in UTC."""
    if when.tzinfo is None:
        raise InvalidArgument("datetime must carry a time zone", datetime=when.isoformat())
    year, week, _ = when.astimezone(UTC).isocalendar()
    return year, week


def prepare_event(event: Event, current_week: tuple[int, int]) -> EventRecord:
    """Validate ``event`` into a record; ``current_week`` applies when it has no datetime."""
    name, user, namespace, value, when, ensure_goal = event
    namespace = check_namespace(namespace)
    name = check_name("event_name", name)
    user = check_text("user_id", user)
    if value is not None:
        check_value(value)
    year, week = current_week if when is None else iso_week(when)
    return EventRecord(namespace, name, hash_key(user), year, week, value, ensure_goal)


def prepare_events(events: Sequence[Event], current_week: tuple[int, int]) -> list[EventRecord]:
    """Validate a batch into records, all or nothing: ``InvalidArgument`` names the first
    bad event by its index (a batch of one: as ``prepare_event``)."""
    if len(events) > MAX_BATCH_EVENTS:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH_EVENTS} events, got {len(events)}",
            key="events",
        )
    records = []
    for index, event in enumerate(events):
        try:
            records.append(prepare_event(event, current_week))
        except InvalidArgument as exc:
            if len(events) == 1:
                raise
            raise InvalidArgument(
                f"event {index}: {exc.message}", index=str(index), **exc.details
            ) from None
    return records


def prepare_goal(namespace: str, goal_name: str) -> GoalRecord:
    """Validate a goal into a record."""
    return GoalRecord(check_namespace(namespace), check_name("goal_name", goal_name))


class AcceptedEvent(NamedTuple):
    """An event as accepted, with its position in the accepted stream. (A named tuple:
    built once per event for subscribers, the cheapest immutable type.)"""

    sequence: int
    event: Event  # namespace resolved
    user_hash: bytes = b""  # the user id's 128-bit hash (what the log keeps)

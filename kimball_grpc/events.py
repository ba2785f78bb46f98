"""Incoming events and their validation into records."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from kimball_grpc.bloom import hash_key
from kimball_grpc.errors import InvalidArgument
from kimball_grpc.limits import (
    DEFAULT_NAMESPACE,
    MAX_ABS_VALUE,
    MAX_BATCH_EVENTS,
    MAX_NAME_LENGTH,
)
from kimball_grpc.records import EventRecord, GoalRecord


class Event(NamedTuple):
    """An event as a client sent it: user ``user_id`` did ``event_name``."""

    event_name: str
    user_id: str
    namespace: str = ""
    value: float | None = None
    datetime: datetime | None = None  # timezone-aware; None means now
    ensure_goal: bool = False


def check_name(field: str, value: str, *, required: bool = True) -> str:
    """A name as given, or ``InvalidArgument`` naming ``field``."""
    if value.__class__ is str and 0 < len(value) <= MAX_NAME_LENGTH and value.isprintable():
        return value  # the common case, checked in one expression
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string", **{field: repr(value)})
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required and must not be empty", key=field)
        return value
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{field} is longer than {MAX_NAME_LENGTH} characters", **{field: value[:64] + "..."}
        )
    # Format characters (emoji joiners), separators and unassigned code points are fine
    # in a name; control characters (C0, DEL, C1) and unpaired surrogates are not.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidArgument(
            f"{field} contains control characters or unpaired surrogates",
            **{field: repr(value)},
        )
    return value


def check_value(value: float) -> float:
    """An event value, or ``InvalidArgument``: a finite number within +-MAX_ABS_VALUE."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (
            abs(value) <= MAX_ABS_VALUE  # NaN fails this too
        )
    ):
        raise InvalidArgument(
            f"value must be a finite number between -{MAX_ABS_VALUE:g} and {MAX_ABS_VALUE:g}",
            value=repr(value),
        )
    return value


def check_namespace(namespace: str) -> str:
    """The namespace, ``default`` when empty."""
    return check_name("namespace", namespace, required=False) or DEFAULT_NAMESPACE


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
    user = check_name("user_id", user)
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

"""Incoming events and their validation into records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

from kimball_grpc.core.bloom import KeyHash, hash_key
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


# An event's fields in ``Event``'s order: an ``Event`` or a plain tuple (the gRPC servicers
# read a message's fields into one, cheaper to build than an ``Event``).
EventFields = tuple[str, str, str, float | None, datetime | None, bool]


def prepare_event(event: EventFields, current_week: tuple[int, int]) -> EventRecord:
    """Validate ``event`` into a record; ``current_week`` applies when it has no datetime."""
    name, user, namespace, value, when, ensure_goal = event
    namespace = check_namespace(namespace)
    name = check_name("event_name", name)
    user = check_text("user_id", user)
    if value is not None:
        check_value(value)
    year, week = current_week if when is None else iso_week(when)
    return EventRecord(namespace, name, hash_key(user), year, week, value, ensure_goal)


class _Checked(dict[Any, Any]):
    """Each distinct key's ``check`` result, computed on its first lookup (a miss)."""

    __slots__ = ("_check",)

    def __init__(self, check: Callable[[Any], Any]) -> None:
        super().__init__()
        self._check = check

    def __missing__(self, key: Any) -> Any:
        result = self[key] = self._check(key)
        return result


def prepare_events(
    events: Sequence[EventFields], current_week: tuple[int, int]
) -> list[EventRecord]:
    """Validate a batch into records, all or nothing: ``InvalidArgument`` names the first
    bad event by its index (a batch of one: as ``prepare_event``)."""
    if len(events) > MAX_BATCH_EVENTS:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH_EVENTS} events, got {len(events)}",
            key="events",
        )
    # A batch repeats its namespace, its names and some user ids: each distinct one is
    # checked (a user id hashed) once per batch. The checks are prepare_event's, so an
    # event valid here is valid there; a bad one is told by prepare_event itself.
    namespaces = _Checked(check_namespace)
    names = _Checked(partial(check_name, "event_name"))
    users: dict[str, KeyHash] = {}  # mostly distinct: looked up inline, a miss costs least
    get_user = users.get
    records = []
    append = records.append
    new_record = tuple.__new__  # EventRecord's own constructor without its Python frame
    for index, event in enumerate(events):
        name, user, namespace, value, when, ensure_goal = event
        try:
            namespace = namespaces[namespace]
            name = names[name]
            user_hash = get_user(user)
            if user_hash is None:
                user_hash = users[user] = hash_key(check_text("user_id", user))
            if value is not None:
                check_value(value)
            year, week = current_week if when is None else iso_week(when)
        except (InvalidArgument, TypeError):  # TypeError: an unhashable, so not a string
            _raise_bad(events, index, current_week)
            raise
        append(
            new_record(EventRecord, (namespace, name, user_hash, year, week, value, ensure_goal))
        )
    return records


def _raise_bad(events: Sequence[EventFields], index: int, current_week: tuple[int, int]) -> None:
    """Raise ``prepare_event``'s error for ``events[index]``, named by its index unless the
    batch holds only it."""
    try:
        prepare_event(events[index], current_week)
    except InvalidArgument as exc:
        if len(events) == 1:
            raise
        raise InvalidArgument(
            f"event {index}: {exc.message}", index=str(index), **exc.details
        ) from None


def prepare_goal(namespace: str, goal_name: str) -> GoalRecord:
    """Validate a goal into a record."""
    return GoalRecord(check_namespace(namespace), check_name("goal_name", goal_name))


class AcceptedEvent(NamedTuple):
    """An event as accepted, with its position in the accepted stream. (A named tuple:
    built once per event for subscribers, the cheapest immutable type.)"""

    sequence: int
    event: Event  # namespace resolved
    user_hash: bytes = b""  # the user id's 128-bit hash (what the log keeps)


def stored_event(record: EventRecord) -> Event:
    """The event a stored record stands for, as far as it is kept: no user id, no datetime."""
    return Event(record.event_name, "", record.namespace, record.value, None, record.ensure_goal)

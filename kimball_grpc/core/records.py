"""State changes as records: what the engine applies, and what a log replays.

A record is fully resolved: the user id is already a hash (no raw id is kept)
and the ISO week is fixed when the event is accepted, so replaying a record
gives the same state whenever it happens.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from kimball_grpc.core.bloom import KeyHash

if TYPE_CHECKING:  # feature_flags validates with events, which builds records
    from kimball_grpc.core.feature_flags import FeatureSpec


class EventRecord(NamedTuple):
    """One accepted event. (Named tuples: built once per event, the cheapest immutable type.)"""

    namespace: str
    event_name: str
    user_hash: KeyHash
    iso_year: int
    iso_week: int
    value: float | None = None
    ensure_goal: bool = False


class GoalRecord(NamedTuple):
    """An event name marked as a goal."""

    namespace: str
    goal_name: str


class FeatureSpecRecord(NamedTuple):
    """A feature spec created or replaced (``spec``), or deleted (``spec`` None), at
    ``time`` by the token ``token_id`` (None and empty in records logged before changes
    were recorded)."""

    name: str
    spec: FeatureSpec | None
    time: datetime | None = None
    token_id: str = ""


Record = EventRecord | GoalRecord | FeatureSpecRecord

"""The events the benchmark scripts send, generated from a seeded RNG before any clock starts,
and their wire forms: ``TrackEventsRequest`` bytes and the REST bodies of the same events."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from google.protobuf import json_format

from kimball_grpc.codec import proto_mapping
from kimball_grpc.core import events as kevents
from kimball_grpc.core.events import Event
from kimball_grpc.core.records import EventRecord
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

NOW = datetime(2024, 5, 15, 12, 0, tzinfo=UTC)
BATCH = 100  # events per Ingestor.accept call, as one gRPC stream message
# The two rarest of the 20 names: the clients of bench_rest (and of bench_storage's part over
# gRPC) mark their events ``ensure_goal``.
GOAL_NAMES = ("event_018", "event_019")

Body = tuple[bytes, int]  # a serialized request or REST body, and the events in it
T = TypeVar("T")


def _preparer() -> Callable[[Event], EventRecord]:
    """``prepare_event`` with the week of NOW, whichever form it takes (a datetime or a week)."""
    prepare = kevents.prepare_event
    second = list(inspect.signature(prepare).parameters)[1]
    if second == "now":
        return lambda event: prepare(event, NOW)
    week = tuple(NOW.isocalendar())[:2]
    return lambda event: prepare(event, week)


prepare = _preparer()


def zipf_weights(n: int, exponent: float) -> list[float]:
    return [1.0 / (rank + 1) ** exponent for rank in range(n)]


def user_ids(rng: random.Random, n: int) -> list[str]:
    """Realistic opaque ids (32 hex characters)."""
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of ``size`` (the last one may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class Workload:
    """Events as clients send them, their prepared records, and what bench_core's floor needs."""

    name: str
    events: list[Event]
    records: list[EventRecord]
    keys: list[str]  # user id per event
    names: list[str]  # event name per event
    weeks: list[tuple[int, int]]  # (iso_year, iso_week) per event
    distinct: dict[str, int]  # distinct users per event name
    distinct_users: int
    new_pair_share: float  # share of events whose (user, name) was not seen before
    new_user_share: float


def make_plain_workload(
    n_events: int,
    n_users: int,
    n_names: int,
    seed: int,
    *,
    weeks: int = 1,
    namespace: str = "",
    unique_users: bool = False,
) -> Workload:
    """Events over ``n_users`` users and ``n_names`` names, both Zipf-like (repeats happen);
    with ``unique_users``, each of the ``n_users`` (= ``n_events``) users does one event."""
    rng = random.Random(seed)
    users = user_ids(rng, n_users)
    names = [f"event_{i:03d}" for i in range(n_names)]
    if unique_users:
        if len(set(users)) != n_events:
            raise RuntimeError("user ids collided; change --seed")
        keys = users
    else:
        keys = rng.choices(users, zipf_weights(n_users, 0.7), k=n_events)
    picked = rng.choices(names, zipf_weights(n_names, 1.0), k=n_events)
    if weeks > 1:
        stamps = [NOW - timedelta(days=7 * rng.randrange(weeks)) for _ in range(n_events)]
    else:
        stamps = [None] * n_events
    events = [
        Event(event_name=n, user_id=k, namespace=namespace, datetime=s)
        for k, n, s in zip(keys, picked, stamps, strict=True)
    ]
    return _workload(f"plain {n_events:,} events", events)


def _workload(name: str, events: list[Event]) -> Workload:
    records = [prepare(e) for e in events]
    seen_users: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    per_name: dict[str, set[str]] = {}
    new_users = new_pairs = 0
    for e in events:
        if e.user_id not in seen_users:
            new_users += 1
            seen_users.add(e.user_id)
        if (e.user_id, e.event_name) not in seen_pairs:
            new_pairs += 1
            seen_pairs.add((e.user_id, e.event_name))
        per_name.setdefault(e.event_name, set()).add(e.user_id)
    n = max(1, len(events))
    return Workload(
        name=name,
        events=events,
        records=records,
        keys=[e.user_id for e in events],
        names=[e.event_name for e in events],
        weeks=[(r.iso_year, r.iso_week) for r in records],
        distinct={k: len(v) for k, v in per_name.items()},
        distinct_users=len(seen_users),
        new_pair_share=new_pairs / n,
        new_user_share=new_users / n,
    )


# -- wire forms ---------------------------------------------------------------------------


def in_namespace(events: list[Event], namespace: str, goals: Collection[str] = ()) -> list[Event]:
    """The events moved to ``namespace`` (a run of its own: the same Bloom work from empty
    counters), ``ensure_goal`` on those named in ``goals``."""
    return [e._replace(namespace=namespace, ensure_goal=e.event_name in goals) for e in events]


def _requests(events: list[Event], batch: int) -> list[pb.TrackEventsRequest]:
    to_proto = proto_mapping.event_to_proto
    return [pb.TrackEventsRequest(events=[to_proto(e) for e in b]) for b in batches(events, batch)]


def track_events_requests(events: list[Event], batch: int) -> list[Body]:
    """Serialized ``TrackEventsRequest``s of ``batch`` events: for ``TrackEvents`` calls and
    ``StreamEvents`` messages."""
    return [(m.SerializeToString(), len(m.events)) for m in _requests(events, batch)]


def json_bodies(events: list[Event], batch: int) -> list[Body]:
    """``POST /v0/analytics`` bodies ``{"events": [...]}`` of ``batch`` events: the JSON form of
    the same ``TrackEventsRequest``s (proto field names, default values left out)."""
    out = []
    for message in _requests(events, batch):
        body = json_format.MessageToDict(message, preserving_proto_field_name=True)
        out.append((json.dumps(body, separators=(",", ":")).encode(), len(message.events)))
    return out

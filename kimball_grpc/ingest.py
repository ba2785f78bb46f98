"""The ingestion path: the one place where events are validated, applied and handed on."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from kimball_grpc.engine import Engine
from kimball_grpc.errors import InvalidArgument
from kimball_grpc.events import Event, iso_week, prepare_event, prepare_goal
from kimball_grpc.limits import MAX_BATCH_EVENTS
from kimball_grpc.records import Record
from kimball_grpc.subscriptions import AcceptedEvent, SubscriptionHub


class Ingestor:
    """Accepts events and goals into the engine.

    A batch is validated whole before any of it is applied. Every state change,
    event or goal, is applied in ``_commit``; accepted events are then handed on
    to live subscribers (forwarding hooks in there too).
    """

    def __init__(
        self,
        engine: Engine,
        hub: SubscriptionHub,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observe_events: Callable[[int, float], None] = lambda count, seconds: None,
    ) -> None:
        self.engine = engine
        self.hub = hub
        self._clock = clock
        self._observe_events = observe_events
        self._sequence = 0

    async def accept(self, events: Sequence[Event]) -> int:
        """Validate then apply ``events``, all or nothing; returns how many were accepted."""
        if len(events) > MAX_BATCH_EVENTS:
            raise InvalidArgument(
                f"a batch holds at most {MAX_BATCH_EVENTS} events, got {len(events)}",
                key="events",
            )
        current_week = iso_week(self._clock())
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
        start = time.perf_counter()
        self._commit(records)
        self._observe_events(len(records), time.perf_counter() - start)
        if self.hub.subscriber_count:
            accepted = []
            for event, record in zip(events, records, strict=True):
                self._sequence += 1
                resolved = event._replace(namespace=record.namespace)
                accepted.append(AcceptedEvent(self._sequence, resolved))
            self.hub.publish(accepted)
        else:
            self._sequence += len(records)
        return len(records)

    async def create_goal(self, namespace: str, goal_name: str) -> None:
        """Mark ``goal_name`` as a goal of ``namespace``."""
        self._commit([prepare_goal(namespace, goal_name)])

    def _commit(self, records: Sequence[Record]) -> None:
        """The one place validated records change the state (the durable log goes here)."""
        apply = self.engine.apply
        for record in records:
            apply(record)

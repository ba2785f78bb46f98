"""The ingestion path: the one place where events are validated, logged, applied and handed on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from functools import partial

from kimball_grpc.codec.proto_mapping import spec_message_size
from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    InvalidStoredData,
    OutOfRange,
)
from kimball_grpc.core.events import AcceptedEvent, Event, iso_week, prepare_events, prepare_goal
from kimball_grpc.core.feature_flags import MAX_SPECS_BYTES, FeatureSpec
from kimball_grpc.core.limits import MAX_RELAYED_EVENTS
from kimball_grpc.core.records import EventRecord, FeatureSpecRecord, Record
from kimball_grpc.streaming.event_forwarding import EventForwarding
from kimball_grpc.streaming.spec_changes import SpecChanges
from kimball_grpc.streaming.subscriptions import SubscriptionHub
from storage.wal import WriteAheadLog


class Ingestor:
    """Accepts events and goals into the engine.

    A batch is validated whole before any of it is applied. With a write-ahead
    log, the batch is in the log before it changes the engine, and the caller is
    answered after both. Every state change, event or goal, is applied in
    ``_apply``, in log order; accepted events are then handed on to the external
    event targets and to live subscribers, numbered by their log sequence, and
    feature spec changes wake the streams that watch them.
    """

    def __init__(
        self,
        engine: Engine,
        hub: SubscriptionHub,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observe_events: Callable[[int, float], None] = lambda count, seconds: None,
        log: WriteAheadLog | None = None,
        forwarding: EventForwarding | None = None,
    ) -> None:
        self.engine = engine
        self.hub = hub
        self.spec_changes = SpecChanges()  # feature spec changes, for WatchFeatureSpecs
        self._forwarding = forwarding  # external_grpc_event_targets (None: none)
        self._clock = clock
        self._observe_events = observe_events
        self._log = log  # None: nothing is durable (benchmarks, engine tests)
        self._sequence = 0  # without a log: records applied so far

    async def accept(self, events: Sequence[Event]) -> int:
        """Validate then apply ``events``, all or nothing; returns how many were accepted.

        ``InvalidArgument`` for a bad event (nothing applied), ``StorageError`` when the
        log cannot take the batch (nothing applied)."""
        records = prepare_events(events, iso_week(self._clock()))
        if records:
            await self._commit(records, events)
        return len(records)

    @property
    def last_sequence(self) -> int:
        """The sequence number of the last record applied (the log's, when there is one:
        it goes on from what start-up restored)."""
        return self._log.last_sequence if self._log else self._sequence

    async def replay(self, after: int, through: int) -> AsyncIterator[AcceptedEvent]:
        """The events with sequence numbers ``after`` < n <= ``through``, read back from the
        log, in order (read in a worker thread). The log keeps hashes, not user ids: the
        events have no ``user_id`` and no ``datetime``. ``OutOfRange`` if the log no
        longer holds record ``after + 1``; ``FailedPrecondition`` without a log."""
        if self._log is None:
            raise FailedPrecondition("this server keeps no write-ahead log to replay from")
        entries = self._log.entries(after)
        expected = after + 1
        while expected <= through:
            try:
                entry = await asyncio.to_thread(next, entries, None)
            except OSError as exc:  # a segment removed while being read
                raise OutOfRange(f"the write-ahead log changed while read: {exc}") from None
            if entry is None or entry.sequence > expected:
                raise OutOfRange(
                    f"the write-ahead log no longer holds record {expected}: resume from a "
                    f"later sequence or subscribe live",
                    after_sequence=str(after),
                )
            for sequence, record in enumerate(decode_records(entry.payload), entry.sequence):
                if expected <= sequence <= through and isinstance(record, EventRecord):
                    yield AcceptedEvent(sequence, _stored_event(record), record.user_hash.digest)
            expected = entry.last + 1

    async def accept_relayed(self, batches: Sequence[bytes]) -> int:
        """Apply the events a sidecar spooled: ``RecordBatch`` bytes, user ids already hashed
        and weeks fixed when the sidecar accepted them; returns how many events. They are
        logged and applied as one batch. ``InvalidArgument`` if a batch cannot be read or
        holds anything but events (nothing applied). The events passed on to subscribers
        and event targets have no ``user_id`` and no ``datetime``, as replayed ones."""
        records: list[EventRecord] = []
        for index, payload in enumerate(batches):
            try:
                decoded = decode_records(payload)
            except InvalidStoredData as exc:
                raise InvalidArgument(
                    f"relayed batch {index}: {exc.message}", index=str(index)
                ) from None
            events = [r for r in decoded if isinstance(r, EventRecord)]
            if len(events) != len(decoded):
                raise InvalidArgument(
                    f"relayed batch {index} holds more than events: a relay sends events only",
                    index=str(index),
                )
            records.extend(events)
        if len(records) > MAX_RELAYED_EVENTS:
            raise InvalidArgument(
                f"a relay message holds at most {MAX_RELAYED_EVENTS} events, got {len(records)}",
                key="batches",
            )
        if records:
            await self._commit(records, [_stored_event(r) for r in records])
        return len(records)

    async def create_goal(self, namespace: str, goal_name: str) -> None:
        """Mark ``goal_name`` as a goal of ``namespace``."""
        await self._commit([prepare_goal(namespace, goal_name)], ())

    async def put_feature_spec(self, spec: FeatureSpec) -> None:
        """Create or replace a (checked) feature spec; ``InvalidArgument`` if the set would
        pass its limits (nothing logged)."""
        flags = self.engine.flags
        flags.check_room(spec.name)
        others = sum(spec_message_size(s) for s in flags.listed() if s.name != spec.name)
        if others + spec_message_size(spec) > MAX_SPECS_BYTES:
            raise InvalidArgument(
                f"the feature specs would take more than {MAX_SPECS_BYTES} bytes "
                f"(sidecars receive them whole): make this spec or others smaller",
                name=spec.name,
            )
        await self._commit([FeatureSpecRecord(spec.name, spec)], ())

    async def delete_feature_spec(self, name: str) -> None:
        """Delete a feature spec; ``NotFound`` if there is none of that name."""
        self.engine.flags.get(name)
        await self._commit([FeatureSpecRecord(name, None)], ())

    async def _commit(self, records: Sequence[Record], events: Sequence[Event]) -> None:
        if self._log is None:
            self._apply(records, events, self._sequence + 1)
            return
        apply = partial(self._apply, records, events)
        await self._log.append(encode_records(records), len(records), apply)

    def _apply(self, records: Sequence[Record], events: Sequence[Event], first: int) -> None:
        """The one place validated records change the state: ``first`` is the sequence
        number of the first record (the log's, when there is one)."""
        start = time.perf_counter()
        apply = self.engine.apply
        for record in records:
            apply(record)
        self._sequence = first + len(records) - 1
        if records[0].__class__ is FeatureSpecRecord:
            self.spec_changes.notify()
        if events:
            self._observe_events(len(records), time.perf_counter() - start)
            if self._forwarding:
                self._forwarding.offer_records(records, events)
            if self.hub.subscriber_count:
                self.hub.publish(
                    [
                        AcceptedEvent(
                            sequence,
                            # The namespace resolved ("" is "default"); a copy only then.
                            event
                            if event.namespace == record.namespace
                            else event._replace(namespace=record.namespace),
                            record.user_hash.digest,
                        )
                        for sequence, event, record in zip(
                            range(first, first + len(records)), events, records, strict=True
                        )
                    ]
                )


def _stored_event(record: EventRecord) -> Event:
    """The event a stored record stands for, as far as it is kept: no user id, no datetime."""
    return Event(record.event_name, "", record.namespace, record.value, None, record.ensure_goal)

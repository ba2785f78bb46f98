"""The ingestion path: the one place where events are validated, logged, applied and handed on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from kimball_grpc.codec.proto_mapping import spec_message_size
from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.config.logs import CallContext, current_call
from kimball_grpc.core.engine import Engine, Growth
from kimball_grpc.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    InvalidStoredData,
    KimballError,
    LimitExceeded,
    OutOfRange,
)
from kimball_grpc.core.events import (
    AcceptedEvent,
    Event,
    EventFields,
    iso_week,
    prepare_events,
    prepare_goal,
    stored_event,
)
from kimball_grpc.core.feature_flags import ANONYMOUS, FeatureSpec
from kimball_grpc.core.growth_limits import NOTHING, GrowthLimits, Reservation
from kimball_grpc.core.limits import FEATURE_SPEC_BYTES, MAX_RELAYED_EVENTS, StateLimits
from kimball_grpc.core.records import EventRecord, FeatureSpecRecord, Record
from kimball_grpc.streaming.event_forwarding import EventForwarding
from kimball_grpc.streaming.spec_changes import SpecChanges
from kimball_grpc.streaming.subscriptions import SubscriptionHub
from storage.wal import WriteAheadLog


class EventCounts(Protocol):
    """Where the events that came in are counted (the metrics)."""

    def ingest_events(self, api: str, count: int) -> None:
        """``count`` events were accepted through ``api`` (rest, grpc, sidecar)."""

    def refuse_events(self, code: str, count: int) -> None:
        """``count`` events were refused with the gRPC status named ``code``."""


class RecordLog(Protocol):
    """Where the Ingestor makes a batch durable before answering: the write-ahead log, or
    in cluster mode the JetStream stream."""

    @property
    def last_sequence(self) -> int:
        """The sequence number of the last record appended."""

    async def append(self, payload: bytes, count: int, on_durable: Callable[[int], None]) -> int:
        """Make the ``count`` records of ``payload`` (a ``RecordBatch``) durable, then call
        ``on_durable`` with the first one's sequence number, and return it."""


# The events a batch of records stands for, made on demand (see ``Ingestor._apply``).
class ReplicatedState(Protocol):
    """Where a cluster replica writes the state every replica holds alike: feature spec
    changes, and the records that add namespaces and names (``ReplicatedRecords``)."""

    async def write(self, records: Sequence[Record], check: Callable[[], object]) -> None: ...


EventsOf = Callable[[], Sequence[Event]]
RELAY_REFUSALS_LOG_SECONDS = 60.0  # at most one log line per this long about them
logger = logging.getLogger(__name__)  # not "log": the write-ahead log is "log" here


class Ingestor:
    """Accepts events and goals into the engine.

    A batch is validated whole, and checked against the growth limits, before any
    of it is applied. With a write-ahead log, the batch is in the log before it
    changes the engine, and the caller is answered after both. Every state change,
    event or goal, is applied in ``_apply``, in log order; accepted events are then
    handed on to the external event targets and to live subscribers, numbered by
    their log sequence, and feature spec changes wake the streams that watch them.
    """

    def __init__(
        self,
        engine: Engine,
        hub: SubscriptionHub | None,  # None: the subscribers are fed elsewhere (cluster mode)
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observe_events: Callable[[int, float], None] = lambda count, seconds: None,
        log: RecordLog | None = None,
        forwarding: EventForwarding | None = None,
        limits: StateLimits = StateLimits(),  # noqa: B008 (frozen: shared safely)
        refused: Callable[[LimitExceeded], None] = lambda error: None,
        counted: EventCounts | None = None,
        applied_elsewhere: bool = False,
        specs: ReplicatedState | None = None,
        names: ReplicatedState | None = None,
    ) -> None:
        self.engine = engine
        self.growth = GrowthLimits(engine, limits)
        self._refused = refused  # each refusal by a limit (metrics)
        self._counted = counted  # events ingested and refused, by API and status (metrics)
        self._spec_change = asyncio.Lock()  # spec limits are checked against applied specs
        self._relay_refusals = 0  # relayed batches refused since the last log line about it
        self._relay_refusals_logged = -RELAY_REFUSALS_LOG_SECONDS
        self.hub = hub
        self.spec_changes = SpecChanges()  # feature spec changes, for WatchFeatureSpecs
        self._forwarding = forwarding  # external_grpc_event_targets (None: none)
        self._clock = clock
        self._observe_events = observe_events
        self._log = log  # None: nothing is durable (benchmarks, engine tests)
        # Cluster mode: the records are applied by the replicas consuming the stream, not
        # to ``engine`` (which then holds nothing but is what the limits are checked on).
        self._applied_elsewhere = applied_elsewhere
        # Cluster mode: spec changes go to the replicated spec store, not to ``log``; what
        # adds namespaces, names or goals is registered in the known names first.
        self._specs = specs
        self._names = names
        self._sequence = 0  # without a log: records applied so far

    async def accept(self, events: Sequence[EventFields]) -> int:
        """Validate then apply ``events`` (``Event``s, or plain tuples of their fields), all or
        nothing; returns how many were accepted.

        ``InvalidArgument`` for a bad event, ``LimitExceeded`` if the batch would grow the
        state past a limit, ``StorageError`` when the log cannot take the batch (in each
        case nothing applied)."""
        return await self._begin(events)

    def submit(self, events: Sequence[EventFields]) -> asyncio.Future[int]:
        """``accept`` begun at once, for a caller with batches to apply in order (a stream):
        ``InvalidArgument`` and ``LimitExceeded`` are raised here, and the batch, checked
        against the limits, is queued for the log in order of the calls, so that the next
        batch may be submitted before this one is durable. If the disk refuses this batch,
        it refuses the next one too. (In cluster mode a batch that adds names registers
        them first, which waits: there, submit each batch once the last is accepted.)"""
        return asyncio.ensure_future(self._begin(events))

    def _begin(self, events: Sequence[EventFields]) -> Coroutine[None, None, int]:
        """Validate ``events`` and reserve what they add (raising ``KimballError`` here),
        then what is left of ``accept``: to await, or to start as a task at once."""
        call = current_call.get()
        try:
            records = prepare_events(events, iso_week(self._clock()))
            reserved = self._admit(records) if records else NOTHING
        except KimballError as error:
            self._count(call, error.grpc_code, len(events))
            raise
        return self._accepted(call, records, partial(_as_events, events), reserved)

    async def _accepted(
        self,
        call: CallContext | None,
        records: Sequence[EventRecord],
        events: EventsOf,
        reserved: Reservation,
    ) -> int:
        try:
            if records:
                await self._commit(records, events, reserved)
        except KimballError as error:
            self._count(call, error.grpc_code, len(records))
            raise
        self._count(call, "OK", len(records), call.api if call is not None else "grpc")
        return len(records)

    async def accept_encoded(
        self, payload: bytes, origins: Sequence[tuple[str, datetime | None]]
    ) -> int:
        """Apply events validated by ``prepare_events`` in a REST worker process of this
        server: ``payload`` is their ``RecordBatch`` as the log keeps it (appended as it
        is), ``origins`` each event's user id and datetime, for subscribers and event
        targets. As ``accept`` from the growth limits on."""
        records = decode_records(payload)
        if len(origins) != len(records):
            raise ValueError(f"{len(origins)} origins for {len(records)} events")
        try:
            if records:
                events = partial(_origin_events, records, origins)
                await self._commit(records, events, self._admit(records), payload)
        except KimballError as error:
            self._count(None, error.grpc_code, len(records))
            raise
        self._count(None, "OK", len(records), "rest")
        return len(records)

    def _count(self, call: CallContext | None, code: str, events: int, api: str = "") -> None:
        """Count ``events`` ingested through ``api`` (``code`` OK) or refused with status
        ``code``, and mark the call being served as counted."""
        if self._counted is None or not events:
            return
        if call is not None:
            call.events_counted = True
        if code == "OK":
            self._counted.ingest_events(api, events)
        else:
            self._counted.refuse_events(code, events)

    def _admit(self, records: Sequence[Record]) -> Reservation:
        try:
            return self.growth.admit(records)
        except LimitExceeded as exc:
            self._refused(exc)
            raise

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
        if not isinstance(self._log, WriteAheadLog):
            raise FailedPrecondition("this server keeps no write-ahead log to replay from")
        entries = self._log.entries(after)
        expected = after + 1
        while expected <= through:
            try:
                entry = await asyncio.to_thread(next, entries, None)
            except OSError as exc:  # a segment removed while being read
                logger.warning("write-ahead log: a replay lost its segment: %s", exc)
                raise OutOfRange(
                    "the write-ahead log changed while read: resume from a later sequence",
                    after_sequence=str(after),
                ) from None
            if entry is None or entry.sequence > expected:
                raise OutOfRange(
                    f"the write-ahead log no longer holds record {expected}: resume from a "
                    f"later sequence or subscribe live",
                    after_sequence=str(after),
                )
            for sequence, record in enumerate(decode_records(entry.payload), entry.sequence):
                if expected <= sequence <= through and isinstance(record, EventRecord):
                    yield AcceptedEvent(sequence, stored_event(record), record.user_hash.digest)
            expected = entry.last + 1

    async def accept_relayed(self, batches: Sequence[bytes]) -> int:
        """Apply the events a sidecar spooled: ``RecordBatch`` bytes, user ids already hashed
        and weeks fixed when the sidecar accepted them; returns how many events were
        refused. ``InvalidArgument`` if a batch cannot be read or holds anything but events
        (nothing applied). Each batch (what one call to the sidecar spooled) that would
        grow the state past a limit is left out whole and counted: the sidecar answered its
        caller long ago, and sending it again would be refused again. The others are
        logged and applied as one batch. The events passed on to subscribers and event
        targets have no ``user_id`` and no ``datetime``, as replayed ones."""
        decoded_batches = _relayed_events(batches)
        records: list[EventRecord] = []
        reserved: list[Reservation] = []
        refused = 0
        for events in decoded_batches:
            try:
                reserved.append(self._admit(events))
            except LimitExceeded as exc:
                refused += len(events)
                self._log_relay_refusal(exc)
                continue
            records.extend(events)
        call = current_call.get()
        self._count(call, LimitExceeded.grpc_code, refused)
        if records:
            growth = [thing for reservation in reserved for thing in reservation.growth]
            try:
                await self._commit(records, partial(_stored_events, records), Reservation(growth))
            except KimballError as error:
                self._count(call, error.grpc_code, len(records))
                raise
            self._count(call, "OK", len(records), "sidecar")
        return refused

    def _log_relay_refusal(self, error: LimitExceeded) -> None:
        """One line per ``RELAY_REFUSALS_LOG_SECONDS`` at most: a sidecar may send many."""
        self._relay_refusals += 1
        now = time.monotonic()
        if now - self._relay_refusals_logged >= RELAY_REFUSALS_LOG_SECONDS:
            logger.warning(
                "relayed events refused: %d batches from sidecars left out since the last "
                "such line, the latest: %s",
                self._relay_refusals,
                error.message,
            )
            self._relay_refusals = 0
            self._relay_refusals_logged = now

    async def create_goal(self, namespace: str, goal_name: str) -> None:
        """Mark ``goal_name`` as a goal of ``namespace``; ``LimitExceeded`` past a limit."""
        records = [prepare_goal(namespace, goal_name)]
        await self._commit(records, None, self._admit(records))

    async def put_feature_spec(self, spec: FeatureSpec, token_id: str = ANONYMOUS) -> None:
        """Create or replace a (checked) feature spec, by the token ``token_id`` (recorded
        in its history); ``LimitExceeded`` if the set would pass its limits (nothing
        logged)."""
        record = FeatureSpecRecord(spec.name, spec, self._clock(), token_id)
        await self._commit_spec(record, partial(self._check_room, spec))

    def _check_room(self, spec: FeatureSpec) -> None:
        flags = self.engine.flags
        try:
            flags.check_room(spec.name, self.growth.limits.feature_specs)
            others = sum(spec_message_size(s) for s in flags.listed() if s.name != spec.name)
            size = others + spec_message_size(spec)
            maximum = FEATURE_SPEC_BYTES.default
            if size > maximum:
                raise LimitExceeded(
                    f"feature spec size limit reached: the specs would take {size} bytes, "
                    f"more than {maximum} (fixed: sidecars receive them in one message); "
                    f"make this spec or others smaller",
                    limit=FEATURE_SPEC_BYTES.name,
                    setting=FEATURE_SPEC_BYTES.setting,
                    name=spec.name,
                )
        except LimitExceeded as exc:
            self._refused(exc)
            raise

    async def delete_feature_spec(self, name: str, token_id: str = ANONYMOUS) -> None:
        """Delete a feature spec, by the token ``token_id``; ``NotFound`` if there is none
        of that name."""
        record = FeatureSpecRecord(name, None, self._clock(), token_id)
        await self._commit_spec(record, partial(self.engine.flags.get, name))

    async def _commit_spec(self, record: FeatureSpecRecord, check: Callable[[], object]) -> None:
        """Log and apply a spec change once ``check`` (raising to refuse it) passes; in
        cluster mode, write it to the replicated spec store, which checks it against the
        specs every replica reaches and applies it here through ``apply_spec_change``."""
        # One change at a time (they are rare): each is checked against the set with every
        # earlier change applied.
        async with self._spec_change:
            if self._specs is not None:
                await self._specs.write([record], check)
                return
            check()
            await self._commit([record], None)

    def apply_replicated(self, records: Sequence[Record]) -> None:
        """Apply records the replicated spec store or known names bring (cluster mode)."""
        for record in records:
            self.engine.apply(record)
        if records[0].__class__ is FeatureSpecRecord:
            self.spec_changes.notify()

    async def _register(
        self, names: ReplicatedState, records: Sequence[Record], reserved: Reservation
    ) -> None:
        """Cluster mode: register what ``records`` add in the known ``names``, checked
        against the limits with every name known in the cluster (``LimitExceeded`` past
        one)."""
        adding = self._adding(records)
        self.growth.release(reserved)  # counted in the known names once registered
        if adding:  # else another batch registered it all meanwhile
            await names.write(adding, partial(self._recheck, adding))

    def _recheck(self, records: Sequence[Record]) -> None:
        self.growth.release(self._admit(records))

    def _adding(self, records: Sequence[Record]) -> list[Record]:
        """One record for each thing ``records`` add to the known names."""
        met: set[Growth] = set()
        adding = []
        for record in records:
            new = [thing for thing in self.engine.growth((record,)) if thing not in met]
            if new:
                met.update(new)
                adding.append(record)
        return adding

    async def _commit(
        self,
        records: Sequence[Record],
        events: EventsOf | None,
        reserved: Reservation = NOTHING,
        encoded: bytes | None = None,  # the records' RecordBatch, when the caller has it
    ) -> None:
        if self._log is None:
            self._apply(records, events, reserved, self._sequence + 1)
            return
        if self._names is not None and not reserved.released:
            await self._register(self._names, records, reserved)
        apply = partial(self._apply, records, events, reserved)
        payload = encode_records(records) if encoded is None else encoded
        append = self._log.append(payload, len(records), apply)
        if reserved.released:  # reserves nothing (the common case): no task needed
            await append
            return
        # The log writes an entry even if its caller goes away (cancelled): the growth
        # stays reserved until the append ends, applied (``_apply`` releases it) or refused.
        appending = asyncio.ensure_future(append)
        appending.add_done_callback(partial(self._appended, reserved))
        await asyncio.shield(appending)

    def _appended(self, reserved: Reservation, appending: asyncio.Future[int]) -> None:
        self.growth.release(reserved)
        if not appending.cancelled():
            appending.exception()  # retrieved: the caller, if still there, gets it too

    def _apply(
        self,
        records: Sequence[Record],
        events: EventsOf | None,
        reserved: Reservation,
        first: int,
    ) -> None:
        """The one place validated records change the state: ``first`` is the sequence
        number of the first record (the log's, when there is one). ``events`` (None for
        goals and feature specs) gives the events the records stand for, made only when
        there is an event target or a subscriber to hand them to."""
        start = time.perf_counter()
        if not self._applied_elsewhere:
            engine = self.engine
            # A batch holds one kind of record: events straight to their method.
            apply = engine.apply_event if records[0].__class__ is EventRecord else engine.apply
            for record in records:
                apply(record)
        self.growth.release(reserved)  # in the engine now: counted there
        self._sequence = first + len(records) - 1
        if records[0].__class__ is FeatureSpecRecord:
            self.spec_changes.notify()
        if events is not None:
            self._observe_events(len(records), time.perf_counter() - start)
            hub = self.hub
            subscribed = hub is not None and hub.subscriber_count
            if not self._forwarding and not subscribed:
                return
            made = events()
            if self._forwarding:
                self._forwarding.offer_records(records, made)
            if subscribed:
                hub.publish(
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
                            range(first, first + len(records)), made, records, strict=True
                        )
                    ]
                )


def _relayed_events(batches: Sequence[bytes]) -> list[list[EventRecord]]:
    """The events of each relayed ``RecordBatch``; ``InvalidArgument`` (nothing counted:
    the events cannot be told) if one cannot be read, holds anything but events, or if
    they are more than a relay message may hold."""
    decoded_batches: list[list[EventRecord]] = []
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
        decoded_batches.append(events)
    total = sum(map(len, decoded_batches))
    if total > MAX_RELAYED_EVENTS:
        raise InvalidArgument(
            f"a relay message holds at most {MAX_RELAYED_EVENTS} events, got {total}",
            key="batches",
        )
    return decoded_batches


def _as_events(events: Sequence[EventFields]) -> Sequence[Event]:
    """``events`` as ``Event``s: a batch holds ``Event``s or plain tuples, not both."""
    if events[0].__class__ is Event:
        return events  # type: ignore[return-value]
    return [Event._make(fields) for fields in events]


def _origin_events(
    records: Sequence[EventRecord], origins: Sequence[tuple[str, datetime | None]]
) -> list[Event]:
    """The events a REST worker validated: its records with each one's user id and datetime."""
    return [
        Event(r.event_name, user_id, r.namespace, r.value, when, r.ensure_goal)
        for r, (user_id, when) in zip(records, origins, strict=True)
    ]


def _stored_events(records: Sequence[EventRecord]) -> list[Event]:
    return [stored_event(r) for r in records]

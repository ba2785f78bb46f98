"""The events of the whole cluster for a replica's subscribers (``Subscribe`` in cluster mode).

Every event accepted anywhere in the cluster is in the stream ``KIMBALL_EVENTS``, in a
message of its user's partition. A replica that has subscribers reads the whole stream (every
partition) through one ordered consumer, decodes each message once and hands its events to
the replica's ``SubscriptionHub``, which fans them out to every subscriber as on a single
node: one ring, a slow subscriber drops the oldest and is told how many (it never holds the
feed up). The consumer starts with the first subscriber and stops when the last one leaves:
without subscribers a replica reads nothing but its own partitions.

An event's sequence number is ``stream sequence x RECORDS_PER_MESSAGE + its index in the
message``: the stream's order, which is one total order over all partitions, the same on
every replica and kept across restarts. Resuming after a sequence number reads the stream
back from that message (``replay``) while it keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from kimball_grpc.cluster.event_log import (
    STREAM,
    SUBJECT_PREFIX,
    EventLogUnavailable,
    unsubscribe,
)
from kimball_grpc.cluster.jetstream_start import reason
from kimball_grpc.codec.state_codec import decode_records
from kimball_grpc.core.errors import OutOfRange
from kimball_grpc.core.events import AcceptedEvent, stored_event
from kimball_grpc.core.records import EventRecord

log = logging.getLogger(__name__)

# Sequence numbers per stream message: more than a message can hold (a group publishes at
# most MAX_RELAYED_EVENTS records in one partition's message), and decimal, so message
# 1234's events are 1234000000, 1234000001, ...
RECORDS_PER_MESSAGE = 1_000_000
ALL_PARTITIONS = f"{SUBJECT_PREFIX}*"
# When reading back, stream messages are asked for in batches of about this many bytes
# (from the size of the messages fetched so far; the first alone): a replaying subscriber
# holds about this much, plus one message (at most NATS's payload limit, 1 MiB by default),
# and small messages come many to a round trip.
REPLAY_BYTES = 1 << 20
REPLAY_FETCH = 256  # messages in one batch at most
REPLAY_WAIT_SECONDS = 5.0  # for messages the stream holds: then UNAVAILABLE
# A consumer left behind (the replica died mid-replay) is removed by the server after this.
REPLAY_CONSUMER_IDLE_SECONDS = 60.0


class Subscribers(Protocol):
    """Where the feed hands the events (the replica's ``SubscriptionHub``)."""

    @property
    def subscriber_count(self) -> int: ...

    def publish(self, accepted: Sequence[AcceptedEvent]) -> None: ...


HubT = TypeVar("HubT", bound=Subscribers)


def event_sequence(stream_sequence: int, index: int) -> int:
    """The sequence number of the record at ``index`` of stream message ``stream_sequence``."""
    return stream_sequence * RECORDS_PER_MESSAGE + index


def first_message_after(sequence: int) -> int:
    """The first stream message that may hold an event after ``sequence`` (its own message,
    unless it is that message's last possible record)."""
    return max(1, (sequence + 1) // RECORDS_PER_MESSAGE)


def message_events(stream_sequence: int, data: bytes) -> list[AcceptedEvent]:
    """The events of a stream message, numbered; other records (goals) only take numbers."""
    return [
        AcceptedEvent(event_sequence(stream_sequence, i), stored_event(r), r.user_hash.digest)
        for i, r in enumerate(decode_records(data))
        if r.__class__ is EventRecord
    ]


class ClusterEventFeed(Generic[HubT]):
    """One replica's reading of the whole stream, for its subscribers (in ``hub``)."""

    def __init__(self, js: Any, hub: HubT) -> None:
        self.hub = hub
        self._js = js
        self.position = 0  # the stream sequence of the last message handed to the hub
        self._subscription: Any = None
        self._users = 0  # subscribers joined and not left
        self._lock = asyncio.Lock()  # starts and stops, one at a time
        self._stopping: asyncio.Task[None] | None = None  # held: a task only weakly held may go

    @property
    def running(self) -> bool:
        return self._subscription is not None

    async def join(self) -> None:
        """Count a subscriber in, starting the feed if it is the first: from the message
        after the stream's last one now. ``EventLogUnavailable`` if NATS does not answer."""
        self._users += 1
        try:
            async with self._lock:
                if self._subscription is None:
                    self._subscription = await self._start()
        except BaseException:
            self.leave()
            raise

    def leave(self) -> None:
        """Count a subscriber out; after the last, the feed stops (in the background: this
        runs as a subscription ends, when it may not wait)."""
        self._users -= 1
        if not self._users:
            self._stopping = asyncio.ensure_future(self._stop_unused())

    async def _stop_unused(self) -> None:
        async with self._lock:
            if not self._users:  # else another subscriber came meanwhile
                await self._unsubscribe()

    async def stop(self) -> None:
        """Stop reading the stream (the replica shuts down)."""
        async with self._lock:
            await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await unsubscribe(subscription)

    async def _start(self) -> Any:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        last = await self.last_message()
        self.position = last
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1
        )

        async def received(message: Any) -> None:
            sequence = message.metadata.sequence.stream
            if sequence <= self.position:
                return  # delivered again after the consumer was reset
            self.position = sequence
            if not self.hub.subscriber_count:
                return  # the last one left: read on, decode nothing, until stopped
            try:
                accepted = message_events(sequence, message.data)
            except Exception:  # a message this version cannot read: say so, go on
                log.exception("subscribers: cannot read stream message %d", sequence)
                return
            if accepted:
                self.hub.publish(accepted)

        try:
            return await self._js.subscribe(
                ALL_PARTITIONS, stream=STREAM, cb=received, ordered_consumer=True, config=config
            )
        except Exception as exc:
            raise _unavailable(exc) from None

    async def last_message(self) -> int:
        """The stream sequence of the stream's last message (0 if none)."""
        return (await self._stream_state()).last_seq

    async def _stream_state(self) -> Any:
        try:
            return (await self._js.stream_info(STREAM)).state
        except Exception as exc:
            raise _unavailable(exc) from None

    async def replay(self, after: int, through: int) -> AsyncIterator[AcceptedEvent]:
        """The events numbered above ``after`` in stream messages up to ``through``, read
        back from the stream in order. ``OutOfRange`` if the stream no longer holds the
        first message needed; ``EventLogUnavailable`` if NATS stops answering."""
        start = first_message_after(after)
        if start > through:
            return
        first = (await self._stream_state()).first_seq
        if first > start:
            raise _gone(after, start, first)
        reader = _StreamReader(self._js)
        try:
            expected = start
            while expected <= through:
                for message in await reader.fetch(expected, through - expected + 1):
                    sequence = message.metadata.sequence.stream
                    if sequence > expected:  # removed by the stream's limits while read
                        raise _gone(after, expected, sequence)
                    for accepted in message_events(sequence, message.data):
                        if accepted.sequence > after:
                            yield accepted
                    expected = sequence + 1
                    if expected > through:
                        break
        finally:
            await reader.close()


class _StreamReader:
    """The stream read in order by a pull consumer of this replica's, made again from the
    next message wanted when a fetch fails: the server removes a consumer left idle for
    ``REPLAY_CONSUMER_IDLE_SECONDS`` (a subscriber reading slowly, or this replica gone)."""

    def __init__(self, js: Any) -> None:
        self._js = js
        self._subscription: Any = None
        self._name = ""
        self._batch = 1  # messages to ask for next

    async def fetch(self, start: int, most: int) -> Sequence[Any]:
        """The next stream messages, at most ``most``, from ``start`` if the consumer is new;
        ``EventLogUnavailable`` if NATS does not give them (the stream holds them)."""
        try:
            return await self._fetched(start, most)
        except Exception:  # the consumer removed, or NATS failed over: once more, anew
            await self.close()
        try:
            return await self._fetched(start, most)
        except Exception as exc:
            await self.close()
            raise _unavailable(exc) from None

    async def _fetched(self, start: int, most: int) -> Sequence[Any]:
        if self._subscription is None:
            await self._open(start)
        messages = await self._subscription.fetch(
            min(self._batch, most), timeout=REPLAY_WAIT_SECONDS
        )
        average = sum(len(m.data) for m in messages) // len(messages) + 1
        self._batch = max(1, min(REPLAY_FETCH, REPLAY_BYTES // average))
        return messages

    async def _open(self, start: int) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        info = await self._js.add_consumer(
            STREAM,
            ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,  # read once, in order: nothing to acknowledge
                inactive_threshold=REPLAY_CONSUMER_IDLE_SECONDS,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        self._name = info.name
        self._subscription = await self._js.pull_subscribe_bind(info.name, stream=STREAM)

    async def close(self) -> None:
        """Remove the consumer (else the server does, once it is idle)."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await unsubscribe(subscription)
        if self._name:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(STREAM, self._name)
            self._name = ""


def _gone(after: int, needed: int, first: int) -> OutOfRange:
    return OutOfRange(
        f"the event stream no longer holds message {needed}, which sequence numbers after "
        f"{after} need: resume from {event_sequence(first, 0) - 1} or later, or subscribe "
        f"live",
        after_sequence=str(after),
        oldest_sequence=str(event_sequence(first, 0)),
    )


def _unavailable(exc: Exception) -> EventLogUnavailable:
    return EventLogUnavailable(
        f"the event stream (NATS JetStream) cannot be read now ({reason(exc)}): subscribe again",
        stream=STREAM,
    )

"""The cluster's event log: the JetStream stream ``KIMBALL_EVENTS``, one subject per user
partition (``kimball.events.<p>``), replicated on ``nats_stream_replicas`` NATS servers.

It takes the write-ahead log's place for the ``Ingestor``: ``append`` splits a batch by
partition, publishes the parts with bounded in-flight acknowledgements (never one round trip
per event) and returns once JetStream acknowledged every part, so an acknowledged event is
on a majority of the stream's servers. A part whose acknowledgement does not come is
published again with the same message id, which JetStream's duplicate window turns into one
stored message. Records about no one user (goals, feature specs) go to every partition, so
each partition's engine sees them in order with its events.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.core.errors import ConfigError, KimballError
from kimball_grpc.core.partitions import partition_of
from kimball_grpc.core.records import EventRecord, Record

log = logging.getLogger(__name__)

STREAM = "KIMBALL_EVENTS"
SUBJECT_PREFIX = "kimball.events."
# Acknowledgements awaited at once on one connection: enough to keep the servers busy,
# bounded so a slow NATS cluster makes callers wait instead of growing a queue.
MAX_IN_FLIGHT = 1024
ACK_SECONDS = 5.0  # one publish's acknowledgement; then it is published again
APPEND_SECONDS = 30.0  # all of a batch's parts; then the caller gets UNAVAILABLE
# JetStream drops a message whose id it stored within this long: published again after a
# lost acknowledgement, a part is stored once.
DUPLICATE_WINDOW_SECONDS = 120.0
CONNECT_SECONDS = 20.0  # at start: then the replica stops, saying which servers
CLOSE_SECONDS = 5.0
# Records published in one group at most: a partition's message of ~25 bytes per event
# stays well under NATS's default 1 MiB payload limit.
GROUP_RECORDS = 10_000


class EventLogUnavailable(KimballError):
    """NATS did not acknowledge the batch in time: it may be stored in part; send it again."""

    grpc_code = "UNAVAILABLE"


def subject(partition: int) -> str:
    return f"{SUBJECT_PREFIX}{partition}"


def split_by_partition(records: Sequence[Record], partitions: int) -> dict[int, list[Record]]:
    """The records of each partition, in order; a record about no one user in every one."""
    parts: dict[int, list[Record]] = {}
    for record in records:
        if isinstance(record, EventRecord):
            parts.setdefault(partition_of(record.user_hash, partitions), []).append(record)
        else:
            for partition in range(partitions):
                parts.setdefault(partition, []).append(record)
    return parts


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS: the servers, a credentials file, this replica's name."""

    urls: tuple[str, ...]
    creds_file: Path | None
    name: str


async def close_connection(connection: Any) -> None:
    """Close a NATS connection, waiting ``CLOSE_SECONDS`` at most: after a server went
    away nats-py can wait forever for a transport that does not close (nats.py issue
    671), and a stop or a failed start must not hang on it; the socket then goes with
    the process."""
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await connection.close()
    except TimeoutError:
        log.warning("NATS: the connection did not close within %g s: left open", CLOSE_SECONDS)


async def unsubscribe(subscription: Any) -> None:
    """End a NATS subscription; nothing if the connection is gone."""
    try:
        await subscription.unsubscribe()
    except Exception as exc:  # the connection is gone: nothing to unsubscribe
        log.debug("unsubscribe: %s", exc)


async def connect(options: NatsOptions) -> Any:
    """A NATS connection that reconnects by itself (forever, every server in turn);
    ``ConfigError`` if the NATS client (the ``cluster`` extra) is not installed."""
    try:
        import nats  # the cluster extra: imported only in cluster mode
    except ImportError:
        raise ConfigError(
            "cluster mode (--nats-url, KIMBALL_NATS_URL) needs the NATS client: "
            "pip install 'kimball[cluster]'"
        ) from None

    async def disconnected() -> None:
        log.warning("NATS: disconnected; reconnecting")

    async def reconnected() -> None:
        log.info("NATS: reconnected to %s", connection.connected_url.netloc)

    async def error(exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    try:
        # Bounded: the client retries a server that refuses for as long as it reconnects.
        async with asyncio.timeout(CONNECT_SECONDS):
            connection = await nats.connect(
                list(options.urls),
                name=f"kimball {options.name}",
                user_credentials=str(options.creds_file) if options.creds_file else None,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
    except Exception as exc:  # nats-py raises its own and OSErrors alike
        raise ConfigError(
            f"cannot connect to NATS at {', '.join(options.urls)} (--nats-url): "
            f"{exc or f'no answer within {CONNECT_SECONDS:g} s'}"
        ) from None
    return connection


async def ensure_stream(js: Any, partitions: int, replicas: int) -> None:
    """Create the stream, or check the one there: ``ConfigError`` if it was made with
    another partition count (the users' partitions would change under the snapshots)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    wanted = [f"{SUBJECT_PREFIX}*"]
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        config = StreamConfig(
            name=STREAM,
            subjects=wanted,
            num_replicas=replicas,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            metadata={"kimball_partitions": str(partitions)},
        )
        await js.add_stream(config)
        log.info(
            "created the JetStream stream %s: %d partitions, %d replicas",
            STREAM,
            partitions,
            replicas,
        )
        return
    made_with = (info.config.metadata or {}).get("kimball_partitions")
    if made_with != str(partitions):
        raise ConfigError(
            f"the JetStream stream {STREAM} was created with {made_with} partitions, and this "
            f"replica is set to {partitions} (--partitions, KIMBALL_PARTITIONS): set it to "
            f"{made_with}, as every replica; the count is fixed when the stream is created"
        )
    if info.config.num_replicas != replicas:
        log.warning(
            "the JetStream stream %s keeps %d replicas, not the %d set "
            "(--nats-stream-replicas): the stream's own setting stays",
            STREAM,
            info.config.num_replicas,
            replicas,
        )


class JetStreamLog:
    """The ``Ingestor``'s log in cluster mode (``RecordLog``): a batch is durable once every
    partition's part of it is acknowledged by JetStream."""

    def __init__(self, js: Any, partitions: int, replica_id: str) -> None:
        self._js = js
        self.partitions = partitions
        self.last_sequence = 0  # records appended through this replica (subscribers' numbers)
        # Message ids: unique per part, the same when a part is published again.
        self._ids = itertools.count(1)
        self._id_prefix = f"{replica_id}-{time.time_ns():x}-"
        self._waiting: list[_Append] = []  # batches to publish with the next group
        self._publishing: asyncio.Task[None] | None = None

    async def append(self, payload: bytes, count: int, on_durable: Callable[[int], None]) -> int:
        """Publish the ``count`` records of ``payload`` (a ``RecordBatch``), each partition's
        as one message; once all are acknowledged, ``on_durable(first)`` and ``first``.
        ``EventLogUnavailable`` if they are not acknowledged within ``APPEND_SECONDS``.

        Batches appended while a group is being published go together in the next group,
        one message per partition for all of them (as a write-ahead log's group commit):
        with many clients a message carries many batches' events of its partition, not
        the one or two of a batch split over every partition."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Append(payload, count, on_durable, done))
        if self._publishing is None:
            self._publishing = asyncio.ensure_future(self._publish_groups())
        return await asyncio.shield(done)  # a caller gone away leaves the group going

    async def _publish_groups(self) -> None:
        try:
            while self._waiting:
                group = _take_group(self._waiting)
                try:
                    await self._publish_all(self._messages(group))
                except BaseException as exc:
                    for item in group:
                        item.done.set_exception(exc if isinstance(exc, Exception) else _cut_off())
                    if not isinstance(exc, Exception):
                        raise  # cancelled: the callers are told so
                    continue
                for item in group:
                    first = self.last_sequence + 1
                    self.last_sequence += item.count
                    try:
                        item.on_durable(first)
                    except Exception as exc:  # the caller's: it gets it, the others go on
                        item.done.set_exception(exc)
                    else:
                        item.done.set_result(first)
        finally:
            self._publishing = None
            waiting, self._waiting = self._waiting, []
            for item in waiting:  # left only if cut off
                item.done.set_exception(_cut_off())

    def _messages(self, group: Sequence[_Append]) -> list[tuple[str, bytes]]:
        """One message per partition for the records of ``group``, in their order."""
        if len(group) == 1:
            records = decode_records(group[0].payload)
            parts = split_by_partition(records, self.partitions)
            if len(parts) == 1:
                ((partition, _),) = parts.items()
                return [(subject(partition), group[0].payload)]  # already the part's encoding
        else:
            records = [record for item in group for record in decode_records(item.payload)]
            parts = split_by_partition(records, self.partitions)
        return [(subject(p), encode_records(part)) for p, part in parts.items()]

    async def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        from nats.js.api import Header

        pending = {next(self._ids): message for message in messages}
        deadline = time.monotonic() + APPEND_SECONDS
        while pending:
            acks = {}
            try:
                for number, (to, data) in pending.items():
                    headers = {Header.MSG_ID: f"{self._id_prefix}{number}"}
                    acks[number] = await self._js.publish_async(
                        to, data, wait_stall=ACK_SECONDS, stream=STREAM, headers=headers
                    )
            except Exception as exc:  # not sent: those left go again
                log.warning("NATS: publishing failed (%s); trying again", exc)
            if acks:
                await asyncio.wait(acks.values(), timeout=ACK_SECONDS)
            for number, ack in acks.items():
                if ack.done() and not ack.cancelled() and ack.exception() is None:
                    del pending[number]
                elif not ack.done():
                    ack.cancel()
                else:
                    log.warning("NATS: a publish was refused (%s); trying again", ack.exception())
            if pending and time.monotonic() > deadline:
                raise EventLogUnavailable(
                    f"the event log (NATS JetStream) did not acknowledge the batch within "
                    f"{APPEND_SECONDS:g} s: part of it may be stored; send it again",
                    stream=STREAM,
                )
            if pending:
                await asyncio.sleep(0.1)


@dataclass
class _Append:
    """A batch waiting for its group to be published, and its caller's future."""

    payload: bytes
    count: int
    on_durable: Callable[[int], None]
    done: asyncio.Future[int]


def _take_group(waiting: list[_Append]) -> list[_Append]:
    """The oldest waiting batches, up to ``GROUP_RECORDS`` records (at least one batch),
    taken out of ``waiting``: a group's messages stay far below NATS's payload limit."""
    total, size = 0, 0
    for item in waiting:
        if size and total + item.count > GROUP_RECORDS:
            break
        total += item.count
        size += 1
    group = waiting[:size]
    del waiting[:size]
    return group


def _cut_off() -> EventLogUnavailable:
    return EventLogUnavailable(
        "the event log (NATS JetStream) publishing stopped (the replica is shutting down): "
        "part of the batch may be stored; send it again",
        stream=STREAM,
    )

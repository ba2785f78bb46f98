"""A sidecar's spool: accepted events on local disk until the api server acknowledges them.

The spool is a write-ahead log (``storage.wal``: group commit, checksums, a torn
tail cut at start-up) in ``<data-dir>/spool``. An event call is answered once its
batch is in the spool, durable per the fsync policy; the ``RelaySender`` then
streams the spool to the api server, and what the api server acknowledged is
dropped (whole segments of 4 MiB, so space comes back soon).

Events are spooled as records (``kimball_grpc.core.records``): validated, the user id
already hashed and the ISO week fixed now, so the spool holds no raw user id (persisted data
holds hashes only) and an event delivered after an outage still counts in the week it
was accepted. The acknowledged position is kept in a small file; if it is lost
or behind, events are sent again, which changes nothing on the api server (a
user counts once per counter).

The spool is bounded by events not yet acknowledged (``max_events``): past it,
event calls are refused with RESOURCE_EXHAUSTED and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from kimball_grpc.codec.state_codec import encode_records
from kimball_grpc.core.errors import KimballError
from kimball_grpc.core.events import EventFields, iso_week, prepare_events
from kimball_grpc.core.limits import DEFAULT_SPOOL_MAX_EVENTS
from kimball_grpc.core.records import EventRecord
from storage.fsutil import atomic_write
from storage.wal import FsyncPolicy, LogEntry, WriteAheadLog

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024
MEMORY_TAIL_BYTES = 16 * 1024 * 1024  # the newest spooled entries, kept to send without a read
ACKNOWLEDGED_FILE = "acknowledged"
# One spooled entry, encoded, at most: with the sender's 1 MiB per message, a message
# stays under gRPC's 4 MiB limit whatever the entries (a big batch is spooled in parts).
MAX_ENTRY_BYTES = 1024 * 1024


class SpoolFull(KimballError):
    """The spool holds as many undelivered events as it may: try again later."""

    grpc_code = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class SpooledEvents:
    """Spooled entries ``first`` to ``last`` (sequence numbers), as encoded record batches."""

    first: int
    last: int
    batches: list[bytes]


class Spool:
    """The spool in ``directory``. ``open`` once, then ``accept``; ``close`` at the end."""

    def __init__(
        self,
        directory: Path,
        policy: FsyncPolicy = FsyncPolicy.ALWAYS,
        *,
        fsync_interval: float = 0.2,
        max_events: int = DEFAULT_SPOOL_MAX_EVENTS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        segment_bytes: int = SEGMENT_BYTES,
        memory_bytes: int = MEMORY_TAIL_BYTES,
        skip_damaged: bool = False,
    ) -> None:
        self.directory = directory
        self.wal = WriteAheadLog(
            directory,
            policy,
            fsync_interval=fsync_interval,
            segment_bytes=segment_bytes,
            skip_damaged=skip_damaged,
        )
        self.memory_bytes = memory_bytes
        self.max_events = max_events
        self.acknowledged = 0  # every event up to here is with the api server
        self._appending = 0  # events being written: counted against the bound already
        self.spooled = 0  # events spooled since start (metrics)
        self.changed = asyncio.Event()  # set when events are spooled or acknowledged
        self._clock = clock
        self._tail: deque[LogEntry] = deque()  # a contiguous run of the newest entries
        self._tail_bytes = 0

    def open(self) -> None:
        """Check the spool (a torn tail is cut) and find where delivery goes on.
        ``StorageError`` if the directory cannot be used; ``DamagedLog`` if events not yet
        acknowledged are lost to damage (unless ``skip_damaged``)."""
        self.acknowledged = self._read_acknowledged()
        self.wal.open(after=self.acknowledged)
        # The position file can be ahead only if the log's files were lost: number on.
        self.wal.continue_after(self.acknowledged)
        self.wal.remove_through(self.acknowledged)
        log.info("spool %s: %d events waiting for the api server", self.directory, self.pending)

    @property
    def last_sequence(self) -> int:
        """The sequence number of the last event spooled (durable)."""
        return self.wal.last_sequence

    @property
    def pending(self) -> int:
        """Events spooled and not yet acknowledged by the api server."""
        return self.wal.last_sequence - self.acknowledged

    async def accept(self, events: Sequence[EventFields]) -> int:
        """Validate ``events`` and spool them; returns how many. Raises ``InvalidArgument``
        (a bad event: nothing spooled), ``SpoolFull`` (nothing spooled), ``StorageError``
        (the disk: a batch spooled in parts may be partly in, and sending it again
        changes nothing)."""
        records = prepare_events(events, iso_week(self._clock()))
        if not records:
            return 0
        held = self.pending + self._appending
        if held + len(records) > self.max_events:
            raise SpoolFull(
                f"the relay's spool holds {held} events the api server has not "
                f"acknowledged (at most {self.max_events}); try again later",
            )
        self._appending += len(records)
        try:
            # Appended together, the parts share one write and one fsync (group commit).
            await asyncio.gather(
                *(
                    self.wal.append(payload, count, partial(self._spooled, payload, count))
                    for payload, count in _encoded_parts(records)
                )
            )
        finally:
            self._appending -= len(records)
        return len(records)

    def _spooled(self, payload: bytes, count: int, first: int) -> None:
        self._tail.append(LogEntry(first, count, payload))
        self._tail_bytes += len(payload)
        while self._tail_bytes > self.memory_bytes:  # the rest is read from disk
            self._tail_bytes -= len(self._tail.popleft().payload)
        self.spooled += count
        self.changed.set()

    async def read(self, after: int, max_events: int, max_bytes: int) -> SpooledEvents | None:
        """Whole entries after ``after``, within ``max_events`` and ``max_bytes`` (but at
        least one entry); None when nothing is spooled after it. Only durable entries: an
        entry still being written may yet be refused and its numbers reused."""
        through = self.wal.last_sequence
        if through <= after:
            return None
        if self._tail and self._tail[0].sequence <= after + 1:
            entries = _take(
                (e for e in self._tail if e.last > after), through, max_events, max_bytes
            )
        else:  # older than what memory keeps: from disk, in a worker thread
            entries = await asyncio.to_thread(
                lambda: _take(self.wal.entries(after), through, max_events, max_bytes)
            )
        if not entries:
            return None
        return SpooledEvents(entries[0].sequence, entries[-1].last, [e.payload for e in entries])

    def acknowledge(self, through: int) -> None:
        """The api server has every event up to ``through``: drop them from the spool."""
        if through <= self.acknowledged:
            return
        self.acknowledged = min(through, self.wal.last_sequence)
        while self._tail and self._tail[0].last <= self.acknowledged:
            self._tail_bytes -= len(self._tail.popleft().payload)
        self.wal.remove_through(self.acknowledged)
        self._write_acknowledged()
        self.changed.set()

    async def close(self) -> None:
        """Finish pending appends and close the spool."""
        await self.wal.close()
        self._write_acknowledged()

    def _read_acknowledged(self) -> int:
        try:
            return int((self.directory / ACKNOWLEDGED_FILE).read_text(encoding="ascii"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning(
                "spool: cannot read the acknowledged position (%s); "
                "events still spooled are sent again",
                exc,
            )
            return 0

    def _write_acknowledged(self) -> None:
        """Replace the position file (no fsync: a stale one only means sending again)."""
        try:
            atomic_write(
                self.directory / ACKNOWLEDGED_FILE, b"%d" % self.acknowledged, durable=False
            )
        except OSError as exc:
            log.warning("spool: cannot keep the acknowledged position: %s", exc)


def _encoded_parts(records: list[EventRecord]) -> list[tuple[bytes, int]]:
    """``records`` encoded as (payload, count) parts of at most ``MAX_ENTRY_BYTES`` each
    (one part unless the batch is huge: long names in many events)."""
    payload = encode_records(records)
    if len(payload) <= MAX_ENTRY_BYTES or len(records) == 1:
        return [(payload, len(records))]
    middle = len(records) // 2
    return _encoded_parts(records[:middle]) + _encoded_parts(records[middle:])


def _take(
    entries: Iterable[LogEntry], through: int, max_events: int, max_bytes: int
) -> list[LogEntry]:
    taken: list[LogEntry] = []
    events = size = 0
    for entry in entries:
        if entry.last > through:
            break
        # The first entry always goes; no other may take the message past either limit.
        if taken and (events + entry.count > max_events or size + len(entry.payload) > max_bytes):
            break
        taken.append(entry)
        events += entry.count
        size += len(entry.payload)
    return taken

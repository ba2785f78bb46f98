"""The write-ahead log: every state change is on local disk before its request is answered.

The log is a directory of segment files, each named by the sequence number of
its first record (``00000000000000000001.wal``). A segment is a run of entries:

    length    u32  bytes of the body (sequence, count, payload)
    checksum  u32  CRC-32 of the body
    sequence  u64  sequence number of the entry's first record
    count     u32  records in the entry
    payload        the records (``state_codec.encode_records``)

Records are numbered from 1 without gaps. Appends from concurrent requests are
written together, with one ``fsync`` for the group (group commit): a request
waits for at most one ``fsync`` in progress plus its own group's. After the
group is durable, each entry's ``on_durable`` callback runs in sequence order
(the caller applies its records there), then the appenders are answered.

``open`` checks every entry. A torn tail of the newest segment (a crash in
the middle of a write: a partial or bad entry with nothing good after it) is cut
at the last good entry, in one log line. Damage anywhere else (a bad entry with
good ones after it, a damaged older segment, a segment missing between two
others) would lose records: ``open`` raises ``DamagedLog`` naming the file and
the byte offset, unless the log was opened with ``skip_damaged`` (the
operator's explicit choice), which skips the records, logs them and counts them
in ``skipped_records``. Damage to records that are also held elsewhere (a
snapshot; for a spool, the api server) loses nothing and is only logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from kimball_grpc.core.errors import KimballError
from storage.blob_store import StorageError
from storage.fsutil import PRIVATE_FILE, fsync_directory, make_private_directory, tighten

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # length, checksum
_BODY_HEAD = struct.Struct("<QI")  # sequence, count
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # far above any batch; a larger length is damage
SEGMENT_SUFFIX = ".wal"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
# After damage, good entries are looked for among those numbered up to this far past the
# last good record: far more than a damaged stretch of one segment can hold.
RESYNC_WINDOW = 1 << 24
_SEQUENCE_HIGH_BYTES = 8 + 3  # where the searched-for top 5 bytes of an entry's sequence are
_NONZERO = re.compile(rb"[^\x00]")
SKIP_HINT = (
    "restore the file from a backup, or start once with --wal-skip-damaged "
    "(KIMBALL_WAL_SKIP_DAMAGED=true) to go on without these records"
)


class DamagedLog(KimballError):
    """The log lacks records it should hold (damage, a missing segment): going on would lose
    them silently. The message names the file, the byte offset and the records."""

    grpc_code = "DATA_LOSS"


class FsyncPolicy(StrEnum):
    """When appended entries are forced to disk.

    ``always``: before the append is answered (survives power loss). ``interval``:
    every ``fsync_interval`` seconds (a crash of the machine may lose that much;
    a crash of the process loses nothing). ``never``: when the OS decides.
    """

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True)
class LogEntry:
    """Records ``sequence`` to ``sequence + count - 1``, encoded in ``payload``; read from
    ``path`` at byte ``offset`` (for messages), when read from disk."""

    sequence: int
    count: int
    payload: bytes
    path: Path | None = field(default=None, compare=False)
    offset: int = field(default=0, compare=False)

    @property
    def last(self) -> int:
        return self.sequence + self.count - 1


@dataclass
class _Append:
    payload: bytes
    count: int
    on_durable: Callable[[int], None]
    answer: asyncio.Future[int]


class WriteAheadLog:
    """The log in ``directory``. Call ``open`` once, then ``append``; ``close`` at the end."""

    def __init__(
        self,
        directory: Path,
        policy: FsyncPolicy = FsyncPolicy.ALWAYS,
        *,
        fsync_interval: float = 0.2,
        segment_bytes: int | None = None,
        group_commit: bool = True,
        skip_damaged: bool = False,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes or DEFAULT_SEGMENT_BYTES
        # Without group commit each append is written and synced alone (for benchmarks).
        self.group_commit = group_commit
        # The operator's choice to go on past damage that loses records (see ``open``).
        self.skip_damaged = skip_damaged
        self.last_sequence = 0
        self._segments: list[tuple[int, Path]] = []  # (first sequence, path), oldest first
        self._fd: int | None = None
        self._size = 0  # bytes in the current segment that hold whole entries
        self._pending: list[_Append] = []
        self._writer: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._unsynced = False
        self._closed = False
        self.syncs = 0  # fsyncs of appended entries (metrics)
        self.refused = 0  # appends refused because the disk failed (metrics)
        self.skipped_records = 0  # records given up at start-up with ``skip_damaged`` (metrics)

    # -- start-up ------------------------------------------------------------

    def open(self, after: int = 0) -> None:
        """Check the segments, cut a torn tail, and get ready to append after the last good
        record. Records up to ``after`` are held elsewhere (a snapshot; for a spool, the
        api server): damage among them loses nothing and is only logged. ``DamagedLog``
        for damage to later records (unless ``skip_damaged``); ``StorageError`` if the
        directory cannot be used at all."""
        try:
            make_private_directory(self.directory)
            tighten(self.directory)
            names = sorted(p for p in self.directory.iterdir() if p.suffix == SEGMENT_SUFFIX)
        except OSError as exc:
            raise StorageError(f"write-ahead log: cannot use {self.directory}: {exc}") from None
        segments = []
        for path in names:
            try:
                segments.append((int(path.stem), path))
            except ValueError:
                log.warning("write-ahead log: ignoring %s (not a segment name)", path.name)
        for index, (first, path) in enumerate(segments):
            following = segments[index + 1] if index + 1 < len(segments) else None
            good_bytes, last = self._check_segment(path, first, following, after)
            self.last_sequence = max(self.last_sequence, last)
            if following is None:
                self._size = good_bytes
        self._segments = segments
        if segments:
            self._fd = self._open_segment(segments[-1][1], truncate_to=self._size)
        if self.policy is FsyncPolicy.INTERVAL:
            self._syncer = asyncio.get_running_loop().create_task(self._sync_periodically())

    def _check_segment(
        self, path: Path, first: int, following: tuple[int, Path] | None, after: int
    ) -> tuple[int, int]:
        """(bytes up to the end of the last good entry, last good sequence) of one segment;
        its damage, if any, handled as ``open`` says."""
        data = path.read_bytes()
        end, last = 0, first - 1
        next_first = following[0] if following is not None else None
        for item in _walk(data, first, next_first):
            if isinstance(item, _Damage):
                if item.resume is None and next_first is None:  # the newest segment's tail
                    log.warning(
                        "write-ahead log: cut a damaged or torn tail of %d bytes from %s "
                        "(the last good record is %d)",
                        len(data) - end,
                        path.name,
                        last,
                    )
                    break
                # Missing: up to the next good entry here, or else where the next segment starts.
                through = min(n for n in (item.next_sequence, next_first) if n is not None)
                self._lost(f"{path} is damaged at byte {item.offset}", last + 1, through - 1, after)
                continue
            entry, end = item
            last = entry.last
        if following is not None and last + 1 < following[0] and end == len(data):
            self._lost(
                f"{path} ends at byte {end} with record {last}, and the next segment "
                f"{following[1].name} starts at record {following[0]} (a segment is missing)",
                last + 1,
                following[0] - 1,
                after,
            )
        return end, last

    def _lost(self, where: str, first: int, last: int, after: int) -> None:
        """Records ``first`` to ``last`` cannot be read from the log (``where`` says why)."""
        if last < first:  # unreadable bytes, but the numbering goes on: no record lost
            log.warning("write-ahead log: %s; no record is missing", where)
        elif last <= after:
            log.warning(
                "write-ahead log: %s: records %d to %d cannot be read; nothing is lost, "
                "they are held up to record %d elsewhere",
                where,
                first,
                last,
                after,
            )
        else:
            self.skip_or_stop(max(first, after + 1), last, where)

    def skip_or_stop(self, first: int, last: int, where: str) -> None:
        """Records ``first`` to ``last`` are needed and cannot be had (``where`` says why):
        ``DamagedLog``, unless the operator chose ``skip_damaged``; then they are counted
        in ``skipped_records`` and logged."""
        if not self.skip_damaged:
            raise DamagedLog(
                f"write-ahead log: {where}: records {first} to {last} cannot be read; "
                f"start-up stops rather than lose them: {SKIP_HINT}"
            )
        self.skipped_records += last - first + 1
        log.error(
            "write-ahead log: %s: records %d to %d cannot be read and are skipped "
            "(--wal-skip-damaged): %d records lost",
            where,
            first,
            last,
            last - first + 1,
        )

    @property
    def first_sequence(self) -> int | None:
        """The number of the first record the log may hold (None: no segment)."""
        return self._segments[0][0] if self._segments else None

    def entries(self, after: int = 0) -> Iterator[LogEntry]:
        """The good entries holding records after ``after``, in order, past damage that
        ``open`` let through (reads the disk; may run in a worker thread while the log is
        appended to and pruned)."""
        segments = list(self._segments)
        for index, (first, path) in enumerate(segments):
            following = segments[index + 1][0] if index + 1 < len(segments) else None
            if following is not None and following <= after + 1:
                continue  # wholly at or before ``after``
            for item in _walk(path.read_bytes(), first, following, path):
                if not isinstance(item, _Damage) and item[0].last > after:
                    yield item[0]

    def continue_after(self, sequence: int) -> None:
        """Number new records after ``sequence`` (a snapshot's) if the log ends before it,
        e.g. when the log's directory was lost: numbers must never go back."""
        if sequence > self.last_sequence:
            log.warning(
                "write-ahead log ends at record %d, before the snapshot's %d: "
                "numbering goes on from the snapshot",
                self.last_sequence,
                sequence,
            )
            self.last_sequence = sequence
            if self._fd is not None:  # the next entry starts a segment named after it
                os.close(self._fd)
                self._fd = None

    # -- appending -----------------------------------------------------------

    async def append(self, payload: bytes, count: int, on_durable: Callable[[int], None]) -> int:
        """Write an entry of ``count`` records; returns its first sequence number once durable
        (per the policy) and after ``on_durable(sequence)`` ran. ``StorageError`` if the disk
        refused it, or an entry queued before it: then ``on_durable`` never runs and the log
        is as before. Entries are queued, and written, in the order of the calls' first steps."""
        if self._closed:
            raise StorageError("write-ahead log is closed")
        answer = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(payload, count, on_durable, answer))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())
        return await answer

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                if self.group_commit:
                    group, self._pending = self._pending, []
                else:
                    group = [self._pending.pop(0)]
                await self._write_group(group)
        finally:
            self._writer = None

    async def _write_group(self, group: list[_Append]) -> None:
        sequence = self.last_sequence + 1
        frames = []
        for item in group:
            frames.append(_frame(sequence, item.count, item.payload))
            sequence += item.count
        data = b"".join(frames)
        try:
            if self._fd is None or self._size >= self.segment_bytes:  # a new segment
                self._start_segment(self.last_sequence + 1)
            assert self._fd is not None
            if self.policy is FsyncPolicy.ALWAYS:
                # Written and synced in one trip to a thread: copying the group into the
                # page cache then takes no time from the event loop either.
                await asyncio.to_thread(_write_and_sync, self._fd, data)
                self.syncs += 1
            else:
                _write_all(self._fd, data)
                self._unsynced = True
        except OSError as exc:
            self._abandon_segment()
            # Callers see what happened; where (a path on this server) is for the log only.
            reason = exc.strerror or type(exc).__name__
            error = StorageError(f"write-ahead log: cannot write: {reason}; nothing was applied")
            log.error(
                "write-ahead log: cannot write to %s: %s; the requests in this group and those "
                "queued behind it are refused",
                self.directory,
                exc,
            )
            # The appends queued behind this group are refused with it: a caller may have
            # queued its next batch counting on this one being written before it.
            group += self._pending
            self._pending = []
            self.refused += len(group)
            for item in group:
                if not item.answer.done():
                    item.answer.set_exception(error)
            return
        self._size += len(data)
        first = self.last_sequence + 1
        for item in group:
            # State changes happen here, in log order, whether or not the appender still waits.
            try:
                item.on_durable(first)
            except Exception as exc:  # a bug: the records were validated before
                log.exception("applying records %d+ failed", first)
                if not item.answer.done():
                    item.answer.set_exception(exc)
            else:
                if not item.answer.done():
                    item.answer.set_result(first)
            first += item.count
            self.last_sequence = first - 1

    def _abandon_segment(self) -> None:
        """After a failed write or fsync: cut the segment back to its last whole entry, and
        go on in a new segment. What the kernel holds for a file whose fsync failed cannot
        be trusted, and a cut that failed leaves refused entries behind: the new segment
        takes over their sequence numbers, and reading skips what a later segment covers."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, self._size)
        except OSError as exc:
            log.error("write-ahead log: cannot cut a failed write: %s", exc)
        finally:
            os.close(fd)

    def _start_segment(self, first: int) -> None:
        if self._fd is not None:
            old, self._fd = self._fd, None
            try:
                os.fsync(old)  # under ``interval`` and ``never`` it may hold unsynced entries
            finally:
                os.close(old)
        path = self.directory / f"{first:020d}{SEGMENT_SUFFIX}"
        fd = self._open_segment(path, truncate_to=0)
        try:
            fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, 0
        if not self._segments or self._segments[-1][1] != path:
            self._segments.append((first, path))

    @staticmethod
    def _open_segment(path: Path, truncate_to: int) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        os.ftruncate(fd, truncate_to)
        os.lseek(fd, truncate_to, os.SEEK_SET)
        return fd

    async def _sync_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            await self.sync()

    async def sync(self) -> None:
        """Force what was written to disk (for ``interval`` and ``never``)."""
        if self._unsynced and self._fd is not None:
            self._unsynced = False
            try:
                await asyncio.to_thread(os.fsync, self._fd)
                self.syncs += 1
            except OSError as exc:
                self._unsynced = True
                log.error("write-ahead log: fsync failed: %s", exc)

    # -- after snapshots -----------------------------------------------------

    def remove_through(self, sequence: int) -> int:
        """Delete the segments whose records are all at or before ``sequence`` (a snapshot
        holds them); the segment being written is kept. Returns how many were deleted."""
        removed = 0
        while len(self._segments) > 1 and self._segments[1][0] <= sequence + 1:
            path = self._segments[0][1]
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("write-ahead log: cannot remove %s: %s", path.name, exc)
                break
            del self._segments[0]
            removed += 1
        return removed

    def segment_count(self) -> int:
        return len(self._segments)

    async def close(self) -> None:
        """Finish pending appends, force everything to disk, close the segment."""
        if self._writer is not None:
            await asyncio.shield(self._writer)
        self._closed = True
        if self._syncer is not None:
            self._syncer.cancel()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None


def _frame(sequence: int, count: int, payload: bytes) -> bytes:
    body = _BODY_HEAD.pack(sequence, count) + payload
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


@dataclass(frozen=True)
class _Damage:
    """Bytes of a segment from ``offset`` that hold no good entry; the next good entry is
    at ``resume`` and starts with record ``next_sequence`` (None: nothing good follows)."""

    offset: int
    resume: int | None = None
    next_sequence: int | None = None


def _walk(
    data: bytes, first: int, following: int | None, path: Path | None = None
) -> Iterator[tuple[LogEntry, int] | _Damage]:
    """A segment's good entries in order, each with the offset after it, and a ``_Damage``
    where bytes cannot be read. Stops at damage that nothing good follows, and where the
    next segment (starting with record ``following``) takes over: entries left behind by
    a failed write carry numbers the next segment has."""
    offset, expected = 0, first
    while offset < len(data):
        if following is not None and expected >= following:
            return
        found = _entry_at(data, offset, path)
        if found is not None and found[0].sequence == expected:
            yield found
            offset, expected = found[1], found[0].last + 1
            continue
        # A good entry numbered ahead means records are missing before it; anything else
        # here is damage to search past.
        if found is not None and found[0].sequence > expected:
            resume: int | None = offset
        else:
            resume = _resync(data, offset + 1, expected)
        if resume is None:
            yield _Damage(offset)
            return
        sequence = _BODY_HEAD.unpack_from(data, resume + _HEADER.size)[0]
        yield _Damage(offset, resume, sequence)
        offset, expected = resume, sequence


def _entry_at(data: bytes, offset: int, path: Path | None = None) -> tuple[LogEntry, int] | None:
    """The whole, intact entry at ``offset`` and the offset after it; None if there is none."""
    if offset + _HEADER.size > len(data):
        return None
    length, checksum = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    end = start + length
    if length < _BODY_HEAD.size or length > MAX_ENTRY_BYTES or end > len(data):
        return None
    body = data[start:end]
    if zlib.crc32(body) != checksum:
        return None
    sequence, count = _BODY_HEAD.unpack_from(body)
    if sequence < 1 or count < 1:
        return None
    return LogEntry(sequence, count, body[_BODY_HEAD.size :], path, offset), end


def _resync(data: bytes, start: int, expected: int) -> int | None:
    """The offset of the first intact entry at or after ``start`` numbered from
    ``expected`` to ``expected + RESYNC_WINDOW``; None if there is none.

    Each try is a checksum over up to 64 MiB, so candidates are the places where the top
    five bytes of such a number stand (found by ``bytes.find``, at C speed): at most two
    patterns, since the window spans at most two values of them."""
    patterns = {(n >> 24).to_bytes(5, "little") for n in (expected, expected + RESYNC_WINDOW)}
    position = start + _SEQUENCE_HIGH_BYTES
    hits = {pattern: data.find(pattern, position) for pattern in patterns}
    while True:
        found = [hit for hit in hits.values() if hit >= 0]
        if not found:
            return None
        hit = min(found)
        candidate = hit - _SEQUENCE_HIGH_BYTES
        entry = _entry_at(data, candidate)
        if entry is not None and expected <= entry[0].sequence < expected + RESYNC_WINDOW:
            return candidate
        position = hit + 1
        if not any(data[candidate : candidate + 4]):
            # Zeros (an unwritten tail): an entry's length (its first 4 bytes) is never 0,
            # so none starts before the last 3 bytes of the run.
            nonzero = _NONZERO.search(data, candidate)
            if nonzero is None:
                return None
            position = max(position, nonzero.start() - 3 + _SEQUENCE_HIGH_BYTES)
        for pattern, at in hits.items():
            if 0 <= at < position:
                hits[pattern] = data.find(pattern, position)


def _write_all(fd: int | None, data: bytes) -> None:
    assert fd is not None
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_and_sync(fd: int, data: bytes) -> None:
    _write_all(fd, data)
    os.fsync(fd)

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

``open`` checks every entry. A damaged or torn tail of the newest segment (a
crash in the middle of a write) is cut at the last good entry; damage inside an
older segment loses the rest of that segment only. Each is one log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from storage.blob_store import StorageError
from storage.fsutil import fsync_directory

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # length, checksum
_BODY_HEAD = struct.Struct("<QI")  # sequence, count
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # far above any batch; a larger length is damage
SEGMENT_SUFFIX = ".wal"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


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
    """Records ``sequence`` to ``sequence + count - 1``, encoded in ``payload``."""

    sequence: int
    count: int
    payload: bytes

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
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        group_commit: bool = True,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        # Without group commit each append is written and synced alone (for benchmarks).
        self.group_commit = group_commit
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

    # -- start-up ------------------------------------------------------------

    def open(self) -> None:
        """Check the segments, cut a damaged tail, and get ready to append after the last
        good record. Raises ``StorageError`` if the directory cannot be used at all."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
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
            newest = index == len(segments) - 1
            good_bytes, last = self._check_segment(path, first, newest)
            self.last_sequence = max(self.last_sequence, last)
            if newest:
                self._size = good_bytes
        self._segments = segments
        if segments:
            self._fd = self._open_segment(segments[-1][1], truncate_to=self._size)
        if self.policy is FsyncPolicy.INTERVAL:
            self._syncer = asyncio.get_running_loop().create_task(self._sync_periodically())

    def _check_segment(self, path: Path, first: int, newest: bool) -> tuple[int, int]:
        """(bytes of whole good entries, last good sequence) of one segment."""
        data = path.read_bytes()
        offset, last = 0, first - 1
        for entry, end in _entries(data):
            if entry.sequence != last + 1:
                break
            offset, last = end, entry.last
        if offset < len(data):
            if newest:  # cut when the segment is opened for appending
                log.warning(
                    "write-ahead log: cut a damaged or torn tail of %d bytes from %s "
                    "(the last good record is %d)",
                    len(data) - offset,
                    path.name,
                    last,
                )
            else:
                log.error(
                    "write-ahead log: %s is damaged at byte %d: %d bytes after record %d "
                    "cannot be read and are skipped",
                    path.name,
                    offset,
                    len(data) - offset,
                    last,
                )
        return offset, last

    def entries(self, after: int = 0) -> Iterator[LogEntry]:
        """The good entries holding records after ``after``, in order (reads the disk; may
        run in a worker thread while the log is appended to and pruned)."""
        segments = list(self._segments)
        for index, (first, path) in enumerate(segments):
            following = segments[index + 1][0] if index + 1 < len(segments) else None
            if following is not None and following <= after + 1:
                continue  # wholly at or before ``after``
            expected = first
            for entry, _ in _entries(path.read_bytes()):
                if entry.sequence != expected:
                    break
                if following is not None and entry.sequence >= following:
                    break  # left behind by a failed write: the next segment has these numbers
                expected = entry.last + 1
                if entry.last > after:
                    yield entry

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
        refused it: then ``on_durable`` never runs and the log is as before."""
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
            _write_all(self._fd, data)
            if self.policy is FsyncPolicy.ALWAYS:
                await asyncio.to_thread(os.fsync, self._fd)
                self.syncs += 1
            else:
                self._unsynced = True
        except OSError as exc:
            self._abandon_segment()
            # Callers see what happened; where (a path on this server) is for the log only.
            reason = exc.strerror or type(exc).__name__
            error = StorageError(f"write-ahead log: cannot write: {reason}; nothing was applied")
            log.error(
                "write-ahead log: cannot write to %s: %s; the requests in this group are refused",
                self.directory,
                exc,
            )
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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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


def _entries(data: bytes) -> Iterator[tuple[LogEntry, int]]:
    """Entries of a segment's bytes with the offset after each, up to the first bad one."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, checksum = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        if length < _BODY_HEAD.size or length > MAX_ENTRY_BYTES or end > len(data):
            return
        body = data[start:end]
        if zlib.crc32(body) != checksum:
            return
        sequence, count = _BODY_HEAD.unpack_from(body)
        if sequence < 1 or count < 1:
            return
        yield LogEntry(sequence, count, body[_BODY_HEAD.size :]), end
        offset = end


def _write_all(fd: int | None, data: bytes) -> None:
    assert fd is not None
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

"""Snapshots: the whole engine state as of a record sequence number, kept in a blob store.

Each snapshot is one object, ``snapshots/<sequence>.snapshot`` (20 digits, so
names sort by sequence), written whole (``BlobStore.put`` is atomic):

    magic     8 bytes  b"KIMBSNAP"
    version   u32      format of this layout (1)
    sequence  u64      every record up to this one is in the state
    length    u64      bytes of the state
    checksum  u32      CRC-32 of the state
    state              ``state_codec`` bytes (kimball.storage.v1.EngineState)

A snapshot counts once it was read back whole (``write`` does that right after
storing it; start-up does it by loading one). The newest ``keep`` such verified
snapshots are kept, and the log after the oldest of them, so a damaged newest
one falls back to the one before (plus the log); with fewer than ``keep``
verified, nothing older is deleted. A snapshot that does not read back is moved
aside, to ``snapshots/damaged/<name>.<UTC time>``, with the reason logged: it
is never picked again, and the operator finds it there.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from kimball_grpc.core.errors import InvalidStoredData
from storage.blob_store import BlobNotFound, BlobStore, StorageError

log = logging.getLogger(__name__)

MAGIC = b"KIMBSNAP"
VERSION = 1
_HEADER = struct.Struct("<8sIQQI")
PREFIX = "snapshots/"
SUFFIX = ".snapshot"
DEFAULT_KEEP = 2  # verified snapshots kept: the newest and one to fall back on

State = TypeVar("State")


class DamagedSnapshot(ValueError):
    """A snapshot object that cannot be used (says why)."""


@dataclass(frozen=True)
class Snapshot:
    """A stored snapshot: its key and the sequence number it is complete up to."""

    key: str
    sequence: int


def snapshot_key(sequence: int, prefix: str = PREFIX) -> str:
    return f"{prefix}{sequence:020d}{SUFFIX}"


def encode_snapshot(sequence: int, state: bytes) -> bytes:
    """The stored form of ``state`` complete up to record ``sequence``."""
    header = _HEADER.pack(MAGIC, VERSION, sequence, len(state), zlib.crc32(state))
    # join, not +: it copies without holding the GIL (a snapshot is written from a worker
    # thread; + held the event loop for 0.4 s at 280 MB).
    return b"".join((header, state))


def decode_snapshot(data: bytes) -> tuple[int, memoryview]:
    """(sequence, state) of a stored snapshot; ``DamagedSnapshot`` saying what is wrong.
    The state is a view of ``data``: a slice would copy hundreds of MB holding the GIL,
    which stalls the event loop while a worker thread reads a snapshot back."""
    if len(data) < _HEADER.size:
        raise DamagedSnapshot(f"{len(data)} bytes: shorter than the header")
    magic, version, sequence, length, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DamagedSnapshot("not a Kimball snapshot (wrong magic bytes)")
    if version != VERSION:
        raise DamagedSnapshot(f"format version {version}; this Kimball reads {VERSION}")
    state = memoryview(data)[_HEADER.size :]
    if len(state) != length:
        raise DamagedSnapshot(f"truncated: {len(state)} of {length} state bytes")
    if zlib.crc32(state) != checksum:
        raise DamagedSnapshot("checksum mismatch")
    return sequence, state


@dataclass(frozen=True)
class Written:
    """A snapshot stored and read back whole. ``covered``: the log may drop the records up
    to here, which every kept snapshot holds (None: fewer than ``keep`` are verified yet,
    so the whole log stays). ``deleted``: older snapshots deleted."""

    snapshot: Snapshot
    covered: int | None
    deleted: int


@dataclass(frozen=True)
class Loaded(Generic[State]):
    """The newest snapshot that reads and decodes, and its decoded state."""

    snapshot: Snapshot
    state: State


class SnapshotStore:
    """Snapshots in ``blobs``: write and verify, prune, load the newest usable one, move
    damaged ones aside."""

    def __init__(self, blobs: BlobStore, keep: int = DEFAULT_KEEP, prefix: str = PREFIX) -> None:
        """``prefix``: where in ``blobs`` these snapshots live (``snapshots/``; in cluster
        mode, one such place per partition)."""
        if keep < 1:
            raise ValueError(f"keep at least one snapshot, not {keep}")
        self.blobs = blobs
        self.prefix = prefix
        self.keep = keep
        self.moved_aside = 0  # damaged snapshots moved aside since start (metrics)
        # Read back whole by this process, oldest first, at most ``keep``.
        self._verified: list[Snapshot] = []

    def list(self) -> list[Snapshot]:
        """Stored snapshots, oldest first (blob store errors propagate)."""
        out = []
        for key in self.blobs.list(self.prefix):
            digits = key[len(self.prefix) : -len(SUFFIX)] if key.endswith(SUFFIX) else ""
            if digits.isdigit() and len(digits) == 20:
                out.append(Snapshot(key, int(digits)))
        return sorted(out, key=lambda s: s.sequence)

    def write(self, sequence: int, state: bytes) -> Written:
        """Store a snapshot, read it back, and once it is whole delete the snapshots older
        than the newest ``keep`` verified ones. ``DamagedSnapshot`` if it does not read
        back (it is moved aside, logged, and nothing is deleted); ``StorageError`` if the
        backend fails (nothing is deleted)."""
        snapshot = Snapshot(snapshot_key(sequence, self.prefix), sequence)
        stored = encode_snapshot(sequence, state)
        self.blobs.put(snapshot.key, stored)
        header = stored[: _HEADER.size]
        del stored  # a state can be large: hold one copy at a time
        try:
            data = self.blobs.get(snapshot.key)
            self._verify(snapshot, data)
            if data[: _HEADER.size] != header:
                raise DamagedSnapshot("reads back as another snapshot than the one written")
        except BlobNotFound:
            log.error(
                "snapshot %s/%s was stored but is not found when read back: nothing older "
                "is deleted, the next snapshot tries again",
                self.blobs.uri,
                snapshot.key,
            )
            raise DamagedSnapshot("not found when read back") from None
        except DamagedSnapshot as exc:
            log.error(
                "snapshot %s/%s was stored but does not read back whole (%s): moved to %s/%s; "
                "nothing older is deleted, the next snapshot tries again",
                self.blobs.uri,
                snapshot.key,
                exc,
                self.blobs.uri,
                self._move_aside(snapshot, data),
            )
            raise
        del data
        self._verified = [s for s in self._verified if s.sequence < sequence] + [snapshot]
        self._verified = self._verified[-self.keep :]
        if len(self._verified) < self.keep:
            return Written(snapshot, None, 0)
        oldest = self._verified[0].sequence
        return Written(snapshot, oldest, self._delete_older_than(oldest))

    def _delete_older_than(self, sequence: int) -> int:
        """Delete the snapshots older than ``sequence``; what cannot be deleted now is left
        for the next time (logged)."""
        deleted = 0
        try:
            for old in self.list():
                if old.sequence < sequence:
                    self.blobs.delete(old.key)
                    deleted += 1
        except StorageError as exc:
            log.warning(
                "cannot delete older snapshots now (%s); the next snapshot tries again", exc.message
            )
        return deleted

    def load_newest(self, decode_state: Callable[[memoryview], State]) -> Loaded[State] | None:
        """The newest snapshot that reads and decodes, newest first; each unusable one is
        moved aside and logged, and the one before it is tried. None when there is none.
        ``StorageError`` (backend down) propagates: falling back then would lose data."""
        for snapshot in reversed(self.list()):
            try:
                data = self.blobs.get(snapshot.key)
            except BlobNotFound:
                continue  # deleted since listed
            try:
                loaded = Loaded(snapshot, decode_state(self._verify(snapshot, data)))
            except (DamagedSnapshot, InvalidStoredData) as exc:
                log.error(
                    "snapshot %s/%s cannot be used (%s): moved to %s/%s; falling back to the "
                    "one before it and the write-ahead log",
                    self.blobs.uri,
                    snapshot.key,
                    exc.message if isinstance(exc, InvalidStoredData) else exc,
                    self.blobs.uri,
                    self._move_aside(snapshot, data),
                )
                continue
            self._verified = [snapshot]
            return loaded
        return None

    @staticmethod
    def _verify(snapshot: Snapshot, data: bytes) -> memoryview:
        """The state in ``data``, the stored ``snapshot``; ``DamagedSnapshot`` if it is not
        whole or not the snapshot its name says."""
        sequence, state = decode_snapshot(data)
        if sequence != snapshot.sequence:
            raise DamagedSnapshot(f"holds sequence {sequence}, not its name's")
        return state

    def _move_aside(self, snapshot: Snapshot, data: bytes) -> str:
        """Put ``data`` (what ``snapshot`` holds) under ``snapshots/damaged/`` and remove
        it from where start-up looks; the key it went to."""
        name = snapshot.key[len(self.prefix) :]
        moved = f"{self.prefix}damaged/{name}.{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        self.blobs.put(moved, data)
        self.blobs.delete(snapshot.key)
        self.moved_aside += 1
        return moved

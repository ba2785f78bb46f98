"""Snapshots: the whole engine state as of a record sequence number, kept in a blob store.

Each snapshot is one object, ``snapshots/<sequence>.snapshot`` (20 digits, so
names sort by sequence), written whole (``BlobStore.put`` is atomic):

    magic     8 bytes  b"KIMBSNAP"
    version   u32      format of this layout (1)
    sequence  u64      every record up to this one is in the state
    length    u64      bytes of the state
    checksum  u32      CRC-32 of the state
    state              ``state_codec`` bytes (kimball.storage.v1.EngineState)

The newest few are kept, so a damaged newest one falls back to the one before
(plus the write-ahead log since then).
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from kimball_grpc.core.errors import InvalidStoredData
from storage.blob_store import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

MAGIC = b"KIMBSNAP"
VERSION = 1
_HEADER = struct.Struct("<8sIQQI")
PREFIX = "snapshots/"
SUFFIX = ".snapshot"
KEEP = 3  # snapshots kept: the newest and two to fall back on

State = TypeVar("State")


class DamagedSnapshot(ValueError):
    """A snapshot object that cannot be used (says why)."""


@dataclass(frozen=True)
class Snapshot:
    """A stored snapshot: its key and the sequence number it is complete up to."""

    key: str
    sequence: int


def snapshot_key(sequence: int) -> str:
    return f"{PREFIX}{sequence:020d}{SUFFIX}"


def encode_snapshot(sequence: int, state: bytes) -> bytes:
    """The stored form of ``state`` complete up to record ``sequence``."""
    header = _HEADER.pack(MAGIC, VERSION, sequence, len(state), zlib.crc32(state))
    # join, not +: it copies without holding the GIL (a snapshot is written from a worker
    # thread; + held the event loop for 0.4 s at 280 MB).
    return b"".join((header, state))


def decode_snapshot(data: bytes) -> tuple[int, bytes]:
    """(sequence, state) of a stored snapshot; ``DamagedSnapshot`` saying what is wrong."""
    if len(data) < _HEADER.size:
        raise DamagedSnapshot(f"{len(data)} bytes: shorter than the header")
    magic, version, sequence, length, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DamagedSnapshot("not a Kimball snapshot (wrong magic bytes)")
    if version != VERSION:
        raise DamagedSnapshot(f"format version {version}; this Kimball reads {VERSION}")
    state = data[_HEADER.size :]
    if len(state) != length:
        raise DamagedSnapshot(f"truncated: {len(state)} of {length} state bytes")
    if zlib.crc32(state) != checksum:
        raise DamagedSnapshot("checksum mismatch")
    return sequence, state


class SnapshotStore:
    """Snapshots in ``blobs``: write, prune, and load the newest usable one."""

    def __init__(self, blobs: BlobStore, keep: int = KEEP) -> None:
        self.blobs = blobs
        self.keep = keep

    def list(self) -> list[Snapshot]:
        """Stored snapshots, oldest first (blob store errors propagate)."""
        out = []
        for key in self.blobs.list(PREFIX):
            digits = key[len(PREFIX) : -len(SUFFIX)] if key.endswith(SUFFIX) else ""
            if digits.isdigit() and len(digits) == 20:
                out.append(Snapshot(key, int(digits)))
        return sorted(out, key=lambda s: s.sequence)

    def write(self, sequence: int, state: bytes) -> list[Snapshot]:
        """Store a snapshot, then delete all but the newest ``keep``; returns those kept,
        oldest first. The log after the oldest kept one is what a fallback needs."""
        self.blobs.put(snapshot_key(sequence), encode_snapshot(sequence, state))
        stored = self.list()
        for old in stored[: -self.keep]:
            self.blobs.delete(old.key)
        return stored[-self.keep :]

    def load_newest(self, decode_state: Callable[[bytes], State]) -> tuple[Snapshot, State] | None:
        """The newest snapshot that reads and decodes, newest first; each unusable one is
        logged in one line and skipped. None when there is none (a first start).
        ``StorageError`` (backend down) propagates: falling back then would lose data."""
        for snapshot in reversed(self.list()):
            try:
                sequence, data = decode_snapshot(self.blobs.get(snapshot.key))
                if sequence != snapshot.sequence:
                    raise DamagedSnapshot(f"holds sequence {sequence}, not its name's")
                return snapshot, decode_state(data)
            except BlobNotFound:
                continue  # deleted since listed (pruned by another writer)
            except (DamagedSnapshot, InvalidStoredData) as exc:
                log.error(
                    "snapshot %s/%s cannot be used (%s): falling back to the one before it",
                    self.blobs.uri,
                    snapshot.key,
                    exc,
                )
        return None

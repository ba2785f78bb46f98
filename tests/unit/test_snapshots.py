"""The snapshot store on a local directory: which snapshots count as verified, what each
write lets the log drop, and what it deletes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from storage.blob_store import StorageError
from storage.local_store import LocalBlobStore
from storage.snapshots import SnapshotStore, snapshot_key


def stored(root: Path) -> list[int]:
    return [s.sequence for s in SnapshotStore(LocalBlobStore(root)).list()]


def test_nothing_is_dropped_until_the_number_kept_are_verified(tmp_path: Path):
    store = SnapshotStore(LocalBlobStore(tmp_path), keep=2)

    first = store.write(10, b"state at 10")
    second = store.write(20, b"state at 20")
    third = store.write(30, b"state at 30")

    assert (first.covered, first.deleted) == (None, 0)  # one verified: the log stays whole
    assert (second.covered, second.deleted) == (10, 0)
    assert (third.covered, third.deleted) == (20, 1)
    assert stored(tmp_path) == [20, 30]


def test_after_a_restart_only_the_snapshot_loaded_counts_as_verified(tmp_path: Path):
    before = SnapshotStore(LocalBlobStore(tmp_path), keep=2)
    for sequence in (10, 20):
        before.write(sequence, b"state at %d" % sequence)

    store = SnapshotStore(LocalBlobStore(tmp_path), keep=2)  # a new process
    loaded = store.load_newest(bytes)
    written = store.write(30, b"state at 30")

    assert loaded is not None and loaded.snapshot.sequence == 20
    assert (written.covered, written.deleted) == (20, 1)
    assert stored(tmp_path) == [20, 30]


def test_writing_the_same_sequence_again_counts_once(tmp_path: Path):
    store = SnapshotStore(LocalBlobStore(tmp_path), keep=2)
    store.write(10, b"state")

    assert store.write(10, b"state").covered is None


class RefusingDeletes(LocalBlobStore):
    def delete(self, key: str) -> None:
        raise StorageError(f"cannot delete {key}: permission denied")


def test_older_snapshots_that_cannot_be_deleted_now_are_left_for_the_next_time(
    tmp_path: Path, caplog
):
    store = SnapshotStore(RefusingDeletes(tmp_path), keep=1)
    store.write(10, b"state at 10")

    with caplog.at_level(logging.WARNING):
        written = store.write(20, b"state at 20")

    assert (written.covered, written.deleted) == (20, 0)  # verified: the log may go
    assert "cannot delete older snapshots now" in caplog.text
    assert stored(tmp_path) == [10, 20]
    store.blobs = LocalBlobStore(tmp_path)
    assert store.write(30, b"state at 30").deleted == 2
    assert stored(tmp_path) == [30]


def test_a_snapshot_whose_name_says_another_sequence_is_moved_aside(tmp_path: Path):
    blobs = LocalBlobStore(tmp_path)
    store = SnapshotStore(blobs)
    store.write(10, b"state at 10")
    store.write(20, b"state at 20")
    blobs.put(snapshot_key(30), blobs.get(snapshot_key(20)))  # a copy under a later name

    loaded = store.load_newest(bytes)

    assert loaded is not None and (loaded.snapshot.sequence, loaded.state) == (20, b"state at 20")
    assert store.moved_aside == 1
    assert stored(tmp_path) == [10, 20]
    assert next(k for k in blobs.list() if "/damaged/" in k).startswith(
        f"snapshots/damaged/{snapshot_key(30)[len('snapshots/') :]}."
    )


def test_keeping_no_snapshot_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="keep at least one"):
        SnapshotStore(LocalBlobStore(tmp_path), keep=0)

"""The write-ahead log on a real disk: order, group commit, damaged tails, a full disk."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from support.small_filesystem import fill, small_filesystem

from storage.blob_store import StorageError
from storage.wal import FsyncPolicy, WriteAheadLog


async def opened(directory: Path, **options) -> WriteAheadLog:
    wal = WriteAheadLog(directory, **options)
    wal.open()
    return wal


async def append_all(wal: WriteAheadLog, payloads: list[bytes], applied: list) -> list[int]:
    return [await wal.append(p, 1, applied.append) for p in payloads]


def read_back(directory: Path, after: int = 0) -> list[tuple[int, bytes]]:
    wal = WriteAheadLog(directory)
    wal.open()
    return [(e.sequence, e.payload) for e in wal.entries(after)]


async def test_entries_are_numbered_applied_in_order_and_read_back(tmp_path: Path):
    wal = await opened(tmp_path)
    applied: list[int] = []

    first = await wal.append(b"one", 1, applied.append)
    second = await wal.append(b"two-three", 2, applied.append)
    third = await wal.append(b"four", 1, applied.append)
    await wal.close()

    assert (first, second, third) == (1, 2, 4)
    assert applied == [1, 2, 4]
    assert read_back(tmp_path) == [(1, b"one"), (2, b"two-three"), (4, b"four")]
    assert read_back(tmp_path, after=3) == [(4, b"four")]


async def test_concurrent_appends_share_fsyncs_and_keep_their_order(tmp_path: Path):
    wal = await opened(tmp_path)
    applied: list[int] = []

    answers = await asyncio.gather(*(wal.append(b"x%d" % i, 1, applied.append) for i in range(200)))
    await wal.close()

    assert answers == list(range(1, 201))
    assert applied == answers
    assert wal.syncs < 50  # one fsync per group, not per append
    assert [p for _, p in read_back(tmp_path)] == [b"x%d" % i for i in range(200)]


async def test_without_group_commit_each_append_has_its_own_fsync(tmp_path: Path):
    wal = await opened(tmp_path, group_commit=False)

    await asyncio.gather(*(wal.append(b"x", 1, lambda s: None) for _ in range(20)))
    await wal.close()

    assert wal.syncs == 20


async def test_numbering_goes_on_after_a_restart(tmp_path: Path):
    wal = await opened(tmp_path)
    await append_all(wal, [b"a", b"b"], [])
    await wal.close()

    wal = await opened(tmp_path)
    assert wal.last_sequence == 2
    assert await wal.append(b"c", 1, lambda s: None) == 3
    await wal.close()
    assert [s for s, _ in read_back(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("damage", "kept"),
    [
        (lambda data: data[:-3], [b"first", b"second"]),  # torn: the last entry cut short
        (lambda data: data + b"\x07\x00\x00\x00garbage", [b"first", b"second", b"third"]),
        (lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), [b"first", b"second"]),  # checksum
    ],
    ids=["torn", "garbage-after", "flipped-bit"],
)
async def test_a_damaged_tail_is_cut_at_the_last_good_entry(tmp_path: Path, damage, kept, caplog):
    wal = await opened(tmp_path)
    await append_all(wal, [b"first", b"second", b"third"], [])
    await wal.close()
    segment = next(tmp_path.glob("*.wal"))
    segment.write_bytes(damage(segment.read_bytes()))

    with caplog.at_level(logging.WARNING):
        wal = await opened(tmp_path)
    next_sequence = await wal.append(b"after", 1, lambda s: None)
    await wal.close()

    assert [p for _, p in read_back(tmp_path)] == [*kept, b"after"]
    assert next_sequence == len(kept) + 1
    lines = [r.getMessage() for r in caplog.records if "write-ahead log" in r.getMessage()]
    assert len(lines) == 1 and "cut a damaged or torn tail" in lines[0]


async def test_damage_inside_an_older_segment_loses_only_the_rest_of_that_segment(
    tmp_path: Path, caplog
):
    wal = await opened(tmp_path, segment_bytes=64)  # a new segment every few entries
    await append_all(wal, [b"%02d" % i + b"." * 30 for i in range(12)], [])
    await wal.close()
    segments = sorted(tmp_path.glob("*.wal"))
    assert len(segments) >= 3
    damaged = segments[0].read_bytes()
    segments[0].write_bytes(damaged[:-5] + b"XXXXX")

    with caplog.at_level(logging.ERROR):
        entries = read_back(tmp_path)

    numbers = [s for s, _ in entries]
    assert numbers[-1] == 12  # later segments are all there
    assert len(numbers) == 11  # the damaged segment's last entry is lost, nothing else
    assert "is damaged at byte" in caplog.text


async def test_segments_covered_by_a_snapshot_are_removed(tmp_path: Path):
    wal = await opened(tmp_path, segment_bytes=64)
    await append_all(wal, [b"." * 40 for _ in range(10)], [])
    before = wal.segment_count()

    removed = wal.remove_through(6)
    await wal.close()

    assert removed > 0 and wal.segment_count() == before - removed
    numbers = [s for s, _ in read_back(tmp_path)]
    assert numbers[0] <= 7  # nothing after 6 was removed
    assert numbers[-1] == 10


async def test_numbering_never_goes_back_below_a_snapshot(tmp_path: Path):
    wal = await opened(tmp_path)
    await append_all(wal, [b"a"], [])

    wal.continue_after(500)
    assert await wal.append(b"b", 1, lambda s: None) == 501
    await wal.close()

    assert [s for s, _ in read_back(tmp_path)] == [1, 501]


@pytest.mark.parametrize("policy", [FsyncPolicy.INTERVAL, FsyncPolicy.NEVER])
async def test_other_fsync_policies_write_before_answering(tmp_path: Path, policy):
    wal = await opened(tmp_path, policy=policy, fsync_interval=0.01)

    await append_all(wal, [b"a", b"b"], [])

    # Written to the file (the OS has it: a process crash loses nothing) before close.
    assert [p for _, p in read_back(tmp_path)] == [b"a", b"b"]
    await wal.close()


async def test_a_full_disk_refuses_appends_changes_nothing_and_recovers(tmp_path: Path):
    with small_filesystem(tmp_path / "disk") as disk:
        wal = await opened(disk / "wal")
        applied: list[int] = []
        await append_all(wal, [b"kept"], applied)
        filler = fill(disk)

        with pytest.raises(StorageError, match="cannot write"):
            await wal.append(b"x" * 8192, 1, applied.append)

        assert applied == [1]  # the refused entry was never applied
        filler.unlink()  # space returns
        assert await wal.append(b"later", 1, applied.append) == 2
        await wal.close()
        assert read_back(disk / "wal") == [(1, b"kept"), (2, b"later")]


async def test_appending_after_close_is_refused(tmp_path: Path):
    wal = await opened(tmp_path)
    await wal.close()

    with pytest.raises(StorageError, match="closed"):
        await wal.append(b"late", 1, lambda s: None)


async def test_a_failed_fsync_refuses_the_group_and_loses_nothing_answered_after_it(
    tmp_path: Path, monkeypatch
):
    """EIO from fsync (a failing disk; tmpfs never fails one, so os.fsync is made to fail
    once here): the refused entry must not come back, and what follows must survive."""
    import errno
    import os

    wal = await opened(tmp_path)
    applied: list[int] = []
    await wal.append(b"A", 1, applied.append)
    real_fsync = os.fsync
    failures = [OSError(errno.EIO, "I/O error")]

    def failing_fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr("storage.wal.os.fsync", failing_fsync)
    with pytest.raises(StorageError, match="I/O error"):
        await wal.append(b"B", 1, applied.append)
    assert await wal.append(b"C", 1, applied.append) == 2
    await wal.close()

    assert applied == [1, 2]
    assert read_back(tmp_path) == [(1, b"A"), (2, b"C")]


async def test_entries_left_behind_by_a_failed_cut_are_skipped(tmp_path: Path, monkeypatch):
    """If cutting a failed write fails too, the refused entry stays in its segment; the
    next segment takes over its number and reading skips the leftover."""
    import os

    wal = await opened(tmp_path)
    await wal.append(b"A", 1, lambda s: None)
    real_fsync, real_truncate = os.fsync, os.ftruncate
    fail = {"fsync": True, "ftruncate": True}

    def failing_fsync(fd: int) -> None:
        if fail.pop("fsync", False):
            raise OSError(5, "I/O error")
        real_fsync(fd)

    def failing_truncate(fd: int, size: int) -> None:
        if fail.pop("ftruncate", False):
            raise OSError(5, "I/O error")
        real_truncate(fd, size)

    monkeypatch.setattr("storage.wal.os.fsync", failing_fsync)
    monkeypatch.setattr("storage.wal.os.ftruncate", failing_truncate)
    with pytest.raises(StorageError):
        await wal.append(b"refused", 1, lambda s: None)
    assert await wal.append(b"C", 1, lambda s: None) == 2
    await wal.close()

    assert read_back(tmp_path) == [(1, b"A"), (2, b"C")]

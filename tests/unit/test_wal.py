"""The write-ahead log on a real disk: order, group commit, torn tails and damage, a full
disk, file modes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from support.small_filesystem import fill, small_filesystem

from storage.blob_store import StorageError
from storage.wal import DamagedLog, FsyncPolicy, WriteAheadLog


async def opened(directory: Path, **options) -> WriteAheadLog:
    wal = WriteAheadLog(directory, **options)
    wal.open()
    return wal


async def append_all(wal: WriteAheadLog, payloads: list[bytes], applied: list) -> list[int]:
    return [await wal.append(p, 1, applied.append) for p in payloads]


def read_back(
    directory: Path, after: int = 0, *, held: int = 0, skip_damaged: bool = False
) -> list[tuple[int, bytes]]:
    """The log's entries after ``after``, opened as start-up does: records up to ``held``
    are held elsewhere (a snapshot)."""
    wal = WriteAheadLog(directory, skip_damaged=skip_damaged)
    wal.open(after=held)
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


ENTRY = 52  # bytes of each entry ``five_entries`` writes: an 8-byte header, 12, 32


async def five_entries(directory: Path, **options) -> list[Path]:
    """Records 1 to 5 of 32 bytes each; the segments holding them."""
    wal = await opened(directory, **options)
    await append_all(wal, [b"%02d" % i + b"." * 30 for i in range(1, 6)], [])
    await wal.close()
    return sorted(directory.glob("*.wal"))


def flip_payload(data: bytes) -> bytes:  # a flipped byte in record 2
    return data[: ENTRY + 30] + bytes([data[ENTRY + 30] ^ 0x01]) + data[ENTRY + 31 :]


def garble_length(data: bytes) -> bytes:  # record 2's length field: its size is unknown
    return data[:ENTRY] + b"\xff\xfe\xfd\xfc" + data[ENTRY + 4 :]


def zero_entry(data: bytes) -> bytes:  # a block that was never written
    return data[:ENTRY] + bytes(ENTRY) + data[2 * ENTRY :]


def cut_entry(data: bytes) -> bytes:  # record 2 gone, record 3 right after record 1
    return data[:ENTRY] + data[2 * ENTRY :]


MID_DAMAGE = pytest.mark.parametrize(
    "damage",
    [flip_payload, garble_length, zero_entry, cut_entry],
    ids=["flipped-byte", "garbled-length", "zeroed-entry", "entry-missing"],
)


@MID_DAMAGE
async def test_damage_followed_by_good_entries_stops_the_open_naming_file_and_offset(
    tmp_path: Path, damage
):
    (segment,) = await five_entries(tmp_path)
    segment.write_bytes(damage(segment.read_bytes()))
    damaged = segment.read_bytes()

    with pytest.raises(DamagedLog) as stopped:
        read_back(tmp_path)

    assert f"{segment} is damaged at byte {ENTRY}" in stopped.value.message
    assert "records 2 to 2 cannot be read" in stopped.value.message
    assert "--wal-skip-damaged" in stopped.value.message
    assert segment.read_bytes() == damaged  # nothing cut: the good entries after it stay


@MID_DAMAGE
async def test_skipping_damage_loses_only_the_damaged_records_and_counts_them(
    tmp_path: Path, damage, caplog
):
    (segment,) = await five_entries(tmp_path)
    segment.write_bytes(damage(segment.read_bytes()))

    with caplog.at_level(logging.ERROR):
        wal = await opened(tmp_path, skip_damaged=True)
    assert wal.skipped_records == 1
    assert "records 2 to 2 cannot be read and are skipped" in caplog.text
    assert await wal.append(b"after", 1, lambda s: None) == 6
    await wal.close()

    numbers = [s for s, _ in read_back(tmp_path, skip_damaged=True)]
    assert numbers == [1, 3, 4, 5, 6]


async def test_damage_inside_an_older_segment_stops_the_open_or_loses_only_its_records(
    tmp_path: Path, caplog
):
    segments = await five_entries(tmp_path, segment_bytes=2 * ENTRY)  # entries 1-2, 3-4, 5
    assert [s.name[-6:] for s in segments] == ["01.wal", "03.wal", "05.wal"]
    older = segments[0].read_bytes()
    segments[0].write_bytes(older[:-5] + b"XXXXX")  # record 2, its end

    with pytest.raises(
        DamagedLog, match=f"{segments[0]} is damaged at byte {ENTRY}: records 2 to 2"
    ):
        read_back(tmp_path)
    with caplog.at_level(logging.ERROR):
        assert [s for s, _ in read_back(tmp_path, skip_damaged=True)] == [1, 3, 4, 5]
    assert "records 2 to 2 cannot be read and are skipped" in caplog.text


async def test_a_segment_missing_between_two_others_stops_the_open(tmp_path: Path):
    segments = await five_entries(tmp_path, segment_bytes=2 * ENTRY)
    segments[1].unlink()  # records 3 and 4

    with pytest.raises(DamagedLog) as stopped:
        read_back(tmp_path)

    message = stopped.value.message
    assert f"{segments[0]} ends at byte {2 * ENTRY} with record 2" in message
    assert f"the next segment {segments[2].name} starts at record 5" in message
    assert "records 3 to 4 cannot be read" in message
    assert [s for s, _ in read_back(tmp_path, skip_damaged=True)] == [1, 2, 5]


async def test_damage_to_records_a_snapshot_holds_loses_nothing_and_does_not_stop(
    tmp_path: Path, caplog
):
    segments = await five_entries(tmp_path, segment_bytes=2 * ENTRY)
    segments[0].write_bytes(flip_payload(segments[0].read_bytes()))  # record 2
    segments[1].unlink()  # records 3 and 4

    with caplog.at_level(logging.WARNING):
        assert [s for s, _ in read_back(tmp_path, after=4, held=4)] == [5]
    # Record 2's damage runs to the end of its segment, and the next one is gone: one line.
    assert "damaged at byte 52: records 2 to 4 cannot be read; nothing is lost" in caplog.text


async def test_a_tail_of_zeros_is_a_torn_tail(tmp_path: Path, caplog):
    """A crash of the machine can leave the end of the file allocated but unwritten."""
    (segment,) = await five_entries(tmp_path)
    with open(segment, "ab") as file:
        file.write(bytes(256 * 1024))

    with caplog.at_level(logging.WARNING):
        assert [s for s, _ in read_back(tmp_path)] == [1, 2, 3, 4, 5]
    assert f"cut a damaged or torn tail of {256 * 1024} bytes" in caplog.text
    assert segment.stat().st_size == 5 * ENTRY


async def test_the_log_is_its_owners_only_and_an_older_looser_one_is_tightened(
    tmp_path: Path, caplog
):
    directory = tmp_path / "data" / "wal"
    await five_entries(directory, segment_bytes=2 * ENTRY)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "data", directory]}
    modes |= {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes == {"data": 0o700, "wal": 0o700} | {p.name: 0o600 for p in directory.glob("*.wal")}

    directory.chmod(0o755)  # as an earlier version made it
    for path in directory.iterdir():
        path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_back(directory)
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in directory.iterdir()} == {0o600}
    assert f"{directory}: made 4 files or directories owner-only" in caplog.text


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

    # Records 2 to 500 are in the snapshot only: the log is whole when it is opened so.
    assert [s for s, _ in read_back(tmp_path, held=500)] == [1, 501]


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


async def test_an_append_queued_behind_a_refused_group_is_refused_with_it(
    tmp_path: Path, monkeypatch
):
    """A stream queues its next batch while the last one is being written: if the disk
    refuses the last one, the next must not be written after the gap."""
    import errno
    import os
    import threading

    wal = await opened(tmp_path)
    applied: list[int] = []
    await wal.append(b"A", 1, applied.append)  # the segment made (its directory synced)
    real_fsync = os.fsync
    syncing, fail = threading.Event(), threading.Event()

    def failing_fsync(fd: int) -> None:
        if not syncing.is_set():
            syncing.set()
            fail.wait(10)
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr("storage.wal.os.fsync", failing_fsync)
    first = asyncio.ensure_future(wal.append(b"B", 1, applied.append))
    await asyncio.to_thread(syncing.wait, 10)
    behind = asyncio.ensure_future(wal.append(b"C", 1, applied.append))
    await asyncio.sleep(0)  # its first step: queued behind the group being written
    fail.set()
    for refused in (first, behind):
        with pytest.raises(StorageError, match="I/O error"):
            await refused
    assert await wal.append(b"D", 1, applied.append) == 2  # and the log goes on
    await wal.close()

    assert applied == [1, 2]
    assert read_back(tmp_path) == [(1, b"A"), (2, b"D")]


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

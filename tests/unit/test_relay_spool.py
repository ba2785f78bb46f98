"""The sidecar's spool: what is read back, what acknowledgements drop, what a restart keeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kimball_grpc.codec.state_codec import decode_records
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.events import Event
from kimball_grpc.core.records import EventRecord
from kimball_grpc.sidecar.spool import MAX_ENTRY_BYTES, Spool, SpoolFull
from storage.wal import DamagedLog

FIXED = datetime(2024, 3, 6, 12, tzinfo=UTC)  # ISO week 2024-W10


def spool_at(directory: Path, **options: object) -> Spool:
    spool = Spool(directory, clock=lambda: FIXED, **options)  # type: ignore[arg-type]
    spool.open()
    return spool


def batch(first_user: int, count: int = 10, name: str = "e") -> list[Event]:
    return [Event(event_name=name, user_id=f"u{first_user + i}") for i in range(count)]


def users_in(read_batches: list[bytes]) -> int:
    return sum(len(decode_records(b)) for b in read_batches)


async def test_reads_come_back_in_order_from_memory_and_from_disk(tmp_path):
    # A tiny memory tail: most of the spool must be read back from disk.
    spool = spool_at(tmp_path, memory_bytes=400, segment_bytes=1024)
    for i in range(30):
        assert await spool.accept(batch(10 * i)) == 10
    assert spool.pending == 300
    after, seen = 0, 0
    while (read := await spool.read(after, max_events=45, max_bytes=1 << 20)) is not None:
        assert read.first == after + 1
        assert read.last - after in (40, 20)  # whole entries of 10, within max_events
        seen += users_in(read.batches)
        after = read.last
    assert (after, seen) == (300, 300)
    await spool.close()


async def test_records_carry_the_week_accepted_and_no_user_id(tmp_path):
    spool = spool_at(tmp_path)
    await spool.accept([Event(event_name="e", user_id="alice", value=2.5, ensure_goal=True)])
    read = await spool.read(0, 100, 1 << 20)
    assert read is not None
    (record,) = decode_records(read.batches[0])
    assert isinstance(record, EventRecord)
    assert (record.namespace, record.iso_year, record.iso_week) == ("default", 2024, 10)
    assert (record.value, record.ensure_goal) == (2.5, True)
    assert b"alice" not in read.batches[0]
    await spool.close()


async def test_acknowledged_events_are_dropped_and_stay_dropped_after_a_restart(tmp_path):
    spool = spool_at(tmp_path, segment_bytes=1024)
    for i in range(40):
        await spool.accept(batch(10 * i))
    segments = spool.wal.segment_count()
    spool.acknowledge(250)
    assert spool.pending == 150
    assert spool.wal.segment_count() < segments  # acknowledged segments are deleted
    await spool.close()

    again = spool_at(tmp_path, segment_bytes=1024)
    assert (again.acknowledged, again.pending) == (250, 150)
    read = await again.read(again.acknowledged, 1000, 1 << 20)
    assert read is not None and (read.first, read.last) == (251, 400)
    await again.accept(batch(9999))  # numbering goes on after a restart
    assert again.last_sequence == 410
    await again.close()


async def test_a_lost_position_file_means_sending_again_not_losing(tmp_path):
    spool = spool_at(tmp_path)
    for i in range(3):
        await spool.accept(batch(10 * i))
    spool.acknowledge(10)
    await spool.close()
    (tmp_path / "acknowledged").write_text("garbage")
    again = spool_at(tmp_path)
    assert again.acknowledged == 0  # all of it is sent again: harmless, a repeat counts once
    read = await again.read(0, 1000, 1 << 20)
    assert read is not None and (read.first, read.last) == (1, 30)
    await again.close()


async def spool_damaged_in_the_first_batch(directory: Path, acknowledged: int) -> None:
    """A closed spool of three batches of 10 events, a byte of events 1-10 flipped."""
    spool = spool_at(directory)
    for i in range(3):
        await spool.accept(batch(10 * i))
    spool.acknowledge(acknowledged)
    await spool.close()
    (segment,) = directory.glob("*.wal")
    data = segment.read_bytes()
    segment.write_bytes(data[:40] + bytes([data[40] ^ 0x01]) + data[41:])


async def test_damage_to_events_not_yet_delivered_stops_the_spool_unless_skipped(tmp_path):
    await spool_damaged_in_the_first_batch(tmp_path, acknowledged=0)

    with pytest.raises(DamagedLog, match="damaged at byte 0: records 1 to 10 cannot be read"):
        spool_at(tmp_path)

    skipping = spool_at(tmp_path, skip_damaged=True)
    read = await skipping.read(0, 1000, 1 << 20)
    assert read is not None and (read.first, read.last, skipping.wal.skipped_records) == (
        11,
        30,
        10,
    )
    await skipping.close()


async def test_damage_to_events_already_delivered_does_not_stop_the_spool(tmp_path):
    await spool_damaged_in_the_first_batch(tmp_path, acknowledged=10)

    again = spool_at(tmp_path)
    read = await again.read(again.acknowledged, 1000, 1 << 20)
    assert read is not None and (read.first, read.last) == (11, 30)
    await again.close()


async def test_a_full_spool_refuses_and_a_bad_event_changes_nothing(tmp_path):
    spool = spool_at(tmp_path, max_events=25)
    await spool.accept(batch(0, 20))
    with pytest.raises(SpoolFull):
        await spool.accept(batch(100, 10))
    with pytest.raises(InvalidArgument) as bad:
        await spool.accept([*batch(200, 2), Event(event_name="", user_id="u")])
    assert bad.value.details["index"] == "2"
    assert spool.pending == 20
    spool.acknowledge(20)
    assert await spool.accept(batch(100, 10)) == 10  # room again once delivered
    await spool.close()


async def test_nothing_to_read_past_the_end(tmp_path):
    spool = spool_at(tmp_path)
    assert await spool.read(0, 10, 1 << 20) is None
    await spool.accept(batch(0, 5))
    assert await spool.read(5, 10, 1 << 20) is None
    await spool.close()


async def test_concurrent_calls_cannot_overfill_the_spool(tmp_path):
    spool = spool_at(tmp_path, max_events=10)
    results = await asyncio.gather(
        *(spool.accept(batch(10 * i, 5)) for i in range(20)), return_exceptions=True
    )
    assert results.count(5) == 2
    assert all(isinstance(r, SpoolFull) for r in results if r != 5)
    assert spool.pending == 10
    await spool.close()


async def test_a_huge_batch_is_spooled_in_parts_that_each_fit_a_relay_message(tmp_path):
    spool = spool_at(tmp_path)
    long_name = "é" * 200  # 400 bytes a name, each one different: about 4 MB in all
    events = [Event(event_name=f"{long_name}{i}", user_id=f"u{i}") for i in range(10_000)]
    assert await spool.accept(events) == 10_000
    after, messages = 0, 0
    while (read := await spool.read(after, 20_000, 2 * 1024 * 1024)) is not None:
        assert sum(len(b) for b in read.batches) <= 2 * 1024 * 1024
        assert all(len(b) <= MAX_ENTRY_BYTES for b in read.batches)
        after, messages = read.last, messages + 1
    assert after == 10_000 and messages > 1
    await spool.close()

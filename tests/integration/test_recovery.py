"""Recovery that loses no acknowledged event to one damaged file, on every storage backend
(a local directory, moto's S3, the GCS emulator): damaged snapshots are moved aside and
the one before plus the log used; a snapshot that does not read back deletes nothing;
damage in the middle of the log stops start-up unless the operator chooses to skip it."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from support.buckets import Bucket, gcs_bucket, local_bucket, s3_bucket
from support.in_process import crash, local_settings, running, started, stub_of
from support.metrics import samples
from support.state import feed, state_of

from kimball_grpc.app import RunningServer
from storage.blob_store import BlobStore
from storage.wal import DamagedLog


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log segment per two batches: pruning after a snapshot then removes segments, as
    64 MiB segments do under real traffic."""
    monkeypatch.setattr("storage.wal.DEFAULT_SEGMENT_BYTES", 4096)


@pytest.fixture(params=["local", "s3", "gcs"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Bucket:
    if request.param == "s3":
        return s3_bucket(request.getfixturevalue("s3_server"))
    if request.param == "gcs":
        return gcs_bucket(request.getfixturevalue("gcs_server"))
    return local_bucket(tmp_path)


async def feed_rounds(server: RunningServer, rounds: int, first: int = 0) -> None:
    """``rounds`` of four batches of fresh users (two log segments), a snapshot after each
    round but the last (the clean shutdown takes that one)."""
    async with stub_of(server) as stub:
        for round_ in range(rounds):
            for batch in range(4):
                start = first + (round_ * 4 + batch) * 100
                await feed(stub, range(start, start + 100))
            if round_ < rounds - 1:
                await server.persistence.snapshot()


def segment_names(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "wal").glob("*.wal"))


def truncated(data: bytes) -> bytes:  # an upload cut short
    return data[: len(data) // 2]


def flipped(data: bytes) -> bytes:  # one bit of the state
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def got(server: RunningServer, name: str, **labels: str) -> float:
    return samples(server.metrics.registry).get((name, tuple(sorted(labels.items()))), 0)


@pytest.mark.parametrize("kept", [1, 2], ids=["one-snapshot", "two-snapshots"])
@pytest.mark.parametrize(
    "damage", [truncated, flipped, None], ids=["truncated", "flipped", "deleted"]
)
async def test_a_damaged_newest_snapshot_loses_no_acknowledged_event(
    bucket: Bucket, tmp_path: Path, kept: int, damage, caplog
):
    settings = bucket.settings(tmp_path)
    async with running(settings) as server:
        await feed_rounds(server, kept)
        async with stub_of(server) as stub:
            before = await state_of(stub)
    snapshots = bucket.snapshots()
    assert len(snapshots) == kept
    # With two verified snapshots the log before the older one is gone: it alone is the
    # fallback. With one, the whole log stays.
    assert ("00000000000000000001.wal" in segment_names(tmp_path)) is (kept == 1)
    newest, stored = list(snapshots.items())[-1]
    if damage is None:
        bucket.delete(newest)
    else:
        bucket.put(newest, damage(stored))

    with caplog.at_level(logging.ERROR):
        server = await started(settings)
        async with stub_of(server) as stub:
            assert await state_of(stub) == before
        assert got(server, "kimball_snapshots_moved_aside_total") == (damage is not None)
        await crash(server)  # no snapshot at shutdown: the next start reads the same objects
    if damage is not None:
        reason = "truncated" if damage is truncated else "checksum mismatch"
        assert f"{newest[len(bucket.prefix) :]} cannot be used ({reason}" in caplog.text
        (moved,) = bucket.damaged().items()
        name = newest[len(bucket.prefix) + len("snapshots/") :]
        assert moved[0].startswith(f"{bucket.prefix}snapshots/damaged/{name}.")
        assert moved[1] == damage(stored)  # as found, for the operator
    assert newest not in bucket.snapshots()

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        async with running(settings) as server, stub_of(server) as stub:
            assert await state_of(stub) == before
            assert got(server, "kimball_snapshots_moved_aside_total") == 0  # not picked again
    assert "cannot be used" not in caplog.text


class TornWrites(BlobStore):
    """A blob store whose puts of snapshots store half the bytes while ``tearing``: an
    upload cut short that the backend still took."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.uri = blobs.uri
        self.tearing = True

    def put(self, key: str, data: bytes) -> None:
        torn = self.tearing and "/damaged/" not in key
        self.blobs.put(key, truncated(data) if torn else data)

    def get(self, key: str) -> bytes:
        return self.blobs.get(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.blobs.list(prefix)

    def delete(self, key: str) -> None:
        self.blobs.delete(key)


async def test_a_snapshot_that_does_not_read_back_deletes_nothing(
    bucket: Bucket, tmp_path: Path, caplog
):
    settings = bucket.settings(tmp_path)
    async with running(settings) as server:
        await feed_rounds(server, 3)  # two snapshots: the log was pruned to the older one
        await server.persistence.snapshot()
        snapshots, segments = bucket.snapshots(), segment_names(tmp_path)
        assert len(snapshots) == 2
        torn = TornWrites(server.persistence.snapshots.blobs)
        server.persistence.snapshots.blobs = torn
        await feed_rounds(server, 1, first=10_000)

        with caplog.at_level(logging.ERROR):
            await server.persistence.snapshot()

        assert got(server, "kimball_snapshots_total", result="unverified") == 1
        assert got(server, "kimball_snapshots_moved_aside_total") == 1
        assert "was stored but does not read back whole (truncated" in caplog.text
        assert bucket.snapshots() == snapshots  # nothing older deleted, the torn one aside
        assert len(bucket.damaged()) == 1
        assert segment_names(tmp_path)[: len(segments)] == segments  # no segment removed
        async with stub_of(server) as stub:
            before = await state_of(stub)
        torn.tearing = False  # the shutdown snapshot lands whole and prunes

    assert len(bucket.snapshots()) == 2 and list(bucket.snapshots()) != list(snapshots)
    async with running(settings) as server, stub_of(server) as stub:
        assert await state_of(stub) == before


async def test_only_the_number_of_snapshots_kept_are_kept(tmp_path: Path):
    settings = local_settings(tmp_path, snapshots_kept=3)
    async with running(settings) as server:
        await feed_rounds(server, 5)
    assert len(local_bucket(tmp_path).snapshots()) == 3


async def test_keeping_one_snapshot_a_damaged_one_stops_start_up_instead_of_losing_events(
    tmp_path: Path, caplog
):
    """With one snapshot kept, the log before it is gone: if it is damaged, the events it
    alone held cannot come back, and start-up says so rather than start without them."""
    settings = local_settings(tmp_path, snapshots_kept=1)
    async with running(settings) as server:
        await feed_rounds(server, 2)
    bucket = local_bucket(tmp_path)
    ((key, stored),) = bucket.snapshots().items()
    first_held = int(segment_names(tmp_path)[0][:20])
    assert first_held > 1  # the log was pruned to the newest snapshot
    bucket.put(key, flipped(stored))

    with caplog.at_level(logging.ERROR):
        async with running(settings, ready=False) as server:
            with pytest.raises(DamagedLog) as stopped:
                await server.ready
    assert (
        f"records 1 to {first_held - 1} cannot be read; start-up stops rather than lose them"
        in stopped.value.message
    )
    assert "no usable snapshot holds them" in stopped.value.message
    assert "cannot start: " in caplog.text

    skipping = replace(settings, wal_skip_damaged=True)
    async with running(skipping) as server:
        assert got(server, "kimball_wal_skipped_records_total") == first_held - 1


async def test_damage_in_the_middle_of_the_log_stops_start_up_unless_skipped(
    tmp_path: Path, caplog
):
    settings = local_settings(tmp_path)
    server = await started(settings)
    await feed_rounds(server, 1)
    async with stub_of(server) as stub:
        before = await state_of(stub)
    await crash(server)  # no snapshot: the log holds everything
    segment = tmp_path / "wal" / segment_names(tmp_path)[-1]  # two batches, the newest
    data = segment.read_bytes()
    damaged = data[:100] + bytes([data[100] ^ 0x01]) + data[101:]  # in the first batch
    segment.write_bytes(damaged)

    with caplog.at_level(logging.ERROR):
        async with running(settings, ready=False) as server:
            with pytest.raises(DamagedLog) as stopped:
                await server.ready
    assert f"{segment} is damaged at byte 0: records 268 to 400 cannot be read" in (
        stopped.value.message
    )
    assert "--wal-skip-damaged" in stopped.value.message
    assert segment.read_bytes() == damaged  # left as found: the batch after it is good

    skipping = replace(settings, wal_skip_damaged=True)
    async with running(skipping) as server, stub_of(server) as stub:
        assert got(server, "kimball_wal_skipped_records_total") == 133  # one batch
        assert server.persistence.wal.last_sequence == 534  # the batch after it is there
        after = await state_of(stub)
    assert after != before
    assert "cannot be read and are skipped (--wal-skip-damaged)" in caplog.text

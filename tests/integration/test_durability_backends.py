"""A real server snapshotting into real S3 (moto server) and GCS (gcp-storage-emulator):
restarts, the privacy rule in the bucket, and the backend going away and coming back."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.buckets import Bucket, gcs_bucket, s3_bucket
from support.in_process import running, stub_of
from support.metrics import samples
from support.polling import until
from support.state import event, feed, state_of

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb


@pytest.fixture(params=["s3", "gcs"])
def bucket(request: pytest.FixtureRequest) -> Bucket:
    if request.param == "s3":
        return s3_bucket(request.getfixturevalue("s3_server"))
    return gcs_bucket(request.getfixturevalue("gcs_server"))


async def test_snapshots_go_to_the_bucket_under_the_prefix_and_restore(
    bucket: Bucket, tmp_path: Path
):
    users = [f"private-{i}@example.org" for i in range(30)]
    async with running(bucket.settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(100))
        await stub.TrackEvents(pb.TrackEventsRequest(events=[event("view", u) for u in users]))
        before = await state_of(stub)

    stored = bucket.objects()
    assert [k for k in stored if k.endswith(".snapshot")]
    assert all(key.startswith("prod/eu/snapshots/") for key in stored)
    for key, data in stored.items():
        for user in users:
            assert user.encode() not in data, f"{user} stored in {key}"
    assert not (tmp_path / "objects").exists()  # nothing went to the local default

    async with running(bucket.settings(tmp_path)) as server, stub_of(server) as stub:
        assert await state_of(stub) == before


async def test_when_the_backend_is_down_ingestion_goes_on_and_a_snapshot_lands_later(
    bucket: Bucket, tmp_path: Path, caplog
):
    fast = replace(bucket.settings(tmp_path), snapshot_interval_s=0.1)
    async with running(fast) as server, stub_of(server) as stub:
        await feed(stub, range(20))
        bucket.server.stop()
        try:
            with caplog.at_level(logging.WARNING):
                await feed(stub, range(20, 60))  # acknowledged: the log holds it
                await until(lambda: failed_snapshots(server) >= 2, "failed snapshots", 30, 0.05)
            assert storage_up(server) == 0
            assert "cannot store a snapshot" in caplog.text
            assert "retrying in" in caplog.text
        finally:
            bucket.server.restart()
        bucket.create()  # the test servers keep nothing across a restart; a real bucket would
        target = server.persistence.wal.last_sequence
        await until(lambda: server.persistence.snapshot_sequence >= target, "a snapshot", 30, 0.05)
        assert storage_up(server) == 1
        before = await state_of(stub)

    assert [k for k in bucket.objects() if k.endswith(".snapshot")]
    (tmp_path / "wal").rename(tmp_path / "wal-gone")  # only the snapshot holds it all now
    async with running(bucket.settings(tmp_path)) as server, stub_of(server) as stub:
        assert await state_of(stub) == before


async def test_start_up_waits_for_the_backend_instead_of_starting_empty(
    bucket: Bucket, tmp_path: Path, caplog
):
    caplog.set_level(logging.WARNING)
    async with running(bucket.settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(30))
        before = await state_of(stub)
    snapshots = bucket.objects()

    bucket.server.stop()
    down = True
    try:
        async with running(bucket.settings(tmp_path), ready=False) as server:
            tried = "cannot load the newest snapshot"
            await until(lambda: tried in caplog.text, "the restore to try", 30, 0.05)
            assert not server.ready.done()  # waiting, not started empty
            bucket.server.start()
            down = False
            bucket.create()
            for key, data in snapshots.items():  # the test server lost them; put them back
                bucket.put(key, data)
            await asyncio.wait_for(server.wait_ready(), 30)
            async with stub_of(server) as stub:
                assert await state_of(stub) == before
    finally:
        if down:
            bucket.server.start()


def storage_up(server: Any) -> float | None:
    return samples(server.metrics.registry).get(("kimball_snapshot_storage_up", ()))


def failed_snapshots(server: Any) -> float:
    got = samples(server.metrics.registry)
    return got.get(("kimball_snapshots_total", (("result", "failed"),)), 0)

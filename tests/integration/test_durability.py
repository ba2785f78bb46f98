"""Durability of a real server on a real disk: restarts, damage, start-up, a full disk."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.file_modes import loosened, modes_under, not_owner_only
from support.in_process import (
    crash,
    gateway_of,
    local_settings,
    rest_client,
    running,
    started,
    stub_of,
)
from support.metrics import samples
from support.polling import until
from support.small_filesystem import fill, small_filesystem
from support.state import event, feed, state_of

from kimball_grpc.api.readiness import STARTING_MESSAGE
from kimball_grpc.app import RunningServer
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file()]


async def test_everything_acknowledged_survives_a_clean_restart(tmp_path: Path):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(200))
        await feed(stub, range(100, 150), namespace="blog")
        await stub.CreateGoal(pb.CreateGoalRequest(namespace="blog", goal_name="view"))
        before = await state_of(stub)

    assert list((tmp_path / "objects" / "snapshots").glob("*.snapshot"))  # one at shutdown
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        assert await state_of(stub) == before
        assert before["namespaces"] == ["blog", "shop"]


async def test_a_crash_before_any_snapshot_loses_nothing_acknowledged(tmp_path: Path):
    crashed = await started(local_settings(tmp_path))
    async with stub_of(crashed) as stub:
        await feed(stub, range(300))
        before = await state_of(stub)
    await crash(crashed)  # gone without a snapshot or closing its log

    assert not list(tmp_path.rglob("*.snapshot"))
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        assert await state_of(stub) == before


async def test_no_raw_user_id_is_stored_anywhere(tmp_path: Path):
    users = [f"secret-user-{i}@example.org" for i in range(20)]
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await stub.TrackEvents(pb.TrackEventsRequest(events=[event("view", u) for u in users[:10]]))
        async with gateway_of(server) as gateway, rest_client(gateway) as http:
            body = [{"event_name": "buy", "user_id": u, "ensure_goal": True} for u in users]
            async with http.post("/v0/analytics", json=body) as answer:
                assert answer.status == 204
        await server.persistence.snapshot()

    files = stored_files(tmp_path)
    assert any(p.suffix == ".wal" for p in files) and any(p.suffix == ".snapshot" for p in files)
    for path in files:
        data = path.read_bytes()
        for user in users:
            assert user.encode() not in data, f"{user} stored in {path}"


async def test_no_usable_snapshot_still_starts_with_what_the_log_holds(tmp_path: Path, caplog):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(50))
        before = await state_of(stub)
    for snapshot in tmp_path.rglob("*.snapshot"):
        snapshot.write_bytes(b"this is not a Kimball snapshot at all: " * 2)

    with caplog.at_level(logging.ERROR):
        async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
            assert await state_of(stub) == before
    assert "wrong magic bytes" in caplog.text


async def test_a_torn_log_tail_is_cut_and_the_server_starts(tmp_path: Path, caplog):
    crashed = await started(local_settings(tmp_path))
    async with stub_of(crashed) as stub:
        await feed(stub, range(40))
        before = await state_of(stub)
    await crash(crashed)
    segment = sorted((tmp_path / "wal").glob("*.wal"))[-1]
    with open(segment, "ab") as file:  # a write cut short by the crash
        file.write(b"\x40\x00\x00\x00\x12\x34")

    with caplog.at_level(logging.WARNING):
        async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
            assert await state_of(stub) == before
            await feed(stub, range(40, 45))  # and appends go on after the good part
    assert "cut a damaged or torn tail of 6 bytes" in caplog.text


async def test_until_restored_health_is_not_serving_and_calls_are_unavailable(tmp_path: Path):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(30))  # global, view and buy counters: three pauses
        before = await state_of(stub)

    slow = local_settings(tmp_path, counter_startup_delay_ms=300)
    started = time.monotonic()
    async with (
        running(slow, ready=False) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = pb_grpc.KimballServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.TrackEvent(pb.TrackEventRequest(event=event("view", "late")))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == STARTING_MESSAGE

        async with gateway_of(server) as gateway, rest_client(gateway) as http:
            async with http.get("/alive") as alive, http.get("/ready") as ready:
                assert (alive.status, ready.status) == (200, 503)
            async with http.post("/v0/analytics", json={"event_name": "a"}) as post:
                assert post.status == 503
                assert (await post.json())["error"]["what"] == STARTING_MESSAGE

        await server.wait_ready()
        assert time.monotonic() - started >= 3 * 0.3  # counter_startup_delay per counter
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert await state_of(stub) == before


async def test_a_full_disk_refuses_events_changes_nothing_and_recovers(tmp_path: Path):
    with small_filesystem(tmp_path / "disk", size="4m") as disk:
        async with running(local_settings(disk)) as server, stub_of(server) as stub:
            await feed(stub, range(20))
            before = await state_of(stub)
            filler = fill(disk)

            with pytest.raises(grpc.aio.AioRpcError) as refused:  # more than a page
                await feed(stub, range(20, 1000))
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == (
                "write-ahead log: cannot write: No space left on device; nothing was applied"
            )  # what happened, never where: no path of this server
            async with gateway_of(server) as gateway, rest_client(gateway) as http:
                body = [
                    {"event_name": "view", "user_id": f"u{i}", "namespace": "shop"}
                    for i in range(500)
                ]
                async with http.post("/v0/analytics", json=body) as post:
                    assert post.status == 503
                    what = (await post.json())["error"]["what"]
                    assert "No space left on device" in what
                    assert str(disk) not in what
            assert await state_of(stub) == before  # nothing half-applied

            filler.unlink()  # space is back
            await feed(stub, range(20, 1000))
            after = await state_of(stub)
            assert after != before

        async with running(local_settings(disk)) as server, stub_of(server) as stub:
            assert await state_of(stub) == after


async def test_a_disk_full_midway_through_a_stream_keeps_the_messages_before_it_only(
    tmp_path: Path,
):
    # A stream's next messages are queued for the log while the last one is written: when
    # the disk refuses one, none after it may be written in its place.
    with small_filesystem(tmp_path / "disk", size="4m") as disk:
        async with running(local_settings(disk)) as server, stub_of(server) as stub:
            await feed(stub, range(5))
            filler = fill(disk)
            os.truncate(filler, filler.stat().st_size - 64 * 1024)  # room for a few messages

            async def messages():
                for i in range(1000):
                    users = range(i * 20, i * 20 + 20)
                    yield pb.TrackEventsRequest(
                        events=[pb.Event(event_name=f"m{i}", user_id=f"u{u}") for u in users]
                    )

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.StreamEvents(messages())
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "No space left on device" in refused.value.details()
            response = await stub.GetAnalytics(pb.GetAnalyticsRequest())
            applied = sorted(int(c.name[1:]) for c in response.counts if c.name.startswith("m"))
            assert 0 < len(applied) < 1000
            assert applied == list(range(len(applied)))  # the messages before the refused one


async def test_snapshots_are_taken_periodically_and_old_ones_pruned(tmp_path: Path):
    async with running(local_settings(tmp_path, snapshot_interval_s=0.05)) as server:
        async with stub_of(server) as stub:
            for round_ in range(5):
                await feed(stub, range(round_ * 10, round_ * 10 + 10))
                target = server.persistence.wal.last_sequence
                await until(
                    lambda target=target: server.persistence.snapshot_sequence >= target,
                    "a periodic snapshot",
                    timeout=10,
                )
        assert len(list((tmp_path / "objects" / "snapshots").glob("*.snapshot"))) == 2


async def test_the_log_and_snapshots_show_in_the_metrics(tmp_path: Path):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(30))  # 40 events in one batch
        await stub.CreateGoal(pb.CreateGoalRequest(namespace="shop", goal_name="view"))
        await server.persistence.snapshot()
        got = samples(server.metrics.registry)

    assert got[("kimball_wal_last_sequence", ())] == 41
    assert got[("kimball_wal_segments", ())] == 1
    assert got[("kimball_wal_fsyncs_total", ())] == 2
    assert got[("kimball_wal_refused_appends_total", ())] == 0
    assert got[("kimball_snapshots_total", (("result", "ok"),))] == 1
    assert got[("kimball_snapshot_last_sequence", ())] == 41
    assert got[("kimball_persist_counters_managed", ())] == 3  # global, view, buy


async def test_subscribers_see_log_sequence_numbers_that_go_on_across_restarts(tmp_path: Path):
    async def first_sequence_after_tracking(server: RunningServer) -> int:
        async with stub_of(server) as stub:
            subscription = stub.Subscribe(pb.SubscribeRequest(namespace="shop"))
            got = asyncio.ensure_future(subscription.read())
            while not got.done():  # the subscription registers asynchronously
                await feed(stub, range(3))
                await asyncio.wait([got], timeout=0.05)
            subscription.cancel()
            return got.result().sequence

    async with running(local_settings(tmp_path)) as server:
        before = await first_sequence_after_tracking(server)
        last = server.persistence.wal.last_sequence
    async with running(local_settings(tmp_path)) as server:
        after = await first_sequence_after_tracking(server)

    assert before >= 1 and after > last >= before


async def read_replay(stub, request: pb.SubscribeRequest, count: int) -> list[pb.SubscribeResponse]:
    """The first ``count`` answers of a subscription, then cancel it."""
    call = stub.Subscribe(request)
    got = [await asyncio.wait_for(call.read(), 10) for _ in range(count)]
    call.cancel()
    return got


async def test_a_subscriber_resumes_from_the_log_then_goes_on_live(tmp_path: Path):
    from kimball_grpc.core.bloom import hash_key

    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        for user in ("a", "b", "c", "d"):
            await stub.TrackEvent(pb.TrackEventRequest(event=event("view", user)))
        await stub.CreateGoal(pb.CreateGoalRequest(namespace="shop", goal_name="view"))
        await stub.TrackEvent(pb.TrackEventRequest(event=event("view", "other", "blog")))
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        call = stub.Subscribe(pb.SubscribeRequest(namespace="shop", after_sequence=2))
        replayed = [await asyncio.wait_for(call.read(), 10) for _ in range(2)]
        await stub.TrackEvent(pb.TrackEventRequest(event=event("buy", "e", value=3.0)))
        live = await asyncio.wait_for(call.read(), 10)
        call.cancel()

    # Records 3 and 4 from the log (the goal is 5, the blog event 6: not events of "shop").
    assert [(r.sequence, r.replayed, r.event.event_name) for r in replayed] == [
        (3, True, "view"),
        (4, True, "view"),
    ]
    assert [r.event.user_id for r in replayed] == ["", ""]  # the log keeps no user id
    assert [r.user_hash for r in replayed] == [hash_key(u).digest.hex() for u in ("c", "d")]
    assert (live.sequence, live.replayed, live.event.user_id) == (7, False, "e")
    assert live.user_hash == hash_key("e").digest.hex()


async def test_resuming_from_a_position_the_log_no_longer_holds_is_out_of_range(tmp_path):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(10))
    (tmp_path / "wal").rename(tmp_path / "wal-gone")  # the snapshot holds it all, the log not
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(10, 12))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read_replay(stub, pb.SubscribeRequest(after_sequence=1), 1)
        assert refused.value.code() is grpc.StatusCode.OUT_OF_RANGE
        assert "no longer holds record 2" in refused.value.details()
        # From where the log starts, it works.
        first = server.persistence.snapshot_sequence
        got = await read_replay(stub, pb.SubscribeRequest(after_sequence=first), 1)
        assert got[0].sequence == first + 1 and got[0].replayed


async def test_every_file_and_directory_kimball_keeps_is_its_owners_only(tmp_path: Path, caplog):
    data_dir = tmp_path / "data"  # Kimball makes it
    async with running(local_settings(data_dir)) as server, stub_of(server) as stub:
        await feed(stub, range(50))
        await server.persistence.snapshot()
        await feed(stub, range(50, 60))
    newest = sorted((data_dir / "objects" / "snapshots").glob("*.snapshot"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # to be moved aside at the next start
    async with running(local_settings(data_dir, api_auth=True)):  # generates a token
        pass

    modes = modes_under(data_dir)
    assert {"wal", "objects/snapshots/damaged", "api-token"} <= modes.keys()
    assert any(p.endswith(".wal") for p in modes) and any(p.endswith(".snapshot") for p in modes)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert not_owner_only(data_dir) == {}

    loosened(data_dir)  # as an earlier version left them
    with caplog.at_level(logging.WARNING):
        async with running(local_settings(data_dir, api_auth=True)):
            pass
    assert not_owner_only(data_dir) == {}
    assert f"{data_dir / 'wal'}: made " in caplog.text
    assert f"{data_dir / 'objects'}: made " in caplog.text

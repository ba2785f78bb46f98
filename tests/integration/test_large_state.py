"""Work that grows with the state, done in steps between requests: snapshots taken while
events keep arriving are exact, shutdown does not wait for a snapshot it cannot finish in
time and loses nothing, and answers larger than one step come back whole."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from support.in_process import gateway_of, local_settings, rest_client, running, stub_of
from support.state import event, feed, state_of

from kimball_grpc import persistence
from kimball_grpc.codec.state_codec import decode_records, decode_state
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event
from kimball_grpc.core.steps import ITEMS_PER_STEP
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from storage.snapshots import decode_snapshot
from storage.wal import FsyncPolicy, WriteAheadLog

NAMES = 3 * ITEMS_PER_STEP + 17  # an answer or a snapshot of several steps


def view(engine: Engine) -> dict:
    """Everything an engine holds, comparable across engines."""
    out: dict = {"flags": (engine.flags.listed(), engine.flags.version)}
    for ns in engine.namespaces():
        out[ns] = (
            engine.goals(ns),
            sorted(
                (
                    c.name,
                    c.kind.value,
                    c.iso_year,
                    c.iso_week,
                    c.count,
                    c.value_sum,
                    sorted(c.event_counts.items()),
                    sorted(c.single_event_counts.items()),
                    [(s.bits, s.items, s.data) for s in c.filter.slice_states()],
                )
                for c in engine.counters(ns)
            ),
        )
    return out


def replayed_up_to(wal_dir: Path, sequence: int) -> Engine:
    """A fresh engine with every logged record up to ``sequence`` applied, and none after."""
    engine = Engine()
    wal = WriteAheadLog(wal_dir)
    wal.open()
    for entry in wal.entries():
        for number, record in enumerate(decode_records(entry.payload), start=entry.sequence):
            if number <= sequence:
                engine.apply(record)
    return engine


async def test_snapshots_taken_while_events_keep_arriving_hold_exactly_the_records_up_to_theirs(
    tmp_path: Path,
):
    # fsync never: each batch is applied within a few turns of the event loop, so batches
    # land between the snapshot's steps (20 or so), in counters read and not read yet.
    settings = local_settings(tmp_path, wal_fsync=FsyncPolicy.NEVER, snapshots_kept=3)
    async with running(settings) as server, stub_of(server) as stub:
        names = [event(f"name-{i}", f"user-{i % 40}", "big") for i in range(10 * NAMES)]
        await stub.TrackEvents(pb.TrackEventsRequest(events=names))
        for n in range(0, 300, 10):  # many namespaces, read one after another
            await feed(stub, range(n, n + 10), namespace=f"ns-{n}")
        stop = asyncio.Event()

        async def traffic() -> None:  # new users, names, namespaces and goals, all the time
            accept, i = server.ingestor.accept, 0
            while not stop.is_set():
                await accept([Event("view", f"late-{i}", f"ns-{i % 310}", value=1.0)])
                await accept([Event(f"new-{i}", f"late-{i}", f"ns-{(i % 30) * 10}")])
                await accept([Event(f"name-{i % (12 * NAMES)}", f"late-{i}", "big")])
                await accept([Event(f"new-{i}", f"late-{i}", "big")])
                await accept([Event(f"name-{i % 50}", f"late-{i}", "big", ensure_goal=True)])
                await server.ingestor.create_goal(f"ns-{i % 300}", f"goal-{i % 7}")
                i += 1

        sending = asyncio.ensure_future(traffic())
        arrived_during = []
        for _ in range(3):
            await feed(stub, range(1000, 1010))  # something new for each snapshot
            await server.persistence.snapshot()
            arrived_during.append(
                server.persistence.wal.last_sequence - server.persistence.snapshot_sequence
            )
        stop.set()
        await sending
        server.persistence.snapshot_sequence = server.persistence.wal.last_sequence  # no more

    assert all(arrived_during), "records must arrive while a snapshot is being taken"
    snapshots = sorted((tmp_path / "objects" / "snapshots").glob("*.snapshot"))
    assert len(snapshots) == 3
    for path in snapshots:
        sequence, state = decode_snapshot(path.read_bytes())
        assert view(decode_state(state)) == view(replayed_up_to(tmp_path / "wal", sequence))


async def many_names(stub) -> None:
    """A namespace of ``NAMES`` counters: encoding it takes several steps."""
    names = [event(f"name-{i}", "someone", "big") for i in range(NAMES)]
    await stub.TrackEvents(pb.TrackEventsRequest(events=names))


@pytest.fixture
def bound(monkeypatch, caplog) -> float:
    """A bound on encoding the last snapshot that the states below take longer than."""
    caplog.set_level(logging.INFO, logger="kimball_grpc.persistence")
    monkeypatch.setattr(persistence, "SHUTDOWN_ENCODING_SECONDS", 0.001)
    return 0.001


async def test_shutdown_takes_no_snapshot_it_cannot_finish_in_time_and_loses_nothing(
    tmp_path: Path, bound: float, caplog
):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await many_names(stub)
        await feed(stub, range(50))
        before = await state_of(stub)
        last = server.persistence.wal.last_sequence

    assert not list(tmp_path.rglob("*.snapshot"))
    assert f"not encoded in {bound:g} s; the next start replays records 1 to {last}" in caplog.text
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        assert await state_of(stub) == before


async def test_shutdown_skips_the_snapshot_when_the_last_one_took_longer_than_allowed(
    tmp_path: Path, bound: float, caplog
):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await many_names(stub)
        await server.persistence.snapshot()  # encoded in several steps: longer than the bound
        stored = server.persistence.snapshot_sequence
        await feed(stub, range(50, 80))
        before = await state_of(stub)
        last = server.persistence.wal.last_sequence

    assert len(list(tmp_path.rglob("*.snapshot"))) == 1
    assert (
        f"no snapshot at shutdown: the last one took {server.persistence.last_encoding_seconds:.1f}"
        f" s to encode, more than the {bound:g} s allowed; the next start replays records "
        f"{stored + 1} to {last} from the write-ahead log"
    ) in caplog.text
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        assert await state_of(stub) == before


async def test_a_snapshot_in_progress_at_shutdown_is_abandoned_and_the_engine_thawed(
    tmp_path: Path, bound: float
):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await many_names(stub)
        before = await state_of(stub)
        taking = asyncio.ensure_future(server.persistence.snapshot())
        await asyncio.sleep(0)  # it froze the engine and encodes its first step
        taking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taking
        server.engine.freeze()  # not frozen any more: a new snapshot can start
        server.engine.thaw()

    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        assert await state_of(stub) == before


async def test_an_answer_of_many_counters_comes_back_whole_over_grpc_and_rest(tmp_path: Path):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await stub.CreateGoal(pb.CreateGoalRequest(namespace="big", goal_name="name-7"))
        events = [event(f"name-{i}", f"user-{i % 3}", "big", value=float(i)) for i in range(NAMES)]
        events.append(event("name-7", "user-1", "big"))  # a goal with prior events
        await stub.TrackEvents(pb.TrackEventsRequest(events=events))

        answer = await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace="big"))
        async with (
            gateway_of(server) as gateway,
            rest_client(gateway) as http,
            http.get("/v0/analytics", params={"namespace": "big"}) as response,
        ):
            assert response.status == 200
            body = await response.json()

    names = sorted(f"name-{i}" for i in range(NAMES))
    assert [c.name for c in answer.counts] == ["global_counter", *names]
    assert [c["name"] for c in body["counts"]] == ["global_counter", *names]
    by_name = {c["name"]: c for c in body["counts"]}
    for counter in answer.counts[1:]:
        i = int(counter.name.split("-")[1])
        assert (counter.count, counter.value.sum, counter.goal) == (1, float(i), i == 7)
        assert by_name[counter.name]["count"] == 1
        assert by_name[counter.name]["value"] == {"sum": float(i)}
    goal = by_name["name-7"]  # user-1 did name-1 and name-4 before it
    assert goal["event_counts"] == [{"events": ["name-1", "name-4"], "count": 1}]
    assert goal["single_event_counts"] == [
        {"name": "name-1", "count": 1},
        {"name": "name-4", "count": 1},
    ]

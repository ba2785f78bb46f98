"""Cluster mode's event log on a real 3-node NATS JetStream cluster on loopback: events sent
over REST and gRPC to two replicas are applied by each replica's partition engines, each user
in its own partition; a NATS node killed during ingest loses no acknowledged event; a
restarted replica loads its partition snapshots and replays the stream to the same counts;
a stream made with another partition count stops a replica at start."""

from __future__ import annotations

import asyncio

import nats
import pytest
from support.cluster_replicas import (
    PARTITIONS,
    applied,
    events,
    expected_counts,
    ingest_acknowledged,
    replica,
    send_grpc,
    send_rest,
)
from support.in_process import running, stub_of
from support.polling import until

from kimball_grpc.cluster.event_log import STREAM
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.events import Event
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

# The NATS cluster (one per module) and ``fresh_stream`` come from conftest.py.
pytestmark = pytest.mark.xdist_group("nats-cluster")


async def test_events_over_rest_and_grpc_reach_the_owners_partitions(fresh_stream, tmp_path):
    by_rest, by_grpc = events("rest", 150), events("grpc", 150)
    async with (
        running(replica(fresh_stream, tmp_path, "replica-a")) as a,
        running(replica(fresh_stream, tmp_path, "replica-b")) as b,
    ):
        await asyncio.gather(send_rest(a, by_rest), send_grpc(b, by_grpc))
        want = expected_counts(by_rest + by_grpc)
        assert len(want) == PARTITIONS  # the users are spread over every partition
        await until(lambda: applied(a) | applied(b) == want, "all applied by the owners", 20)
        async with stub_of(a) as stub:
            await stub.CreateGoal(pb.CreateGoalRequest(namespace="shop", goal_name="buy"))

        def goal_everywhere() -> bool:
            return all(
                state.engine.goals("shop") == ["buy"]
                for server in (a, b)
                for state in server.partitions.states.values()
            )

        await until(goal_everywhere, "the goal in every partition of both replicas", 20)


async def test_batches_sent_at_once_share_the_partitions_messages(fresh_stream, tmp_path):
    batches = [events(f"c{i}", 100) for i in range(20)]
    async with running(replica(fresh_stream, tmp_path, "replica-a")) as a:
        await asyncio.gather(*(send_grpc(a, batch) for batch in batches))
        everything = [event for batch in batches for event in batch]
        await until(lambda: applied(a) == expected_counts(everything), "all applied", 20)
        connection = await nats.connect(fresh_stream.urls)
        try:
            stored = (await connection.jetstream().stream_info(STREAM)).state.messages
        finally:
            await connection.close()
    # One message per partition per batch would be 20 x 8: the batches that came while a
    # group was being published went together, one message per partition.
    assert stored < len(batches) * PARTITIONS / 2


async def test_a_nats_node_killed_during_ingest_loses_no_acknowledged_event(fresh_stream, tmp_path):
    acknowledged: list[Event] = []
    # A lease long enough that the NATS client's reconnection never lapses it.
    settings = replica(fresh_stream, tmp_path, "replica-a", lease_seconds=10.0)
    async with running(settings) as a, stub_of(a) as stub:
        ingesting = asyncio.ensure_future(ingest_acknowledged(stub, acknowledged, 60))
        await until(lambda: len(acknowledged) >= 200, "some events acknowledged", 20)
        await asyncio.to_thread(fresh_stream.kill, 0)
        await ingesting
        assert len(acknowledged) >= 600  # most went on while one NATS node was down
        want = expected_counts(acknowledged)
        await until(
            lambda: all(
                applied(a).get(p, {}).get(name, 0) >= count
                for p, names in want.items()
                for name, count in names.items()
            ),
            "every acknowledged event applied, one NATS node still down",
            30,
        )
        await asyncio.to_thread(fresh_stream.restart, 0)


async def test_a_restarted_replica_loads_its_snapshots_and_replays_the_rest(fresh_stream, tmp_path):
    settings = replica(fresh_stream, tmp_path, "replica-a")
    first, second = events("first", 120), events("second", 120)
    async with running(settings) as a:
        await send_grpc(a, first)
        want = expected_counts(first)
        await until(lambda: applied(a) == want, "the first events applied", 20)
        assert await a.partitions.snapshot() == PARTITIONS
        await send_grpc(a, second)
        want = expected_counts(first + second)
        await until(lambda: applied(a) == want, "the second events applied", 20)
        sequences = {p: s.sequence for p, s in a.partitions.states.items()}
        snapshotted = {p: s.snapshot_sequence for p, s in a.partitions.states.items()}
        await a.partitions.stop()  # as if killed: no snapshot at shutdown
    async with running(settings) as again:
        await until(lambda: applied(again) == want, "snapshots plus the stream replayed", 20)
        assert {p: s.snapshot_sequence for p, s in again.partitions.states.items()} == (snapshotted)
        assert {p: s.sequence for p, s in again.partitions.states.items()} == sequences


async def test_a_stream_of_another_partition_count_stops_the_replica(fresh_stream, tmp_path):
    async with running(replica(fresh_stream, tmp_path, "replica-a")):
        pass
    with pytest.raises(ConfigError) as info:
        async with running(replica(fresh_stream, tmp_path, "replica-b", partitions=16)):
            pass
    assert "created with 8 partitions" in info.value.message
    assert "--partitions" in info.value.message

"""A replica starting while its NATS cluster has no JetStream quorum (two of three servers
down, or a restarted server's buckets electing their leaders): its stream, buckets and
membership wait and start once they answer, or fails after its start time naming the buckets,
rather than crashing on the first timeout. A real 3-node NATS cluster on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest
from support.cluster_replicas import replica
from support.in_process import stub_of
from support.nats_cluster import NatsCluster
from support.polling import until

from kimball_grpc.app import start_replica
from kimball_grpc.cluster.jetstream_start import JetStreamUnavailable
from kimball_grpc.cluster.membership import Membership
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

pytestmark = pytest.mark.xdist_group("nats-cluster")
PARTITIONS = 4


@pytest.fixture
def nats_cluster(tmp_path) -> Iterator[NatsCluster]:
    cluster = NatsCluster.create(tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def membership(connection, start_seconds: float) -> Membership:
    return Membership(
        connection, "replica-a", "127.0.0.1:1", PARTITIONS, 2.0, 3, start_seconds=start_seconds
    )


async def test_a_replica_waits_for_the_quorum_and_then_takes_its_partitions(nats_cluster):
    nats_cluster.kill(1)
    nats_cluster.kill(2)
    connection = await nats.connect(nats_cluster.urls[0])
    member = membership(connection, start_seconds=60)
    try:
        starting = asyncio.ensure_future(member.start())
        await asyncio.sleep(1)  # the buckets do not answer meanwhile
        assert not starting.done()
        # New buckets of 3 replicas: placed once 3 servers are up.
        await asyncio.to_thread(nats_cluster.restart, 1)
        await asyncio.to_thread(nats_cluster.restart, 2)
        await starting
        await until(lambda: len(member.owned()) == PARTITIONS, "every partition owned", 30)
    finally:
        await member.stop()
        await connection.close()


async def test_without_a_quorum_the_start_fails_naming_the_buckets(nats_cluster):
    nats_cluster.kill(1)
    nats_cluster.kill(2)
    connection = await nats.connect(nats_cluster.urls[0])
    try:
        with pytest.raises(JetStreamUnavailable) as info:
            await membership(connection, start_seconds=1).start()
        assert "kimball_members" in str(info.value)
        assert "quorum" in str(info.value)
    finally:
        await connection.close()


async def test_a_whole_replica_waits_for_the_quorum_then_serves(nats_cluster, tmp_path):
    """The stream, the spec and name buckets and the membership all wait: a replica started
    while two of three servers are down serves once they are back (a new stream of 3
    replicas is placed on 3 servers)."""
    nats_cluster.kill(1)
    nats_cluster.kill(2)
    starting = asyncio.ensure_future(start_replica(replica(nats_cluster, tmp_path, "replica-a")))
    try:
        await asyncio.sleep(1)  # the stream does not answer meanwhile
        assert not starting.done()
        await asyncio.to_thread(nats_cluster.restart, 1)
        await asyncio.to_thread(nats_cluster.restart, 2)
        server = await starting
    except BaseException:
        starting.cancel()
        raise
    try:
        await server.wait_ready()
        async with stub_of(server) as stub:
            await stub.TrackEvents(
                pb.TrackEventsRequest(events=[pb.Event(event_name="view", user_id="u")])
            )
    finally:
        await server.stop(grace=None)

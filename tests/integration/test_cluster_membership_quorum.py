"""A replica starting while its NATS cluster has no JetStream quorum (two of three servers
down, or a restarted server's buckets electing their leaders): its membership waits for the
buckets and starts once they answer, or fails after its start time naming the buckets,
rather than crashing on the first timeout. A real 3-node NATS cluster on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest
from support.nats_cluster import NatsCluster
from support.polling import until

from kimball_grpc.cluster.membership import BucketsUnavailable, Membership

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
        await asyncio.to_thread(nats_cluster.restart, 1)
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
        with pytest.raises(BucketsUnavailable) as info:
            await membership(connection, start_seconds=1).start()
        assert "kimball_members" in str(info.value)
        assert "quorum" in str(info.value)
    finally:
        await connection.close()

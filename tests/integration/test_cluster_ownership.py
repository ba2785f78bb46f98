"""Partition ownership in cluster mode, on a real 3-node NATS JetStream cluster on loopback:
replicas split the partitions and each is applied by exactly one; a joining replica takes
its share from the previous owners' snapshots plus the stream; a replica stopped cleanly
hands its partitions over with its last snapshots; a replica whose lease is lost stops
applying and another takes its partitions over; one with another lease is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from support.cluster_replicas import (
    PARTITIONS,
    SHORT_LEASE_SECONDS,
    applied,
    as_request,
    counts,
    events,
    expected_counts,
    replica,
)
from support.in_process import running, started, stub_of
from support.metrics import samples
from support.polling import until

from kimball_grpc.cluster.membership import MEMBERS_BUCKET, PARTITIONS_BUCKET
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.events import iso_week, prepare_events
from kimball_grpc.core.partition_assignment import owned_by

# The NATS cluster (one per module) and ``fresh_stream`` come from conftest.py.
pytestmark = pytest.mark.xdist_group("nats-cluster")

TIMEOUT = 30.0  # a shared, loaded machine: generous, polled


async def send(server, batch) -> None:
    async with stub_of(server) as stub:
        await stub.TrackEvents(as_request(batch))


@contextlib.asynccontextmanager
async def two_replicas(cluster, data_dir, **fields: object) -> AsyncIterator[tuple[object, object]]:
    """replica-a and replica-b (with more settings ``fields``), once they have split the
    partitions between them."""
    async with (
        running(replica(cluster, data_dir, "replica-a", **fields)) as a,
        running(replica(cluster, data_dir, "replica-b", **fields)) as b,
    ):
        servers = {"replica-a": a, "replica-b": b}
        await until(lambda: split(servers), "two replicas to split the partitions", TIMEOUT)
        yield a, b


def split(servers: dict[str, object]) -> bool:
    """Whether the replicas apply exactly their rendezvous shares, every partition once."""
    ids = list(servers)
    return all(
        set(server.partitions.states) == owned_by(name, ids, PARTITIONS)
        for name, server in servers.items()
    )


async def holders(cluster) -> set[str]:
    """The replicas with a member key or a partition claim in the buckets now."""
    import nats
    from nats.js.errors import NoKeysError

    connection = await nats.connect(cluster.urls)
    try:
        js = connection.jetstream()
        found = set()
        for bucket in (MEMBERS_BUCKET, PARTITIONS_BUCKET):
            kv = await js.key_value(bucket)
            with contextlib.suppress(NoKeysError):  # an empty bucket
                for key in await kv.keys():
                    found.add(json.loads((await kv.get(key)).value)["replica_id"])
        return found
    finally:
        await connection.close()


def one_engine(sent) -> dict[str, int]:
    """The counts of one engine fed ``sent`` (a single node's)."""
    engine = Engine()
    for record in prepare_events(sent, iso_week(datetime.now(UTC))):
        engine.apply(record)
    return counts(engine)


def metric(server, name: str, **labels: str) -> float:
    return samples(server.metrics.registry).get((name, tuple(sorted(labels.items()))), 0.0)


def address(server) -> str:
    return server.membership.address


async def test_two_replicas_split_the_partitions_and_together_count_as_one(fresh_stream, tmp_path):
    sent = events("split", 300)
    async with two_replicas(fresh_stream, tmp_path) as (a, b):
        await asyncio.gather(send(a, sent[:150]), send(b, sent[150:]))
        want = expected_counts(sent)
        assert len(want) == PARTITIONS
        await until(lambda: applied(a) | applied(b) == want, "every event applied", TIMEOUT)
        # Each partition applied by exactly one replica, and both have some.
        assert applied(a) and applied(b) and not applied(a).keys() & applied(b).keys()
        # Together they count each user once, as one engine fed the same events.
        together: Counter[str] = Counter()
        for counts in (applied(a) | applied(b)).values():
            together.update(counts)
        assert together == Counter(one_engine(sent))
        # Both name the owner of every partition by its gRPC address, for the queries.
        owners = {p: address(a) for p in a.partitions.states}
        owners |= {p: address(b) for p in b.partitions.states}
        await until(
            lambda: a.membership.owners() == owners == b.membership.owners(),
            "both replicas to see the same owners",
            TIMEOUT,
        )
        assert address(a) == f"127.0.0.1:{a.front.port}"  # the default: where it listens
        for server in (a, b):
            assert metric(server, "kimball_partitions_owned") == len(server.partitions.states)


async def test_a_joining_replica_takes_its_partitions_from_snapshots_and_the_stream(
    fresh_stream, tmp_path
):
    first, second = events("first", 200), events("second", 200)
    async with two_replicas(fresh_stream, tmp_path) as (a, b):
        servers = {"replica-a": a, "replica-b": b}
        await send(a, first)
        want = expected_counts(first)
        await until(lambda: applied(a) | applied(b) == want, "the first events", TIMEOUT)
        snapshotted = {p: s.sequence for s_ in (a, b) for p, s in s_.partitions.states.items()}
        assert await a.partitions.snapshot() + await b.partitions.snapshot() == PARTITIONS
        await send(b, second)  # after the snapshots: replayed from the stream
        want = expected_counts(first + second)
        await until(lambda: applied(a) | applied(b) == want, "the second events", TIMEOUT)

        def lost() -> float:
            return sum(metric(s, "kimball_partition_moves_total", direction="lost") for s in (a, b))

        lost_before = lost()
        async with running(replica(fresh_stream, tmp_path, "replica-c")) as c:
            servers["replica-c"] = c
            await until(lambda: split(servers), "the partitions to move to replica-c", TIMEOUT)
            moved = owned_by("replica-c", list(servers), PARTITIONS)
            assert moved
            await until(
                lambda: applied(a) | applied(b) | applied(c) == want,
                "the moved partitions' counts on replica-c",
                TIMEOUT,
            )
            # Answered from once caught up; a partition it does not own, never.
            assert all(c.partitions.caught_up(p) is c.partitions.states[p].engine for p in moved)
            assert c.partitions.caught_up(min(set(range(PARTITIONS)) - moved)) is None
            # Loaded from the previous owners' snapshots, then the stream replayed.
            assert {p: c.partitions.states[p].snapshot_sequence for p in moved} == {
                p: snapshotted[p] for p in moved
            }
            assert metric(c, "kimball_partition_moves_total", direction="gained") == len(moved)
            assert lost() - lost_before == len(moved)
            assert metric(c, "kimball_partition_takeover_seconds_count") == len(moved)


async def test_a_replica_stopped_cleanly_hands_its_partitions_over_with_its_last_snapshots(
    fresh_stream, tmp_path
):
    sent = events("stop", 200)
    async with running(replica(fresh_stream, tmp_path, "replica-a")) as a:
        b = await started(replica(fresh_stream, tmp_path, "replica-b"))
        try:
            servers = {"replica-a": a, "replica-b": b}
            await until(lambda: split(servers), "two replicas to split the partitions", TIMEOUT)
            await send(a, sent)
            want = expected_counts(sent)
            await until(lambda: applied(a) | applied(b) == want, "every event", TIMEOUT)
            handed = {p: s.sequence for p, s in b.partitions.states.items()}
        finally:
            await b.stop()  # with grace: a last snapshot of each partition, then released
        # Its member key and claims are deleted, not left to expire: no lease to wait for.
        assert await holders(fresh_stream) == {"replica-a"}
        await until(lambda: set(a.partitions.states) == set(range(PARTITIONS)), "a", TIMEOUT)
        await until(lambda: applied(a) == want, "replica-b's partitions on replica-a", TIMEOUT)
        # From replica-b's last snapshots: nothing left to replay.
        assert {p: a.partitions.states[p].snapshot_sequence for p in handed} == handed


async def test_a_replica_whose_lease_is_lost_stops_applying_and_is_taken_over(
    fresh_stream, tmp_path, monkeypatch
):
    first, second = events("before", 200), events("after", 200)
    short = {"lease_seconds": SHORT_LEASE_SECONDS}
    async with two_replicas(fresh_stream, tmp_path, **short) as (a, b):
        await send(a, first)
        await until(lambda: applied(a) | applied(b) == expected_counts(first), "the first", TIMEOUT)
        frozen = applied(b)
        assert frozen
        # replica-b's renewals hang (as on a connection cut, or a long pause), while its
        # consumers still receive messages.
        unblock = asyncio.Event()

        async def hang(*args, **kwargs):
            await unblock.wait()
            raise ConnectionError("renewal blocked by the test")

        monkeypatch.setattr(b.membership._members_kv, "update", hang)
        try:
            await until(lambda: not b.membership.may_apply(min(frozen)), "the lease to lapse", 10)
            await send(a, second)
            want = expected_counts(first + second)
            await until(
                lambda: set(a.partitions.states) == set(range(PARTITIONS)),
                "replica-a to take every partition over",
                TIMEOUT,
            )
            await until(lambda: applied(a) == want, "every event, on replica-a", TIMEOUT)
            # replica-b applied none of the second events, and keeps no partition.
            assert not b.partitions.states
            assert metric(b, "kimball_lease_losses_total") == 1
            assert metric(b, "kimball_partitions_owned") == 0
            assert await b.partitions.snapshot() == 0
        finally:
            unblock.set()


async def test_a_replica_with_another_lease_is_refused_at_start_and_changes_nothing(
    fresh_stream, tmp_path
):
    async with running(replica(fresh_stream, tmp_path, "replica-a")) as a:
        await until(lambda: split({"replica-a": a}), "replica-a to own everything", TIMEOUT)
        with pytest.raises(ConfigError) as info:
            async with running(replica(fresh_stream, tmp_path, "replica-b", lease_seconds=3)):
                pass
        assert "--lease-seconds is 3: every replica must use the same lease" in str(info.value)
        assert await holders(fresh_stream) == {"replica-a"}
        assert split({"replica-a": a})

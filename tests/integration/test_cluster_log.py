"""Cluster mode's event log on a real 3-node NATS JetStream cluster on loopback: events sent
over REST and gRPC to two replicas are applied by each replica's partition engines, each user
in its own partition; a NATS node killed during ingest loses no acknowledged event; a
restarted replica loads its partition snapshots and replays the stream to the same counts;
a stream made with another partition count stops a replica at start."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from support.in_process import gateway_of, local_settings, rest_client, running, stub_of
from support.nats_cluster import NatsCluster
from support.polling import until

from kimball_grpc.cluster.event_log import split_by_partition
from kimball_grpc.config.settings import Settings
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.events import Event, iso_week, prepare_events
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

PARTITIONS = 8
# One NATS cluster for the module: each test uses its own stream (deleted first).
pytestmark = pytest.mark.xdist_group("nats-cluster")


def replica(cluster: NatsCluster, data_dir: Path, name: str, **fields: object) -> Settings:
    cluster_fields = {
        "nats_urls": tuple(cluster.urls),
        "replica_id": name,
        "partitions": PARTITIONS,
        "nats_stream_replicas": 3,
    }
    return local_settings(data_dir, **(cluster_fields | fields))


def events(prefix: str, count: int) -> list[Event]:
    """``count`` events of distinct users, of two names, in namespace ``shop``."""
    return [
        Event("view" if i % 3 else "buy", f"{prefix}-user-{i}", "shop", None, None, False)
        for i in range(count)
    ]


def expected_counts(sent: list[Event]) -> dict[int, dict[str, int]]:
    """Each partition's counters (name: unique users), as one engine per partition holds
    them after applying the events of its users."""
    records = prepare_events(sent, iso_week(datetime.now(UTC)))
    out = {}
    for partition, part in split_by_partition(records, PARTITIONS).items():
        engine = Engine()
        for record in part:
            engine.apply(record)
        out[partition] = counts(engine)
    return out


def counts(engine: Engine) -> dict[str, int]:
    return {counter.name: counter.count for counter in engine.counters("shop")}


def applied(server) -> dict[int, dict[str, int]]:
    return {
        partition: counts(state.engine)
        for partition, state in server.partitions.states.items()
        if counts(state.engine)
    }


async def send_rest(server, batch: list[Event]) -> None:
    body = [{"event_name": e.event_name, "user_id": e.user_id, "namespace": e.namespace}
            for e in batch]  # fmt: skip
    async with (
        gateway_of(server) as gateway,
        rest_client(gateway) as http,
        http.post("/v0/analytics", json=body) as answer,
    ):
        assert answer.status == 204, await answer.text()


def as_request(batch: list[Event]) -> pb.TrackEventsRequest:
    return pb.TrackEventsRequest(
        events=[
            pb.Event(event_name=e.event_name, user_id=e.user_id, namespace=e.namespace)
            for e in batch
        ]
    )


async def send_grpc(server, batch: list[Event]) -> None:
    async with stub_of(server) as stub:
        await stub.TrackEvents(as_request(batch))


async def test_events_over_rest_and_grpc_reach_every_replicas_partitions(fresh_stream, tmp_path):
    by_rest, by_grpc = events("rest", 150), events("grpc", 150)
    async with (
        running(replica(fresh_stream, tmp_path / "a", "replica-a")) as a,
        running(replica(fresh_stream, tmp_path / "b", "replica-b")) as b,
    ):
        await asyncio.gather(send_rest(a, by_rest), send_grpc(b, by_grpc))
        want = expected_counts(by_rest + by_grpc)
        assert len(want) == PARTITIONS  # the users are spread over every partition
        for server in (a, b):
            await until(lambda server=server: applied(server) == want, "all applied", 20)
        async with stub_of(a) as stub:
            await stub.CreateGoal(pb.CreateGoalRequest(namespace="shop", goal_name="buy"))

        def goal_everywhere() -> bool:
            return all(
                state.engine.goals("shop") == ["buy"]
                for server in (a, b)
                for state in server.partitions.states.values()
            )

        await until(goal_everywhere, "the goal in every partition of both replicas", 20)


async def test_feature_specs_are_refused_clearly_until_a_shared_store_holds_them(
    fresh_stream, tmp_path
):
    async with running(replica(fresh_stream, tmp_path, "replica-a")) as a, stub_of(a) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "ListFeatureSpecs is not answered in cluster mode yet" in info.value.details()


async def test_a_nats_node_killed_during_ingest_loses_no_acknowledged_event(fresh_stream, tmp_path):
    acknowledged: list[Event] = []
    async with running(replica(fresh_stream, tmp_path, "replica-a")) as a, stub_of(a) as stub:

        async def ingest() -> None:
            for round_ in range(60):
                batch = events(f"r{round_}", 20)
                try:
                    await stub.TrackEvents(as_request(batch))
                except grpc.aio.AioRpcError as error:  # not acknowledged: may be lost
                    assert error.code() is grpc.StatusCode.UNAVAILABLE
                    continue
                acknowledged.extend(batch)

        ingesting = asyncio.ensure_future(ingest())
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
        assert {p: s.snapshot_sequence for p, s in again.partitions.states.items()} == (snapshotted)
        await until(lambda: applied(again) == want, "snapshots plus the stream replayed", 20)
        assert {p: s.sequence for p, s in again.partitions.states.items()} == sequences


async def test_a_stream_of_another_partition_count_stops_the_replica(fresh_stream, tmp_path):
    async with running(replica(fresh_stream, tmp_path / "a", "replica-a")):
        pass
    with pytest.raises(ConfigError) as info:
        async with running(replica(fresh_stream, tmp_path / "b", "replica-b", partitions=16)):
            pass
    assert "created with 8 partitions" in info.value.message
    assert "--partitions" in info.value.message

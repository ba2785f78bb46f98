"""Cluster mode replicas in-process on a real NATS JetStream cluster: their settings, a
clean stream and buckets for each test, events to send them (over REST and gRPC), and what
each partition holds after applying them."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

import grpc

from kimball_grpc.cluster.event_log import STREAM, split_by_partition
from kimball_grpc.cluster.membership import MEMBERS_BUCKET, PARTITIONS_BUCKET
from kimball_grpc.cluster.name_store import NAMES_BUCKET
from kimball_grpc.cluster.spec_store import SPECS_BUCKET
from kimball_grpc.config.settings import Settings
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, iso_week, prepare_events
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from support.in_process import gateway_of, local_settings, rest_client, stub_of
from support.nats_cluster import NatsCluster

PARTITIONS = 8
# Long enough that a loaded machine does not lapse a lease the test did not mean to (the
# partitions would move, and back); the tests of a lease lost set SHORT_LEASE_SECONDS.
LEASE_SECONDS = 6.0
SHORT_LEASE_SECONDS = 1.5


async def clear(cluster: NatsCluster) -> None:
    """Delete the stream and the buckets (membership, feature specs, known names): a test
    starts a cluster afresh."""
    import nats

    connection = await nats.connect(cluster.urls)
    js = connection.jetstream()
    try:
        with contextlib.suppress(Exception):  # not there yet
            await js.delete_stream(STREAM)
        for bucket in (MEMBERS_BUCKET, PARTITIONS_BUCKET, SPECS_BUCKET, NAMES_BUCKET):
            with contextlib.suppress(Exception):
                await js.delete_key_value(bucket)
    finally:
        await connection.close()


def replica(cluster: NatsCluster, data_dir: Path, name: str, **fields: object) -> Settings:
    """A replica named ``name`` on ``cluster``; its snapshots under ``data_dir``, which the
    replicas of one test share as they would share an object store."""
    cluster_fields = {
        "nats_urls": tuple(cluster.urls),
        "replica_id": name,
        "partitions": PARTITIONS,
        "nats_stream_replicas": 3,
        "lease_seconds": LEASE_SECONDS,
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
    """The counts of each partition ``server`` applies now (those with any)."""
    return {
        partition: counts(state.engine)
        for partition, state in server.partitions.states.items()
        if counts(state.engine)
    }


def as_request(batch: list[Event]) -> pb.TrackEventsRequest:
    return pb.TrackEventsRequest(
        events=[
            pb.Event(event_name=e.event_name, user_id=e.user_id, namespace=e.namespace)
            for e in batch
        ]
    )


async def send_rest(server, batch: list[Event]) -> None:
    body = [{"event_name": e.event_name, "user_id": e.user_id, "namespace": e.namespace}
            for e in batch]  # fmt: skip
    async with (
        gateway_of(server) as gateway,
        rest_client(gateway) as http,
        http.post("/v0/analytics", json=body) as answer,
    ):
        assert answer.status == 204, await answer.text()


async def send_grpc(server, batch: list[Event]) -> None:
    async with stub_of(server) as stub:
        await stub.TrackEvents(as_request(batch))


async def ingest_acknowledged(stub, acknowledged: list[Event], rounds: int) -> None:
    """Send ``rounds`` batches of 20 events, adding each acknowledged one to ``acknowledged``;
    a batch refused ``UNAVAILABLE`` (NATS failing over) is left out: it may be stored or not."""
    for round_ in range(rounds):
        batch = events(f"r{round_}", 20)
        try:
            await stub.TrackEvents(as_request(batch))
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            continue
        acknowledged.extend(batch)

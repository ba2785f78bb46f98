"""Queries across a cluster's partitions, over real gRPC on loopback: replicas answer
``KimballCluster`` from the engines of their partitions, the fan-out asks them all within
a deadline and merges, and the answers are a single node's. A missing answer fails the
query naming the partitions, never a partial answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from prometheus_client import CollectorRegistry

from kimball_grpc.api.cluster_service import ClusterService
from kimball_grpc.api.servicers import KimballService, analytics_response
from kimball_grpc.api.status_mapping import StatusInterceptor
from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import (
    InvalidArgument,
    KimballError,
    NotFound,
    PartitionsUnavailable,
)
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES
from kimball_grpc.core.partitions import partition_of
from kimball_grpc.core.steps import finish
from kimball_grpc.generated.kimball.v1 import cluster_pb2 as cluster_pb
from kimball_grpc.generated.kimball.v1 import cluster_pb2_grpc as cluster_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.outbound.cluster_fanout import ClusterFanOut
from kimball_grpc.outbound.external_predictions import ExternalPredictions
from tests.support.partitioned_engines import GOALS, NAMESPACES, counter_config, engines, workload
from tests.support.ports import reserved_port

PARTITIONS = 16
REPLICAS = 3
SERVICE = "kimball.v1.KimballCluster"
USERS = [f"user-{i}" for i in (0, 1, 3, 50, 700)]


async def serve(servicer: cluster_grpc.KimballClusterServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[StatusInterceptor({SERVICE})])
    cluster_grpc.add_KimballClusterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


class Cluster:
    """Replica i owns the partitions p with p % REPLICAS == i (and gives up those in
    ``given_up``)."""

    def __init__(self) -> None:
        config = counter_config(1e-9)  # no false positives: answers equal to the bit
        records = workload(events=6_000)
        (self.single,) = engines(records, 1, config)
        self.partition_engines = engines(records, PARTITIONS, config)
        self.given_up: set[int] = set()
        self.owners: dict[int, str] = {}
        self.servers: list[grpc.aio.Server] = []

    def owned_by(self, replica: int) -> Callable[[int], Engine | None]:
        def owned(partition: int) -> Engine | None:
            if partition % REPLICAS != replica or partition in self.given_up:
                return None
            return self.partition_engines[partition]

        return owned

    async def start(self) -> None:
        for replica in range(REPLICAS):
            server, address = await serve(ClusterService(self.owned_by(replica), PARTITIONS))
            self.servers.append(server)
            for partition in range(replica, PARTITIONS, REPLICAS):
                self.owners[partition] = address

    def fan_out(self, deadline: float = 5.0) -> ClusterFanOut:
        return ClusterFanOut(
            lambda: self.owners, PARTITIONS, deadline, MAX_MESSAGE_BYTES, CollectorRegistry()
        )


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    await cluster.start()
    yield cluster
    for server in cluster.servers:
        await server.stop(None)


@pytest.fixture
async def fan_out(cluster: Cluster) -> AsyncIterator[ClusterFanOut]:
    fan_out = cluster.fan_out()
    yield fan_out
    await fan_out.close()


def analytics(source, namespace: str) -> pb.GetAnalyticsResponse:
    request = pb.GetAnalyticsRequest(namespace=namespace)
    return finish(analytics_response(source, request, MAX_MESSAGE_BYTES))


async def test_fanned_out_answers_equal_a_single_nodes(
    cluster: Cluster, fan_out: ClusterFanOut
) -> None:
    single = cluster.single
    assert await fan_out.namespaces() == single.namespaces()
    for namespace in NAMESPACES:
        merged = await fan_out.merged_counts(namespace)
        assert analytics(merged, namespace) == analytics(single, namespace)
        assert merged.goals(namespace) == single.goals(namespace)
        assert merged.event_predictions(namespace) == single.event_predictions(namespace)
        events = ["view", "cart"]
        assert merged.predict_for_events(namespace, events) == single.predict_for_events(
            namespace, events
        )
        for user in USERS:
            done = await fan_out.user_events(namespace, user)
            assert done == single.events_for_user(namespace, user)
            assert merged.predict_for_user(namespace, user, done) == single.predict_for_user(
                namespace, user
            )
            for goal in GOALS:
                assert merged.nudges(namespace, goal, done) == single.nudges(namespace, goal, user)
    assert analytics(await fan_out.merged_counts("shop"), "shop").counts[0].count > 500


async def test_a_namespace_no_partition_knows_is_empty_and_a_bad_one_refused(
    fan_out: ClusterFanOut,
) -> None:
    merged = await fan_out.merged_counts("unknown")
    assert list(analytics(merged, "unknown").counts) == []
    with pytest.raises(NotFound):
        merged.predict_for_user("unknown", "user-0", await fan_out.user_events("unknown", "u"))
    with pytest.raises(InvalidArgument, match="namespace"):
        await fan_out.merged_counts("bad\nname")
    with pytest.raises(InvalidArgument, match="user_id"):
        await fan_out.user_events("shop", "")


class Stalled(cluster_grpc.KimballClusterServicer):
    """A replica that takes calls and never answers."""

    async def GetPartialCounts(self, request, context):
        await asyncio.Event().wait()

    async def GetUserEvents(self, request, context):
        await asyncio.Event().wait()


async def test_a_replica_that_does_not_answer_in_time_fails_the_query_naming_its_partitions(
    cluster: Cluster,
) -> None:
    server, address = await serve(Stalled())
    cluster.owners[4] = cluster.owners[9] = address
    fan_out = cluster.fan_out(deadline=0.3)
    try:
        with pytest.raises(PartitionsUnavailable) as raised:
            await fan_out.merged_counts("shop")
        assert raised.value.details == {"partitions": "4, 9"}
        assert "did not answer within 0.3 s" in raised.value.message
        with pytest.raises(PartitionsUnavailable, match="did not answer within"):
            await fan_out.namespaces()
    finally:
        await fan_out.close()
        await server.stop(None)


async def test_an_owner_that_cannot_be_reached_fails_the_query(cluster: Cluster) -> None:
    with reserved_port() as port:
        cluster.owners[2] = f"127.0.0.1:{port}"
        fan_out = cluster.fan_out()
        try:
            with pytest.raises(PartitionsUnavailable, match="UNAVAILABLE") as raised:
                await fan_out.merged_counts("shop")
            assert raised.value.details == {"partitions": "2"}
        finally:
            await fan_out.close()


async def test_partitions_their_owner_gave_up_or_without_owner_fail_the_query(
    cluster: Cluster, fan_out: ClusterFanOut
) -> None:
    cluster.given_up = {1, 7}
    with pytest.raises(PartitionsUnavailable, match="does not own them now") as raised:
        await fan_out.merged_counts("shop")
    assert raised.value.details == {"partitions": "1, 7"}
    cluster.given_up = set()
    del cluster.owners[15]
    with pytest.raises(PartitionsUnavailable, match="no owner") as raised:
        await fan_out.merged_counts("shop")
    assert raised.value.details == {"partitions": "15"}


async def test_a_replica_refuses_partitions_that_do_not_exist_and_users_it_does_not_own(
    cluster: Cluster,
) -> None:
    async with grpc.aio.insecure_channel(cluster.owners[0]) as channel:
        stub = cluster_grpc.KimballClusterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetPartialCounts(
                cluster_pb.GetPartialCountsRequest(namespace="shop", partitions=[0, PARTITIONS])
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "partition 16 does not exist" in raised.value.details()
        # A user of a partition replica 0 does not own: it says so rather than answer "none".
        user = next(u for u in (f"u{i}" for i in range(100)) if _partition(u) % REPLICAS != 0)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetUserEvents(
                cluster_pb.GetUserEventsRequest(namespace="shop", user_id=user)
            )
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "does not own partition" in raised.value.details()


def _partition(user: str) -> int:
    return partition_of(hash_key(user), PARTITIONS)


def service(engine: Engine, cluster: ClusterFanOut | None = None) -> KimballService:
    """The public service as app.py builds it; in cluster mode over an empty local engine,
    so that every count must come from the replicas."""
    external = ExternalPredictions((), CollectorRegistry())
    return KimballService(
        engine, None, None, external, lambda _: None, MAX_MESSAGE_BYTES, cluster=cluster
    )


async def answer_or_error(call):
    try:
        return await call
    except KimballError as exc:
        return type(exc).__name__, exc.message, exc.details


async def test_the_public_service_in_cluster_mode_answers_as_a_single_node(
    cluster: Cluster, fan_out: ClusterFanOut
) -> None:
    one = service(cluster.single)
    many = service(Engine(), fan_out)
    requests = [
        ("ListNamespaces", pb.ListNamespacesRequest(page_size=1)),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="nope")),
        ("GetPredictions", pb.GetPredictionsRequest(events=["view"], user_id="user-0")),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop", events=["nope"])),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop", user_id="never-seen")),
        ("GetNudges", pb.GetNudgesRequest(namespace="shop", goal="bad\ngoal", user_id="user-0")),
    ]
    for namespace in NAMESPACES:
        requests += [
            ("GetAnalytics", pb.GetAnalyticsRequest(namespace=namespace, page_size=4)),
            ("GetAnalytics", pb.GetAnalyticsRequest(namespace=namespace, name_prefix="week_")),
            ("ListGoals", pb.ListGoalsRequest(namespace=namespace)),
            ("GetPredictions", pb.GetPredictionsRequest(namespace=namespace)),
            ("GetPredictions", pb.GetPredictionsRequest(namespace=namespace, events=["cart"])),
        ]
        for user in USERS:
            requests.append(
                ("GetPredictions", pb.GetPredictionsRequest(namespace=namespace, user_id=user))
            )
            requests += [
                ("GetNudges", pb.GetNudgesRequest(namespace=namespace, goal=g, user_id=user))
                for g in GOALS
            ]
    for method, request in requests:
        expected = await answer_or_error(getattr(one, method)(request, None))
        got = await answer_or_error(getattr(many, method)(request, None))
        assert got == expected, (method, request)
    nudged = [
        await many.GetNudges(request, None)
        for method, request in requests[-10:]
        if method == "GetNudges"
    ]
    assert any(n.nudges for n in nudged)

"""Reads in cluster mode on a real 3-node NATS JetStream cluster on loopback: the same events
sent to one single-node Kimball and spread over two replicas (REST and gRPC) give equal
answers to every query of counts, over REST and gRPC, from either replica, with the
partitions split between the replicas; an owner that does not answer, or a partition
without owner, fails the query UNAVAILABLE (REST 503) naming the partitions; a replica
refuses ``KimballCluster`` calls without a valid token."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.certificates import client_tls, make_certificates, server_tls
from support.cluster_replicas import PARTITIONS
from support.in_process import gateway_of, local_settings, rest_client, running
from support.nats_cluster import NatsCluster
from support.partitioned_engines import counter_config
from support.polling import until

from kimball_grpc.app import RunningReplica, start_replica
from kimball_grpc.config.settings import Settings
from kimball_grpc.config.tls import ClientTls
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import cluster_pb2 as cluster_pb
from kimball_grpc.generated.kimball.v1 import cluster_pb2_grpc as cluster_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.outbound.channels import channel_credentials
from kimball_grpc.outbound.cluster_fanout import Owners

TOKEN = "cluster-test-token"
GOALS = ("buy", "signup")
NAMES = ("view", "cart", "search", "signup", "buy")
USERS = [f"user-{i}" for i in range(120)]
ASKED_USERS = [*USERS[:12], "never-seen"]
# Long: no partition moves here by a lease, and one lost on a loaded machine would leave
# the partitions without owner for a while, failing the queries the tests ask.
LEASE_SECONDS = 15.0
pytestmark = pytest.mark.xdist_group("nats-cluster")


def settings_of(
    data_dir: Path, cluster: NatsCluster | None = None, name: str = "", **fields: object
) -> Settings:
    """A single node (no ``cluster``) or a replica of ``cluster`` named ``name`` (default
    the directory's), its snapshots in ``data_dir`` (the replicas of a test share it as
    they would share an object store); with a token, counted without false positives so a
    cluster's answers equal a single node's to the bit."""
    common: dict[str, object] = {
        "api_auth": True,
        "api_auth_tokens": (TOKEN,),
        "counter_config": counter_config(1e-9),
    }
    if cluster is not None:
        common |= {
            "nats_urls": tuple(cluster.urls),
            "replica_id": name or data_dir.name,
            "partitions": PARTITIONS,
            "nats_stream_replicas": 3,
            "lease_seconds": LEASE_SECONDS,
        }
    return local_settings(data_dir, **(common | fields))


@asynccontextmanager
async def replica(
    settings: Settings, owners: Owners | None = None
) -> AsyncIterator[RunningReplica]:
    server = await start_replica(settings, owners=owners)
    try:
        await server.wait_ready()
        yield server
    finally:
        await server.stop(grace=None)


class SplitOwners:
    """The first address answers for partitions 0 to P/2-1, the second for the rest, some
    replaced or taken away by ``overrides``. Addresses are known once the replicas listen."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.overrides: dict[int, str | None] = {}  # a partition's owner replaced (or none)

    def __call__(self) -> Mapping[int, str]:
        half = PARTITIONS // 2
        owners = {p: self.addresses[p >= half] for p in range(PARTITIONS)}
        for partition, address in self.overrides.items():
            if address is None:
                del owners[partition]
            else:
                owners[partition] = address
        return owners


def address_of(server) -> str:
    return f"127.0.0.1:{server.grpc_port}"


@asynccontextmanager
async def channel_to(
    server, token: str = TOKEN, tls: ClientTls | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """A network channel to ``server`` (over TLS with ``tls``) whose calls carry ``token``."""

    class Bearer(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, details, request):
            metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
            return await continuation(details._replace(metadata=metadata), request)

    address, bearer = address_of(server), [Bearer()]
    if tls is None:
        channel = grpc.aio.insecure_channel(address, interceptors=bearer)
    else:
        channel = grpc.aio.secure_channel(address, channel_credentials(tls), interceptors=bearer)
    async with channel:
        yield channel


def batches() -> list[list[pb.Event]]:
    """Events of ``USERS``, each user a few of ``NAMES``, some with values, in batches."""
    events = [
        pb.Event(event_name=name, user_id=user, namespace="shop")
        for i, user in enumerate(USERS)
        for name in NAMES[: 1 + i % len(NAMES)][:: 1 + i % 2]
    ]
    for i, event in enumerate(events):
        if event.event_name in ("buy", "cart"):
            event.value = (i % 40) / 8
    return [events[i : i + 40] for i in range(0, len(events), 40)]


async def send(server, batch: list[pb.Event], over_rest: bool) -> None:
    if not over_rest:
        async with channel_to(server) as channel:
            await pb_grpc.KimballServiceStub(channel).TrackEvents(
                pb.TrackEventsRequest(events=batch)
            )
        return
    body = [
        {"event_name": e.event_name, "user_id": e.user_id, "namespace": e.namespace}
        | ({"value": e.value} if e.HasField("value") else {})
        for e in batch
    ]
    async with (
        gateway_of(server) as gateway,
        rest_client(gateway, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.post("/v0/analytics", json=body) as answer,
    ):
        assert answer.status == 204, await answer.text()


def grpc_queries() -> list[tuple[str, object]]:
    queries: list[tuple[str, object]] = [
        ("GetAnalytics", pb.GetAnalyticsRequest(namespace="shop")),
        ("GetAnalytics", pb.GetAnalyticsRequest(namespace="shop", page_size=2)),
        ("GetAnalytics", pb.GetAnalyticsRequest(namespace="nowhere")),
        ("ListGoals", pb.ListGoalsRequest(namespace="shop")),
        ("ListNamespaces", pb.ListNamespacesRequest()),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop")),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop", events=["view"])),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop", events=["view", "cart"])),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop", events=["unknown"])),
    ]
    for user in ASKED_USERS:
        queries.append(("GetPredictions", pb.GetPredictionsRequest(namespace="shop", user_id=user)))
        queries += [
            ("GetNudges", pb.GetNudgesRequest(namespace="shop", goal=goal, user_id=user))
            for goal in GOALS
        ]
    return queries


REST_QUERIES = [
    "/v0/analytics?namespace=shop",
    "/v0/goals?namespace=shop",
    "/v0/namespaces",
    "/v0/predictions?namespace=shop",
    "/v0/predictions?namespace=shop&event=view&event=search",
    *(f"/v0/predictions?namespace=shop&user_id={user}" for user in ASKED_USERS),
    *(f"/v0/nudges?namespace=shop&goal=buy&user_id={user}" for user in ASKED_USERS),
]


async def grpc_answers(server) -> list[object]:
    out: list[object] = []
    async with channel_to(server) as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        for method, request in grpc_queries():
            try:
                out.append(await getattr(stub, method)(request))
            except grpc.aio.AioRpcError as error:
                out.append((error.code(), error.details()))
        integration = integration_grpc.KimballIntegrationStub(channel)
        for user in ASKED_USERS[:4]:
            request = integration_pb.PredictionRequest(namespace="shop", user_id=user)
            out.append(await integration.Prediction(request))
    return out


async def rest_answers(server) -> list[tuple[int, object]]:
    out: list[tuple[int, object]] = []
    async with (
        gateway_of(server) as gateway,
        rest_client(gateway, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        for path in REST_QUERIES:
            async with http.get(path) as answer:
                out.append((answer.status, await answer.json()))
    return out


@contextmanager
def silent_listener() -> Iterator[str]:
    """An address that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def split_between(*replicas: RunningReplica) -> bool:
    """Whether every partition is owned, caught up, by exactly one of ``replicas``, each
    owns some, and each knows every partition's owner."""
    owned = [
        {p for p in server.membership.owned() if server.partitions.caught_up(p) is not None}
        for server in replicas
    ]
    views = [set(server.membership.owners()) for server in replicas]  # as each last read
    split = sorted(p for mine in owned for p in mine) == list(range(PARTITIONS))
    return all(owned) and split and all(view == set(range(PARTITIONS)) for view in views)


async def test_two_replicas_answer_every_query_as_a_single_node(fresh_stream, tmp_path):
    shared = tmp_path / "objects"
    async with (
        running(settings_of(tmp_path / "single")) as single,
        replica(settings_of(shared, fresh_stream, "a")) as a,
        replica(settings_of(shared, fresh_stream, "b")) as b,
    ):
        await until(lambda: split_between(a, b), "the partitions split between A and B", 20)
        for server in (single, a):
            async with channel_to(server) as channel:
                stub = pb_grpc.KimballServiceStub(channel)
                for goal in GOALS:
                    await stub.CreateGoal(pb.CreateGoalRequest(namespace="shop", goal_name=goal))

        def goals_everywhere() -> bool:
            return all(
                state.engine.goals("shop") == sorted(GOALS)
                for server in (a, b)
                for state in server.partitions.states.values()
            )

        await until(goals_everywhere, "the goals in every partition of both replicas", 20)
        # In order, each acknowledged before the next: every partition sees a user's
        # events in the order the single node does. Spread over both replicas, both APIs.
        for i, batch in enumerate(batches()):
            await send(single, batch, over_rest=i % 2 == 0)
            await send((a, b)[i % 3 == 0], batch, over_rest=i % 2 == 1)

        want_grpc = await grpc_answers(single)
        want_rest = await rest_answers(single)
        assert want_rest[0][0] == 200 and want_rest[0][1]  # counts, not an empty answer

        async def applied_everywhere() -> bool:
            return await grpc_answers(a) == want_grpc

        await until(applied_everywhere, "replica A's answers equal the single node's", 30)
        for server in (a, b):
            assert await grpc_answers(server) == want_grpc
            assert await rest_answers(server) == want_rest
        answered = a.metrics.registry.get_sample_value("kimball_cluster_fanout_seconds_count")
        assert answered and answered > 0


async def test_a_missing_or_silent_owner_fails_the_query_naming_its_partitions(
    fresh_stream, tmp_path
):
    owners = SplitOwners()
    deadline_ms = 400
    async with replica(
        settings_of(tmp_path / "a", fresh_stream, cluster_query_deadline_ms=deadline_ms), owners
    ) as a:
        owners.addresses = [address_of(a), address_of(a)]
        await until(lambda: split_between(a), "every partition owned by A", 20)
        async with channel_to(a) as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            await stub.TrackEvents(
                pb.TrackEventsRequest(events=[pb.Event(event_name="view", user_id="u")])
            )
            assert (await stub.ListNamespaces(pb.ListNamespacesRequest())).namespaces
            with silent_listener() as silent:
                owners.overrides = {2: silent, 5: silent}
                started = asyncio.get_running_loop().time()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace="default"))
                took = asyncio.get_running_loop().time() - started
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "no answer for partitions 2, 5" in info.value.details()
            assert "did not answer within 0.4 s" in info.value.details()
            assert took < deadline_ms / 1000 + 2  # within the deadline, not the client's

            owners.overrides = {6: None}
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetPredictions(pb.GetPredictionsRequest(namespace="default"))
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "no answer for partition 6 (have no owner now)" in info.value.details()

        async with (
            gateway_of(a) as gateway,
            rest_client(gateway, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
            http.get("/v0/analytics?namespace=default") as answer,
        ):
            assert answer.status == 503
            assert "partition 6" in await answer.text()
        failures = a.metrics.registry.get_sample_value
        name = "kimball_cluster_fanout_failures_total"
        assert failures(name, {"reason": "deadline"}) == 1
        assert failures(name, {"reason": "no_owner"}) == 2

        owners.overrides = {}
        async with channel_to(a) as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            answer = await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace="default"))
            assert [c.count for c in answer.counts if c.name == "view"] == [1]


async def test_a_replica_refuses_cluster_calls_without_a_valid_token(fresh_stream, tmp_path):
    async with replica(settings_of(tmp_path / "a", fresh_stream)) as a:
        await until(lambda: split_between(a), "every partition owned by A", 20)
        async with channel_to(a, token="wrong") as channel:  # health needs no token
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="kimball.v1.KimballCluster")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        request = cluster_pb.GetPartialCountsRequest(namespace="default", partitions=[0])
        async with channel_to(a, token="wrong") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await cluster_grpc.KimballClusterStub(channel).GetPartialCounts(request)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        async with channel_to(a) as channel:
            answer = await cluster_grpc.KimballClusterStub(channel).GetPartialCounts(request)
            assert list(answer.partitions) == [0]


async def test_replicas_ask_each_other_over_mutual_tls_with_the_configured_certificate(
    fresh_stream, tmp_path
):
    certificates = make_certificates(tmp_path / "certificates")
    tls = {"server_tls": server_tls(certificates, mutual=True)}
    trusted = client_tls(certificates.ca, certificates.client)
    untrusting = client_tls(certificates.other_ca, certificates.client)
    request = pb.GetAnalyticsRequest(namespace="default")
    async with (
        replica(settings_of(tmp_path / "a", fresh_stream, client_tls=trusted, **tls)) as a,
        channel_to(a, tls=trusted) as channel,
    ):
        await until(lambda: split_between(a), "every partition owned by A", 20)
        stub = pb_grpc.KimballServiceStub(channel)
        await stub.TrackEvents(
            pb.TrackEventsRequest(events=[pb.Event(event_name="view", user_id="u")])
        )
        await until(
            lambda: any(state.engine.namespaces() for state in a.partitions.states.values()),
            "the event applied",
            20,
        )
        answer = await stub.GetAnalytics(request)
        assert [c.count for c in answer.counts if c.name == "view"] == [1]
    # A replica that does not trust its peers' certificate gets no answer from them.
    async with (
        replica(settings_of(tmp_path / "b", fresh_stream, client_tls=untrusting, **tls)) as b,
        channel_to(b, tls=trusted) as channel,
    ):
        await until(lambda: split_between(b), "every partition owned by B", 20)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.KimballServiceStub(channel).GetAnalytics(request)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "failed: UNAVAILABLE" in info.value.details()

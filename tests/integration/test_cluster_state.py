"""The state every replica holds alike in cluster mode, on a real 3-node NATS JetStream
cluster on loopback. Feature specs: a spec written on one replica is read, evaluated (gRPC
and REST) and watched equally on another; a deletion reaches every replica; a bad spec is
refused and nothing is stored; the count limit holds across replicas writing at once; a
write while NATS is down is refused. Growth limits: namespaces added over two replicas at
once stop at the limit, cluster-wide, with a single node's refusal, nothing of a refused
batch published."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import nats
import pytest
from google.protobuf.struct_pb2 import Value
from support.cluster_replicas import replica
from support.in_process import gateway_of, local_settings, rest_client, running, stub_of
from support.polling import until

from kimball_grpc.cluster.spec_store import SPECS_BUCKET
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

pytestmark = pytest.mark.xdist_group("nats-cluster")


def spec(name: str, **fields: object) -> pb.FeatureSpec:
    return pb.FeatureSpec(name=name, **fields)


async def named(stub) -> list[str]:
    return [s.name for s in (await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest())).specs]


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def rest_features(server, user_id: str) -> dict:
    user = base64.b64encode(json.dumps({"user_id": user_id}).encode()).decode()
    async with (
        gateway_of(server) as gateway,
        rest_client(gateway) as http,
        http.get("/v0/features", params={"user_obj": user}) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def test_a_spec_written_on_one_replica_is_read_evaluated_and_watched_on_another(
    fresh_stream, tmp_path
):
    async with (
        running(replica(fresh_stream, tmp_path / "a", "replica-a")) as a,
        running(replica(fresh_stream, tmp_path / "b", "replica-b")) as b,
        stub_of(a) as on_a,
        stub_of(b) as on_b,
    ):
        watch = on_b.WatchFeatureSpecs(pb.WatchFeatureSpecsRequest())
        first = await watch.read()
        assert list(first.specs) == []
        pro = pb.UserCondition(property="plan", comparator="=", value=Value(string_value="pro"))
        put = spec("checkout", user=[pro])
        await on_a.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=put))
        # Read right after the write, on the replica that took it: the write is there.
        assert (await on_a.GetFeatureSpec(pb.GetFeatureSpecRequest(name="checkout"))) == put
        # The other replica's watchers are told, and its reads answer the same.
        seen = await asyncio.wait_for(watch.read(), 10)
        assert [s.name for s in seen.specs] == ["checkout"]
        assert (await on_b.GetFeatureSpec(pb.GetFeatureSpecRequest(name="checkout"))) == put
        user = {"user_id": "u1", "plan": "pro"}
        request = pb.EvaluateFeaturesRequest()
        request.user.update(user)
        on_both = [await stub.EvaluateFeatures(request) for stub in (on_a, on_b)]
        assert on_both[0] == on_both[1]
        assert dict(on_both[0].features) == {"checkout": True}
        assert await rest_features(a, "u2") == await rest_features(b, "u2")
        # A deletion on the other replica reaches the first, with the same history.
        await on_b.DeleteFeatureSpec(pb.DeleteFeatureSpecRequest(name="checkout"))
        assert await named(on_b) == []

        async def gone_on_a() -> bool:
            return await named(on_a) == []

        await until(gone_on_a, "the deletion applied on replica a", 10)
        history = pb.GetFeatureSpecHistoryRequest(name="checkout")
        histories = [await stub.GetFeatureSpecHistory(history) for stub in (on_a, on_b)]
        assert histories[0] == histories[1]
        assert len(histories[0].changes) == 2
        watch.cancel()


async def test_a_bad_spec_or_deletion_is_refused_and_nothing_is_stored(fresh_stream, tmp_path):
    async with (
        running(replica(fresh_stream, tmp_path / "a", "replica-a")) as a,
        stub_of(a) as stub,
    ):
        bad = pb.PutFeatureSpecRequest(spec=spec("half", rollout_percentage=150))
        assert await code_of(stub.PutFeatureSpec(bad)) is grpc.StatusCode.INVALID_ARGUMENT
        unnamed = pb.PutFeatureSpecRequest(spec=spec(""))
        assert await code_of(stub.PutFeatureSpec(unnamed)) is grpc.StatusCode.INVALID_ARGUMENT
        absent = pb.DeleteFeatureSpecRequest(name="absent")
        assert await code_of(stub.DeleteFeatureSpec(absent)) is grpc.StatusCode.NOT_FOUND
        assert await named(stub) == []
        connection = await nats.connect(fresh_stream.urls)
        kv = await connection.jetstream().key_value(SPECS_BUCKET)
        assert (await kv.status()).values == 0  # nothing written to the bucket
        await connection.close()


async def test_the_spec_count_limit_holds_over_replicas_writing_at_once(fresh_stream, tmp_path):
    limit = {"max_feature_specs": 3}
    async with (
        running(replica(fresh_stream, tmp_path / "a", "replica-a", **limit)) as a,
        running(replica(fresh_stream, tmp_path / "b", "replica-b", **limit)) as b,
        stub_of(a) as on_a,
        stub_of(b) as on_b,
    ):
        calls = [
            stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec(f"flag-{i}")))
            for i, stub in enumerate([on_a, on_b] * 4)
        ]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        refused = [answer for answer in answers if isinstance(answer, BaseException)]
        assert len(refused) == 5
        for error in refused:
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "feature spec" in error.details()
        assert len(await named(on_a)) == 3

        async def same_on_b() -> bool:
            return await named(on_b) == await named(on_a)

        await until(same_on_b, "replica b to hold the same three specs", 10)
        # Replacing a spec that exists takes no new room.
        await on_b.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec((await named(on_b))[0])))


async def test_a_spec_written_while_nats_is_down_is_refused_and_not_applied(fresh_stream, tmp_path):
    async with (
        running(replica(fresh_stream, tmp_path / "a", "replica-a")) as a,
        stub_of(a) as stub,
    ):
        for node in range(3):
            await asyncio.to_thread(fresh_stream.kill, node)
        try:
            put = pb.PutFeatureSpecRequest(spec=spec("offline"))
            assert await code_of(stub.PutFeatureSpec(put)) is grpc.StatusCode.UNAVAILABLE
            assert await named(stub) == []
        finally:
            # Together: a node alone has no majority to elect a leader with.
            await asyncio.gather(
                *(asyncio.to_thread(fresh_stream.restart, node) for node in range(3))
            )


def in_namespace(namespace: str) -> pb.TrackEventsRequest:
    return pb.TrackEventsRequest(
        events=[pb.Event(event_name="view", user_id=f"{namespace}-{i}", namespace=namespace)
                for i in range(5)]
    )  # fmt: skip


def refusals(server) -> float:
    registry = server.metrics.registry
    return registry.get_sample_value("kimball_limit_refusals_total", {"limit": "namespaces"}) or 0


async def test_namespaces_added_over_two_replicas_stop_at_the_limit_cluster_wide(
    fresh_stream, tmp_path
):
    limit = {"max_namespaces": 3}
    async with (
        running(local_settings(tmp_path / "single", **limit)) as single,
        stub_of(single) as stub,
    ):
        for i in range(3):
            await stub.TrackEvents(in_namespace(f"ns-{i}"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.TrackEvents(in_namespace("ns-3"))
        single_node_refusal = (info.value.code(), info.value.details())
    async with (
        running(replica(fresh_stream, tmp_path / "a", "replica-a", **limit)) as a,
        running(replica(fresh_stream, tmp_path / "b", "replica-b", **limit)) as b,
        stub_of(a) as on_a,
        stub_of(b) as on_b,
    ):
        sent = [f"ns-{i}" for i in range(8)]
        answers = await asyncio.gather(
            *(
                stub.TrackEvents(in_namespace(ns))
                for ns, stub in zip(sent, [on_a, on_b] * 4, strict=True)
            ),
            return_exceptions=True,
        )
        accepted = {
            ns
            for ns, answer in zip(sent, answers, strict=True)
            if not isinstance(answer, Exception)
        }
        refused = [answer for answer in answers if isinstance(answer, Exception)]
        assert len(accepted) == 3
        assert {(e.code(), e.details()) for e in refused} == {single_node_refusal}
        assert refusals(a) + refusals(b) == 5
        # Only the accepted namespaces' events reach the partitions: refused ones are
        # published nowhere.

        def applied_namespaces() -> set[str]:
            return {
                ns
                for server in (a, b)
                for state in server.partitions.states.values()
                for ns in state.engine.namespaces()
            }

        await until(lambda: applied_namespaces() == accepted, "the accepted namespaces", 10)
        # A namespace known in the cluster takes events on every replica.
        known = sorted(accepted)[0]
        await asyncio.gather(on_a.TrackEvents(in_namespace(known)),
                             on_b.TrackEvents(in_namespace(known)))  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await on_b.CreateGoal(pb.CreateGoalRequest(namespace="another", goal_name="g"))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

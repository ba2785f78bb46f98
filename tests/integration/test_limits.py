"""The growth limits (namespaces, event names, counters, goals, feature specs) on a real
server, over gRPC and REST: at a limit a request is taken, one past it is refused with
RESOURCE_EXHAUSTED / 429 naming the limit and its setting, nothing of it is applied, and
the refusal is counted. State already past a lowered limit still loads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from support import in_process
from support.grpc_errors import error_metadata

from kimball_grpc.app import RunningServer
from kimball_grpc.config.settings import Settings
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

# Small limits; event names per namespace x namespaces (12) is above the counter limit (10),
# so that the counter limit can be reached on its own.
LIMITS = {
    "max_namespaces": 3,
    "max_event_names": 4,
    "max_counters": 10,
    "max_goals": 2,
    "max_feature_specs": 2,
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return in_process.local_settings(
        tmp_path, counter_config=in_process.weekly_counters("^weekly_", 10, 0.01), **LIMITS
    )


@dataclass(frozen=True)
class Refusal:
    message: str
    details: dict[str, str]


def event(name: str, user: str = "u1", namespace: str = "", **fields: object) -> dict:
    return {"event_name": name, "user_id": user, "namespace": namespace, **fields}


class Grpc:
    """Requests over gRPC; a refusal must be RESOURCE_EXHAUSTED."""

    def __init__(self, stub: pb_grpc.KimballServiceStub) -> None:
        self.stub = stub

    async def track(self, events: list[dict]) -> Refusal | None:
        messages = [pb.Event(**_with_timestamp(e)) for e in events]
        return await self._call(self.stub.TrackEvents(pb.TrackEventsRequest(events=messages)))

    async def create_goal(self, goal: str, namespace: str = "") -> Refusal | None:
        request = pb.CreateGoalRequest(goal_name=goal, namespace=namespace)
        return await self._call(self.stub.CreateGoal(request))

    async def put_spec(self, name: str) -> Refusal | None:
        request = pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name=name, boolean=True))
        return await self._call(self.stub.PutFeatureSpec(request))

    async def _call(self, call) -> Refusal | None:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return Refusal(exc.details() or "", error_metadata(exc))
        return None


class Rest:
    """Requests over REST; a refusal must be a 429."""

    def __init__(self, http) -> None:
        self.http = http

    async def track(self, events: list[dict]) -> Refusal | None:
        return await self._post("/v0/analytics", {"events": events})

    async def create_goal(self, goal: str, namespace: str = "") -> Refusal | None:
        return await self._post("/v0/goals", {"goal_name": goal, "namespace": namespace})

    async def put_spec(self, name: str) -> Refusal | None:
        return await self._post("/v0/featureSpecs", {"name": name, "boolean": True})

    async def _post(self, path: str, body: dict) -> Refusal | None:
        async with self.http.post(path, json=body) as response:
            if response.status < 300:
                return None
            assert response.status == 429, await response.text()
            error = dict((await response.json())["error"])
            return Refusal(error.pop("what"), error)


def _with_timestamp(event: dict) -> dict:
    if "datetime" not in event:
        return event
    stamp = Timestamp()
    stamp.FromJsonString(event["datetime"])
    return {**event, "datetime": stamp}


@pytest.fixture(params=["grpc", "rest"])
async def client(request, server, stub) -> AsyncIterator[Grpc | Rest]:
    if request.param == "grpc":
        yield Grpc(stub)
        return
    async with in_process.gateway_of(server) as gateway, in_process.rest_client(gateway) as http:
        yield Rest(http)


def refusals(server: RunningServer, limit: str) -> float | None:
    registry = server.metrics.registry
    return registry.get_sample_value("kimball_limit_refusals_total", {"limit": limit})


def named(server: RunningServer, namespace: str = "default") -> dict[str, int]:
    return {c.name: c.count for c in server.engine.counters(namespace) if c.kind.value == "named"}


# --- one limit at a time ---------------------------------------------------------------


async def test_namespaces_up_to_the_limit_then_refused(client, server):
    assert await client.track([event("e", namespace="a"), event("e", namespace="b")]) is None
    assert await client.track([event("e", namespace="c")]) is None  # at the limit: 3
    refusal = await client.track([event("e", namespace="d")])
    assert refusal == Refusal(
        "namespace limit reached: 3 namespaces (KIMBALL_MAX_NAMESPACES)",
        {"limit": "namespaces", "setting": "KIMBALL_MAX_NAMESPACES"},
    )
    assert server.engine.namespaces() == ["a", "b", "c"]
    assert refusals(server, "namespaces") == 1
    # A goal in a new namespace would make one too; existing namespaces take more.
    assert (await client.create_goal("g", namespace="d")) is not None
    assert await client.track([event("e", "u2", namespace="a")]) is None
    assert named(server, "a") == {"e": 2}
    assert refusals(server, "namespaces") == 2


async def test_event_names_per_namespace_up_to_the_limit_then_refused(client, server):
    assert await client.track([event(f"e{i}", namespace="a") for i in range(4)]) is None
    refusal = await client.track([event("e4", namespace="a")])
    assert refusal == Refusal(
        "event name limit reached: 4 event names in namespace 'a' (KIMBALL_MAX_EVENT_NAMES)",
        {"limit": "event_names", "setting": "KIMBALL_MAX_EVENT_NAMES", "namespace": "a"},
    )
    assert sorted(named(server, "a")) == ["e0", "e1", "e2", "e3"]
    assert refusals(server, "event_names") == 1
    assert await client.track([event("e4", namespace="b")]) is None  # per namespace
    assert await client.track([event("e0", "u2", namespace="a")]) is None  # a known name


async def test_counters_in_all_namespaces_up_to_the_limit_then_refused(client, server):
    assert await client.track([event(f"e{i}", namespace="a") for i in range(4)]) is None
    assert await client.track([event(f"e{i}", namespace="b") for i in range(4)]) is None
    assert await client.track([event(f"e{i}", namespace="c") for i in range(2)]) is None  # 10
    refusal = await client.track([event("e2", namespace="c")])
    assert refusal == Refusal(
        "counter limit reached: 10 counters in all namespaces (KIMBALL_MAX_COUNTERS)",
        {"limit": "counters", "setting": "KIMBALL_MAX_COUNTERS"},
    )
    assert sorted(named(server, "c")) == ["e0", "e1"]
    assert refusals(server, "counters") == 1


async def test_weekly_counters_count_against_the_counter_limit(client, server):
    # Each week of a weekly event is a counter of its own, besides the event's counter:
    # 1 + 9 weeks = 10 counters.
    weeks = [event("weekly_x", datetime=f"2024-01-{1 + 7 * i:02d}T12:00:00Z") for i in range(4)]
    weeks += [event("weekly_x", datetime=f"2024-02-{1 + 7 * i:02d}T12:00:00Z") for i in range(4)]
    weeks += [event("weekly_x", datetime="2024-03-04T12:00:00Z")]
    assert await client.track(weeks) is None
    assert server.engine.counter_count == 10
    refusal = await client.track([event("weekly_x", datetime="2024-03-11T12:00:00Z")])
    assert refusal is not None and refusal.details["limit"] == "counters"
    assert server.engine.counter_count == 10
    # A week already counted takes more users.
    assert await client.track([event("weekly_x", "u2", datetime="2024-03-04T13:00:00Z")]) is None


async def test_goals_per_namespace_up_to_the_limit_then_refused(client, server):
    assert await client.create_goal("g1") is None
    assert await client.track([event("g2", ensure_goal=True)]) is None  # at the limit: 2
    expected = Refusal(
        "goal limit reached: 2 goals in namespace 'default' (KIMBALL_MAX_GOALS)",
        {"limit": "goals", "setting": "KIMBALL_MAX_GOALS", "namespace": "default"},
    )
    assert await client.create_goal("g3") == expected
    assert await client.track([event("g3", ensure_goal=True)]) == expected
    assert server.engine.goals("default") == ["g1", "g2"]
    assert named(server) == {"g2": 1}  # the refused goal event was not counted either
    assert refusals(server, "goals") == 2
    assert await client.create_goal("g1") is None  # already a goal
    assert await client.create_goal("g3", namespace="other") is None  # per namespace


async def test_feature_specs_up_to_the_limit_then_refused(client, server):
    assert await client.put_spec("a") is None
    assert await client.put_spec("b") is None
    refusal = await client.put_spec("c")
    assert refusal == Refusal(
        "feature spec limit reached: 2 feature specs (KIMBALL_MAX_FEATURE_SPECS)",
        {"limit": "feature_specs", "setting": "KIMBALL_MAX_FEATURE_SPECS", "name": "c"},
    )
    assert [s.name for s in server.engine.flags.listed()] == ["a", "b"]
    assert refusals(server, "feature_specs") == 1
    assert await client.put_spec("a") is None  # replacing one adds none


async def test_a_batch_with_one_event_past_a_limit_is_refused_whole(client, server):
    assert await client.track([event(f"e{i}", namespace="a") for i in range(4)]) is None
    batch = [event("e0", "new-user", namespace="a"), event("e1", "u9", namespace="b")]
    batch += [event("e4", "u3", namespace="a")]  # the fifth event name of namespace a
    refusal = await client.track(batch)
    assert refusal is not None and refusal.details["limit"] == "event_names"
    assert named(server, "a") == {"e0": 1, "e1": 1, "e2": 1, "e3": 1}
    assert server.engine.namespaces() == ["a"]


async def test_a_batch_is_counted_with_what_it_adds_itself(client, server):
    batch = [event("e", namespace=ns) for ns in ("a", "b", "c", "d")]  # 4 new namespaces
    refusal = await client.track(batch)
    assert refusal is not None and refusal.details["limit"] == "namespaces"
    assert server.engine.namespaces() == []


# --- concurrency, streams, flag evaluations ------------------------------------------------


async def test_batches_in_flight_together_cannot_pass_a_limit(stub, server):
    # Admitted batches wait for the write-ahead log together (group commit): each is
    # checked with what the others will add, so exactly the limit gets in.
    calls = [
        stub.TrackEvent(
            pb.TrackEventRequest(event=pb.Event(event_name="e", user_id="u", namespace=f"n{i}"))
        )
        for i in range(20)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(r.code() is grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert len(refused) == 17
    assert len(server.engine.namespaces()) == 3
    assert refusals(server, "namespaces") == 17


async def test_a_stream_ends_at_the_message_past_a_limit(stub, server):
    def message(namespace: str) -> pb.TrackEventsRequest:
        return pb.TrackEventsRequest(
            events=[
                pb.Event(event_name="e", user_id=f"u{i}", namespace=namespace) for i in range(5)
            ]
        )

    requests = [message("a"), message("b"), message("c"), message("d"), message("a")]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.StreamEvents(iter(requests))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == (
        "message 3: namespace limit reached: 3 namespaces (KIMBALL_MAX_NAMESPACES) "
        "(15 events accepted before it)"
    )
    assert error_metadata(refused.value)["limit"] == "namespaces"
    assert server.engine.namespaces() == ["a", "b", "c"]


async def test_a_flag_evaluation_past_a_limit_is_answered_and_its_usage_counted_lost(stub, server):
    await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="f", boolean=True)))
    for namespace in ("a", "b", "c"):
        await stub.TrackEvent(
            pb.TrackEventRequest(event=pb.Event(event_name="e", user_id="u", namespace=namespace))
        )
    request = pb.EvaluateFeaturesRequest()
    request.user.update({"user_id": "u1"})
    request.context.update({"feature": "f", "namespace": "d"})
    answer = await stub.EvaluateFeatures(request)
    assert dict(answer.features) == {"f": True}
    assert server.engine.namespaces() == ["a", "b", "c"]
    registry = server.metrics.registry
    lost = {"code": "RESOURCE_EXHAUSTED"}
    assert registry.get_sample_value("kimball_feature_usage_lost_total", lost) == 1
    assert refusals(server, "namespaces") == 1


async def test_every_limit_has_its_refusal_series_from_the_start(server):
    for limit in ("namespaces", "event_names", "counters", "goals", "feature_specs"):
        assert refusals(server, limit) == 0
    assert refusals(server, "feature_spec_bytes") == 0


# --- state past a lowered limit ------------------------------------------------------------


async def test_state_past_lowered_limits_loads_and_only_new_growth_is_refused(tmp_path):
    generous = in_process.local_settings(tmp_path)
    async with in_process.running(generous) as server, in_process.stub_of(server) as stub:
        await _track(stub, [("a", f"e{i}", "u1") for i in range(3)] + [("b", "e0", "u1")])
        await stub.CreateGoal(pb.CreateGoalRequest(namespace="a", goal_name="g1"))
        await stub.CreateGoal(pb.CreateGoalRequest(namespace="a", goal_name="g2"))
        for name in ("f1", "f2"):
            spec = pb.FeatureSpec(name=name, boolean=True)
            await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))
    # Stopped: a snapshot. Then more, in the write-ahead log only.
    server = await in_process.started(generous)
    async with in_process.stub_of(server) as stub:
        await _track(stub, [("c", "e0", "u1"), ("c", "e1", "u1")])
    await in_process.crash(server)

    lowered = in_process.local_settings(
        tmp_path,
        max_namespaces=1,
        max_event_names=1,
        max_counters=1,
        max_goals=1,
        max_feature_specs=1,
    )
    async with in_process.running(lowered) as server, in_process.stub_of(server) as stub:
        engine = server.engine
        assert engine.namespaces() == ["a", "b", "c"]
        assert sorted(named(server, "a")) == ["e0", "e1", "e2"]
        assert engine.goals("a") == ["g1", "g2"]
        assert [s.name for s in engine.flags.listed()] == ["f1", "f2"]
        assert engine.counter_count == 6
        # What exists takes more users; anything new is refused, each by its limit.
        await _track(stub, [("a", "e2", "u2"), ("c", "e1", "u2")])
        assert named(server, "c") == {"e0": 1, "e1": 2}
        for events, limit in (
            ([("d", "e0", "u1")], "namespaces"),
            ([("a", "e3", "u1")], "event_names"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _track(stub, events)
            assert error_metadata(refused.value)["limit"] == limit
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateGoal(pb.CreateGoalRequest(namespace="a", goal_name="g3"))
        assert error_metadata(refused.value)["limit"] == "goals"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            spec = pb.FeatureSpec(name="f3", boolean=True)
            await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))
        assert error_metadata(refused.value)["limit"] == "feature_specs"
        assert engine.namespaces() == ["a", "b", "c"]


async def _track(stub: pb_grpc.KimballServiceStub, events: list[tuple[str, str, str]]) -> None:
    messages = [pb.Event(namespace=ns, event_name=name, user_id=user) for ns, name, user in events]
    await stub.TrackEvents(pb.TrackEventsRequest(events=messages))

"""Feature flags through the APIs: the original REST routes and the gRPC methods, on a real
server (REST over both the in-process and the network channel), and across a restart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from support.grpc_errors import error_metadata
from support.in_process import crash, local_settings, running, started, stub_of
from support.metrics import samples

from kimball_grpc.api import ingest
from kimball_grpc.codec.proto_mapping import flags_to_proto
from kimball_grpc.config.tokens import token_id
from kimball_grpc.core.errors import LimitExceeded
from kimball_grpc.core.feature_flags import FeatureFlags, FeatureSpec, UserCondition, check_spec
from kimball_grpc.core.limits import FEATURE_SPEC_BYTES
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.streaming.spec_changes import SpecChanges


def b64(value: object, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(json.dumps(value).encode()).decode()


async def post_spec(http, body: object) -> tuple[int, object]:
    async with http.post("/v0/featureSpecs", json=body) as response:
        return response.status, await response.json()


async def features(http, user: object, context: object | None = None) -> dict[str, bool]:
    params = {"user_obj": b64(user)}
    if context is not None:
        params["context_obj"] = b64(context, urlsafe=True)
    async with http.get("/v0/features", params=params) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["features"]


async def test_specs_are_created_listed_replaced_and_deleted(http):
    status, created = await post_spec(
        http,
        {
            "name": "beta",
            "boolean": False,
            "user": [
                ["plan", "in", ["pro", "team"]],
                {"property": "id", "comparator": "=", "value": 7},
            ],
        },
    )
    assert status == 200
    assert created == {
        "name": "beta",
        "boolean": False,
        "user": [
            {"property": "plan", "comparator": "in", "value": ["pro", "team"]},
            {"property": "id", "comparator": "=", "value": 7},
        ],
    }
    async with http.get("/v0/featureSpecs/") as response:  # a trailing slash, as the original
        listed = await response.json()
    assert listed["featureSpecs"] == [created]
    version = listed["version"]
    assert (await post_spec(http, {"name": "beta", "boolean": True}))[0] == 200  # replaced
    async with http.get("/v0/featureSpecs/beta") as response:
        assert (await response.json())["boolean"] is True
    async with http.delete("/v0/featureSpecs/beta") as response:
        assert response.status == 204
    async with http.get("/v0/featureSpecs") as response:
        after = await response.json()
    assert after == {"featureSpecs": [], "version": version + 2}
    async with http.get("/v0/featureSpecs/beta") as response:
        assert response.status == 404
        assert (await response.json())["error"]["name"] == "beta"
    async with http.delete("/v0/featureSpecs/beta") as response:
        assert response.status == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"boolean": True}, "name"),
        ({"name": "f", "rollout_start": "2026-01-02T00:00:00Z"}, "rollout_end"),
        (
            {
                "name": "f",
                "rollout_start": "2026-01-02T00:00:00Z",
                "rollout_end": "2026-01-01T00:00:00Z",
            },
            "after rollout_start",
        ),
        (
            {"name": "f", "rollout_start": "yesterday", "rollout_end": "2026-01-01T00:00:00Z"},
            "rollout_start",
        ),
        ({"name": "f", "user": [["plan", "~", "pro"]]}, "unknown comparator"),
        ({"name": "f", "user": [["plan", "in", "pro"]]}, '"in" needs a list'),
        ({"name": "f", "user": [["plan", "="]]}, "[property, comparator, value]"),
        ({"name": "f", "boolean": "yes"}, "boolean"),
        (["name", "f"], "feature spec object"),
    ],
)
async def test_a_bad_spec_is_a_400_naming_the_problem_and_changes_nothing(http, body, fragment):
    status, answer = await post_spec(http, body)
    assert status == 400, answer
    assert fragment in answer["error"]["what"] + json.dumps(answer["error"]), answer
    async with http.get("/v0/featureSpecs") as response:
        assert (await response.json())["featureSpecs"] == []


async def test_evaluation_follows_conditions_rollout_and_boolean(http):
    now = datetime.now(UTC)
    await post_spec(http, {"name": "on", "boolean": True})
    await post_spec(http, {"name": "pro", "user": [["plan", "=", "pro"]]})
    await post_spec(
        http,
        {
            "name": "half",
            "rollout_start": (now - timedelta(days=5)).isoformat(),
            "rollout_end": (now + timedelta(days=5)).isoformat(),
        },
    )
    first = await features(http, {"user_id": "u1", "plan": "pro"})
    assert first["on"] is True and first["pro"] is True
    assert await features(http, {"user_id": "u1", "plan": "free"}) == first | {"pro": False}
    # Sticky: the same user gets the same rollout answer every time; about half are in.
    answers = [(await features(http, {"user_id": f"user-{i}"}))["half"] for i in range(60)]
    assert answers == [(await features(http, {"user_id": f"user-{i}"}))["half"] for i in range(60)]
    assert 10 < sum(answers) < 50


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"user_obj": "not base64!"}, "user_obj"),
        ({"user_obj": base64.b64encode(b"{not json").decode()}, "user_obj"),
        ({"context_obj": b64([1, 2])}, "context_obj"),
        ({"user_obj": b64({}), "other": "x"}, "other"),
    ],
)
async def test_bad_base64_or_json_is_a_400_naming_the_parameter(http, params, parameter):
    async with http.get("/v0/features", params=params) as response:
        assert response.status == 400
        assert (await response.json())["error"]["parameter"] == parameter


async def test_a_context_feature_counts_the_users_usage_as_an_event(http):
    await post_spec(http, {"name": "checkout_v2", "boolean": True})
    await features(http, {"user_id": "ann"}, {"feature": "checkout_v2", "namespace": "shop"})
    await features(http, {"user_id": "bob"}, {"feature": "checkout_v2", "namespace": "shop"})
    await features(http, {"plan": "x"}, {"feature": "checkout_v2", "namespace": "shop"})  # no id
    async with http.get("/v0/analytics", params={"namespace": "shop"}) as response:
        counts = {c["name"]: c["count"] for c in (await response.json())["counts"]}
    assert counts["checkout_v2"] == 2


async def test_grpc_methods_and_the_watch_stream(stub):
    watch = stub.WatchFeatureSpecs(pb.WatchFeatureSpecsRequest())
    empty = await watch.read()
    assert (list(empty.specs), empty.version) == ([], 0)
    spec = pb.FeatureSpec(name="dark_mode", boolean=True)
    spec.user.add(property="beta", comparator="=").value.bool_value = True
    stored = await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))
    assert stored == spec
    changed = await watch.read()
    assert [s.name for s in changed.specs] == ["dark_mode"] and changed.version == 1
    watch.cancel()
    request = pb.EvaluateFeaturesRequest()
    request.user.update({"user_id": "u", "beta": False})
    assert dict((await stub.EvaluateFeatures(request)).features) == {"dark_mode": True}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="")))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(refused.value) == {"key": "name"}


async def test_specs_survive_a_restart_with_their_version(tmp_path):
    settings = local_settings(tmp_path)
    async with running(settings) as server:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for name in ("a", "b", "c"):
            await server.ingestor.put_feature_spec(_spec(name, start))
        await server.persistence.snapshot()  # a snapshot holds a and b and c ...
        await server.ingestor.delete_feature_spec("b")  # ... and the log this change
        before = (server.engine.flags.listed(), server.engine.flags.version)

    async with running(settings) as again:
        assert (again.engine.flags.listed(), again.engine.flags.version) == before


def _spec(name: str, start: datetime) -> FeatureSpec:
    return check_spec(
        FeatureSpec(
            name,
            True,
            start,
            start + timedelta(days=3),
            (UserCondition("n", "in", [1, 2.5, "x", None, {"k": [True]}]),),
        )
    )


async def test_spec_changes_are_replayed_from_the_log_after_a_crash(tmp_path):
    settings = local_settings(tmp_path, max_feature_specs=2)
    server = await started(settings)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    await server.ingestor.put_feature_spec(_spec("a", start))
    await server.ingestor.put_feature_spec(_spec("b", start))
    with pytest.raises(LimitExceeded, match="2 feature specs"):
        await server.ingestor.put_feature_spec(_spec("c", start))  # refused: not logged
    await server.ingestor.delete_feature_spec("a")
    await server.ingestor.put_feature_spec(_spec("a", start))
    before = (server.engine.flags.listed(), server.engine.flags.version)
    await crash(server)

    async with running(settings) as again:  # replays the spec records: no snapshot was taken
        assert (again.engine.flags.listed(), again.engine.flags.version) == before


async def test_a_set_of_specs_too_large_for_one_message_is_refused(stub, monkeypatch):
    monkeypatch.setattr(ingest, "FEATURE_SPEC_BYTES", FEATURE_SPEC_BYTES._replace(default=10_000))
    spec = pb.FeatureSpec(name="big")
    listed = spec.user.add(property="country", comparator="in").value.list_value
    for i in range(1_000):
        listed.values.add().string_value = f"country-{i:04d}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 10000" in refused.value.details()
    assert error_metadata(refused.value)["limit"] == "feature_spec_bytes"
    assert not (await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest())).specs


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"name": "f", "user": [["n", "=", 1e400]]}', "not finite"),
        ('{"name": "f", "user": [["n", "in", [NaN]]]}', "not finite"),
        ('{"name": "f", "user": "plan"}', "user must be a list"),
        ('{"name": "f", "user": [1]}', "user condition 0"),
        ('{"name": "f", "user": [{"property": "p", "comparator": "="}]}', "user condition 0"),
    ],
)
async def test_odd_json_in_a_spec_is_a_400(http, body, fragment):
    async with http.post(
        "/v0/featureSpecs", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert fragment in (await response.json())["error"]["what"]


async def test_odd_json_in_an_evaluation_is_a_400_naming_it(http):
    user = base64.b64encode(b'{"user_id": "u", "score": Infinity}').decode()
    async with http.get("/v0/features", params={"user_obj": user}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["key"] == "user"
    params = {"user_obj": b64({"user_id": "u" * 300}), "context_obj": b64({"feature": "f"})}
    async with http.get("/v0/features", params=params) as response:
        assert response.status == 400
        assert "user.user_id" in (await response.json())["error"]  # named, with the value
    async with http.get("/v0/featureSpecs/a", params={"name": "b"}) as response:
        assert response.status == 400  # the name is the path's, not a query parameter


async def test_a_watch_sends_a_different_set_even_at_the_same_version():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    held, other = FeatureFlags(), FeatureFlags()
    held.replace_all([_spec("a", start), _spec("b", start)], 2)
    other.replace_all([_spec("x", start), _spec("y", start)], 2)  # a replaced state
    changes = SpecChanges()
    watch = changes.watch(other, flags_to_proto(held).fingerprint)
    sent = await asyncio.wait_for(anext(watch), 5)
    assert [s.name for s in sent.specs] == ["x", "y"] and sent.version == 2
    await watch.aclose()


async def test_a_percentage_rollout_and_variants_are_answered_over_rest_and_grpc(http, stub):
    status, created = await post_spec(
        http,
        {
            "name": "gr1",
            "rollout_percentage": 73,
            "variants": [{"name": "blue", "weight": 1}, {"name": "green", "weight": 0}],
        },
    )
    assert status == 200, created
    assert created["rollout_percentage"] == 73 and created["variants"][0]["name"] == "blue"
    # Unleash's bucket of group "gr1" and id "123" is 73 (see the unit tests).
    async with http.get("/v0/features", params={"user_obj": b64({"user_id": "123"})}) as response:
        assert await response.json() == {"features": {"gr1": True}, "variants": {"gr1": "blue"}}
    request = pb.EvaluateFeaturesRequest()
    request.user.update({"user_id": "123"})
    answer = await stub.EvaluateFeatures(request)
    assert (dict(answer.features), dict(answer.variants)) == ({"gr1": True}, {"gr1": "blue"})
    await post_spec(http, {"name": "gr1", "rollout_percentage": 72})
    async with http.get("/v0/features", params={"user_obj": b64({"user_id": "123"})}) as response:
        assert await response.json() == {"features": {"gr1": False}}  # no variants key


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "f", "rollout_percentage": 101}, "rollout_percentage must be 0 to 100"),
        ({"name": "f", "variants": [{"name": "v", "weight": -5}]}, "weight must be 0 to 1000"),
        ({"name": "f", "stickiness": "org"}, "stickiness applies"),
        ({"name": "f", "rollout_percentage": "half"}, "rollout_percentage"),
    ],
)
async def test_a_bad_rollout_or_variant_is_a_400_and_changes_nothing(http, body, fragment):
    status, answer = await post_spec(http, body)
    assert status == 400, answer
    assert fragment in json.dumps(answer["error"]), answer
    async with http.get("/v0/featureSpecs") as response:
        assert (await response.json())["featureSpecs"] == []


async def test_history_over_grpc_names_the_token_and_pages(tmp_path):
    settings = local_settings(tmp_path, api_auth=True, api_auth_tokens=("s3cret",))
    token = [("authorization", "Bearer s3cret")]
    async with running(settings) as server, stub_of(server) as stub:
        for boolean in (False, True):
            spec = pb.FeatureSpec(name="f", boolean=boolean)
            await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec), metadata=token)
        await stub.DeleteFeatureSpec(pb.DeleteFeatureSpecRequest(name="f"), metadata=token)
        request = pb.GetFeatureSpecHistoryRequest(name="f", page_size=2)
        first = await stub.GetFeatureSpecHistory(request, metadata=token)
        request.page_token = first.next_page_token
        second = await stub.GetFeatureSpecHistory(request, metadata=token)
    changes = [*first.changes, *second.changes]
    assert len(first.changes) == 2 and not second.next_page_token
    assert {c.token_id for c in changes} == {token_id("s3cret")}
    deleted, replaced, created = changes
    assert not deleted.HasField("new_spec") and deleted.old_spec.boolean is True
    assert replaced.old_spec.boolean is False and replaced.new_spec.boolean is True
    assert not created.HasField("old_spec") and created.new_spec.name == "f"
    assert created.time.ToDatetime(UTC) <= deleted.time.ToDatetime(UTC)


async def test_history_over_rest_and_its_errors(http):
    await post_spec(http, {"name": "f", "boolean": True})
    await post_spec(http, {"name": "f", "rollout_percentage": 10})
    async with http.get("/v0/featureSpecs/f/history") as response:
        assert response.status == 200
        history = await response.json()
    newest, created = history["changes"]
    assert newest["token_id"] == created["token_id"] == "anonymous"  # no token sent
    assert (
        newest["old_spec"]
        == created["new_spec"]
        == {
            "name": "f",
            "boolean": True,
            "user": [],
        }
    )
    assert newest["new_spec"]["rollout_percentage"] == 10 and created["old_spec"] is None
    assert datetime.fromisoformat(newest["time"]) <= datetime.now(UTC)
    async with http.get("/v0/featureSpecs/nothing/history") as response:
        assert response.status == 404
    async with http.get("/v0/featureSpecs/f/history", params={"page_size": "-1"}) as response:
        assert response.status == 400
    scope = hashlib.sha256("\x1f".join(("GetFeatureSpecHistory", "f")).encode()).hexdigest()
    forged = base64.urlsafe_b64encode(json.dumps([scope[:16], "x"]).encode()).decode()
    async with http.get("/v0/featureSpecs/f/history", params={"page_token": forged}) as response:
        assert response.status == 400
        assert "not a page of this history" in await response.text()


async def test_history_survives_a_restart_from_a_snapshot_and_the_log(tmp_path):
    settings = local_settings(tmp_path)
    async with running(settings) as server:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        await server.ingestor.put_feature_spec(_spec("a", start), "0000aaaa")
        await server.persistence.snapshot()  # the snapshot holds the first change ...
        await server.ingestor.put_feature_spec(FeatureSpec("a", rollout_percentage=5), "1111bbbb")
        await server.ingestor.delete_feature_spec("a", "2222cccc")  # ... the log the others
        before = server.engine.flags.changes("a")
    async with running(settings) as again:
        assert again.engine.flags.changes("a") == before
        held = samples(again.metrics.registry)[("kimball_feature_spec_history_changes", ())]
    assert [c.token_id for c in before] == ["2222cccc", "1111bbbb", "0000aaaa"]
    assert held == 3

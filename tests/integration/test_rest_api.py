"""The original REST API (the `/v0` routes, in their original shapes) through the gateway,
on real loopback servers."""

from __future__ import annotations

import json
import logging

import pytest
from multidict import CIMultiDict
from support.in_process import local_settings, rest_client
from support.worked_example import as_json

from gateway.server import network_channel, start_gateway
from kimball_grpc.config.settings import Settings
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES

# The worked example (support/worked_example.py), u6's event with a value.
EXAMPLE = as_json("other", value=2.5)


async def post(http, path: str, body: object) -> tuple[int, bytes]:
    async with http.post(path, json=body) as response:
        return response.status, await response.read()


async def get(http, path: str, **params: object) -> tuple[int, object]:
    async with http.get(path, params=params or None) as response:
        return response.status, await response.json()


async def test_batch_post_and_analytics_in_the_original_shapes(http) -> None:
    assert await post(http, "/v0/analytics", {"events": EXAMPLE}) == (204, b"")
    status, body = await get(http, "/v0/analytics")
    assert status == 200
    counts = {c["name"]: c for c in body["counts"]}
    assert counts["global_counter"]["type"] == "internal"
    assert counts["global_counter"]["count"] == 6
    assert counts["feature_1"] == {
        "name": "feature_1",
        "type": "named",
        "count": 2,
        "event_counts": [],
        "single_event_counts": [],
        "value": {"sum": 0.0},
    }
    assert counts["goal_1"]["single_event_counts"] == [{"name": "feature_1", "count": 1}]
    assert counts["goal_1"]["event_counts"] == [
        {"events": [], "count": 3},
        {"events": ["feature_1"], "count": 1},
    ]
    assert counts["other"]["value"] == {"sum": 2.5}


@pytest.mark.parametrize(
    "body",
    [
        {"event_name": "one", "user_id": "u1", "namespace": "shop"},
        [{"event_name": "one", "user_id": "u1", "namespace": "shop"}],
        {"events": [{"event_name": "one", "user_id": "u1", "namespace": "shop"}]},
    ],
    ids=["one-event", "bare-array", "events"],
)
async def test_every_original_body_form_is_taken(http, body) -> None:
    assert (await post(http, "/v0/analytics", body))[0] == 204
    _, analytics = await get(http, "/v0/analytics", namespace="shop")
    assert [(c["name"], c["count"]) for c in analytics["counts"]] == [
        ("global_counter", 1),
        ("one", 1),
    ]


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ({"event_name": "a", "user_id": "u", "events": []}, "not both"),
        ({"event_name": "a"}, "user_id"),
        (
            {"event_name": "a", "user_id": "u", "value": "lots"},
            "value must be a number, got a string",
        ),
        ({"event_name": "a", "user_id": "u", "datetime": "yesterday"}, "datetime must be an RFC"),
        ({"event_name": "a", "user_id": "u", "colour": "red"}, "colour is not a field"),
        ({"event_name": "a", "user_id": "u", "value": True}, "must be a number"),
        ({"events": [{"event_name": "a", "user_id": "u", "value": False}]}, "must be a number"),
        ({"event_name": "sign\nup", "user_id": "u"}, "control characters"),
        ({"event_name": "a", "user_id": "u", "value": 10**400}, "value must be a number that fits"),
        ("just a string", "the body must be"),
        (
            {"events": [{"event_name": "a", "user_id": "u"}, {"event_name": "", "user_id": "u"}]},
            "event 1",
        ),
    ],
)
async def test_bad_bodies_are_400_and_change_nothing(http, body, what) -> None:
    async with http.post("/v0/analytics", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert what in error["what"]
    assert (await get(http, "/v0/namespaces"))[1] == {"namespaces": []}


HUGE = "9" * 5000  # more digits than Python's int() converts (4,300)


@pytest.mark.parametrize(
    ("path", "bad", "what", "good"),
    [
        (
            "/v0/analytics",
            f'{{"event_name": "a", "user_id": {HUGE}}}',
            "user_id must be a string",
            '{"event_name": "a", "user_id": "9"}',
        ),
        (
            "/v0/analytics",
            f'{{"event_name": "a", "user_id": "u", "value": {HUGE}}}',
            "value must be a number that fits a double",
            '{"event_name": "a", "user_id": "u", "value": 9}',
        ),
        (
            "/v0/goals",
            f'{{"goal_name": {HUGE}}}',
            "goal_name must be a string",
            '{"goal_name": "9"}',
        ),
        (
            "/v0/featureSpecs",
            f'{{"name": "f", "boolean": {HUGE}}}',
            "boolean must be true or false",
            '{"name": "f", "boolean": true}',
        ),
        (
            "/v0/featureSpecs",
            f'{{"name": "f", "user": [["plan", "=", {HUGE}]]}}',
            "value must be a number that fits a double",
            '{"name": "f", "user": [["plan", "=", 9]]}',
        ),
    ],
)
async def test_huge_integers_are_400_naming_the_field(http, path, bad, what, good) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post(path, data=bad, headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["what"] == f"{what}, got a number of 5000 digits"
    assert (await get(http, "/v0/namespaces"))[1] == {"namespaces": []}
    async with http.post(path, data=good, headers=headers) as response:
        assert response.status in (200, 204)  # a spec is answered, events and goals are not


@pytest.mark.parametrize(
    ("body", "what", "field"),
    [
        ({"event_name": "a", "user_id": 12}, "user_id must be a string, got a number", None),
        ({"event_name": ["a"], "user_id": "u"}, "event_name must be a string, got a list", None),
        ({"event_name": "a", "user_id": "u", "ensure_goal": "yes"}, "true or false", None),
        ({"event_name": "a", "user_id": "u", "value": {}}, "must be a number, got an object", None),
        ({"events": {"event_name": "a"}}, "events must be a list, got an object", "events"),
        (
            {"events": [{"event_name": "a", "user_id": "u"}, "b"]},
            "events[1] must be an object",
            None,
        ),
    ],
)
async def test_wrong_json_types_are_400_naming_the_field_and_the_type(
    http, body, what, field
) -> None:
    async with http.post("/v0/analytics", json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert what in error["what"]
    assert "expected string or bytes" not in error["what"]  # not the parser's words
    if field is not None:
        assert error["field"] == field
    assert (await get(http, "/v0/namespaces"))[1] == {"namespaces": []}


async def test_json_nested_too_deep_is_400(http) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    headers = {"Content-Type": "application/json"}
    async with http.post("/v0/analytics", data=body, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["what"] == "The object is not valid JSON"


async def test_content_type_json_syntax_and_size(http) -> None:
    async with http.post("/v0/analytics", data=b"{}", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415
        assert (await r.json())["error"]["expected_types"] == ["application/json"]
    headers = {"Content-Type": "application/json; charset=utf-8"}
    async with http.post("/v0/analytics", data=b"{nope", headers=headers) as r:
        assert r.status == 400
        assert (await r.json())["error"]["what"] == "The object is not valid JSON"
    big = b'{"events": [' + b'{"event_name": "a", "user_id": "u"},' * (MAX_MESSAGE_BYTES // 30)
    async with http.post("/v0/analytics", data=big + b"{}]}", headers=headers) as r:
        assert r.status == 413
    good = b'{"event_name": "a", "user_id": "u"}'
    async with http.post("/v0/analytics", data=good, headers=headers) as r:
        assert r.status == 204


@pytest.mark.parametrize("body", [None, [], "goal", 3])
async def test_goal_body_must_be_an_object(http, body) -> None:
    raw = json.dumps(body).encode()  # json=None would send no body at all
    headers = {"Content-Type": "application/json"}
    async with http.post("/v0/goals", data=raw, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["what"] == "The body must be a JSON object"


async def test_names_may_hold_emoji_with_joiners(http) -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert (await post(http, "/v0/analytics", {"event_name": family, "user_id": "u"}))[0] == 204
    _, analytics = await get(http, "/v0/analytics")
    assert family in {c["name"] for c in analytics["counts"]}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v0/analytics", {"event_name": "pay\u200bment", "user_id": "u"}, "event_name"),
        ("/v0/analytics", {"event_name": "\u202etxt.exe", "user_id": "u"}, "event_name"),
        ("/v0/analytics", {"event_name": "a", "user_id": "u", "namespace": "\u2060x"}, "namespace"),
        ("/v0/goals", {"goal_name": "pay\u00adment"}, "goal_name"),
    ],
)
async def test_names_with_invisible_characters_are_400_and_change_nothing(
    http, path, body, field
) -> None:
    async with http.post(path, json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["what"].startswith(f"{field} contains U+")
    assert field in error
    assert (await get(http, "/v0/namespaces"))[1] == {"namespaces": []}


async def test_original_client_batches_of_100(http) -> None:
    batch = [
        {
            "namespace": "app",
            "user_id": f"u{i % 40}",
            "event_name": f"e{i % 7}",
            "ensure_goal": i % 7 == 6,
        }
        for i in range(100)
    ]
    assert await post(http, "/v0/analytics", {"events": batch}) == (204, b"")
    _, analytics = await get(http, "/v0/analytics", namespace="app")
    counts = {c["name"]: c["count"] for c in analytics["counts"]}
    assert counts["global_counter"] == 40
    assert sum(counts[f"e{k}"] for k in range(7)) == 100  # each (user, event) pair once
    assert await get(http, "/v0/goals", namespace="app") == (200, {"goals": ["e6"]})


async def test_goals_and_namespaces(http) -> None:
    assert await post(http, "/v0/goals", {"goal_name": "purchase"}) == (204, b"")
    assert await post(http, "/v0/goals", {"goal_name": "x", "namespace": "shop"}) == (204, b"")
    assert await get(http, "/v0/goals") == (200, {"goals": ["purchase"]})
    assert await get(http, "/v0/goals", namespace="shop") == (200, {"goals": ["x"]})
    assert await get(http, "/v0/namespaces") == (200, {"namespaces": ["default", "shop"]})
    status, body = await get(http, "/v0/goals", namespace="n" * 300)
    assert status == 400 and "namespace" in body["error"]


async def test_predictions_in_every_mode(http) -> None:
    await post(http, "/v0/analytics", EXAMPLE)
    assert await get(http, "/v0/predictions") == (
        200,
        {"goals": {"goal_1": {"events": {"feature_1": {"bayes": 0.5}}}}},
    )
    _, body = await get(http, "/v0/predictions", event="feature_1")
    goal = body["goals"]["goal_1"]
    assert (goal["yes"], goal["no"], goal["likelihood"]) == (0.25, 0.25, 1.0)
    assert 0 < goal["probability"] < 1
    assert await get(http, "/v0/predictions", event="goal_1") == (
        200,
        {"goals": {"goal_1": {"note": "Submitted events included this goal, no prediction made"}}},
    )
    by_user = await get(http, "/v0/predictions", user_id="u2")
    assert by_user == (200, body)
    assert await get(http, "/v0/predictions", namespace="empty") == (200, {"goals": {}})


async def test_two_events_as_repeated_parameters(http) -> None:
    await post(http, "/v0/analytics", EXAMPLE)
    async with http.get("/v0/predictions?event=feature_1&event=other") as response:
        goal = (await response.json())["goals"]["goal_1"]
    assert goal["yes"] == 0.25 * 0.0 and goal["no"] == 0.25 * 0.25


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"event": "nope"}, 400, {"what": "Event is not known in this namespace", "event": "nope"}),
        (
            {"user_id": "u2", "event": "feature_1"},
            400,
            {"what": "user_id and event cannot both be specified", "user": "u2"},
        ),
        ({"user_id": "stranger"}, 404, {"what": "No events found for user", "user": "stranger"}),
    ],
)
async def test_prediction_errors(http, params, status, error) -> None:
    await post(http, "/v0/analytics", EXAMPLE)
    assert await get(http, "/v0/predictions", **params) == (status, {"error": error})


async def test_unknown_or_repeated_parameters_are_400(http) -> None:
    status, body = await get(http, "/v0/analytics", namespaces="x")
    assert status == 400 and body["error"]["parameter"] == "namespaces"
    async with http.get("/v0/goals?namespace=a&namespace=b") as response:
        assert response.status == 400


async def test_nudges(http) -> None:
    await post(http, "/v0/analytics", EXAMPLE)
    assert await get(http, "/v0/nudges", goal="goal_1", user_id="u6") == (
        200,
        {
            "nudges": [{"event_name": "feature_1", "prediction": 0.5}],
            "goal": "goal_1",
            "user_id": "u6",
        },
    )
    status, body = await get(http, "/v0/nudges", user_id="u6")
    assert status == 400 and body["error"]["key"] == "goal"


async def test_alive_ready_and_metrics(http) -> None:
    await post(http, "/v0/analytics", EXAMPLE)
    for path in ("/alive", "/ready"):
        async with http.get(path) as response:
            assert (response.status, await response.text()) == (200, "ok!")
    async with http.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert "kimball_counters 4.0" in text
    # Per REST route (declared path, not the raw URL).
    assert (
        'kimball_http_requests_total{method="POST",route="/v0/analytics",status="204"} 1.0' in text
    )
    assert 'kimball_http_request_duration_seconds_count{route="/alive"} 1.0' in text
    async with http.get("/metrics/counters") as response:
        assert 'kimball_counter{kimball_namespace="default",name="goal_1"} 4.0' in (
            await response.text()
        )
    async with http.get("/metrics/predictions") as response:
        text = await response.text()
    assert (
        'kimball_bayes_prediction{event="feature_1",goal="goal_1",kimball_namespace="default"} 0.5'
        in text
    )


class TestAuthentication:
    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        return local_settings(tmp_path, api_auth=True, api_auth_tokens=("s3cret",))

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v0/analytics"),
            ("POST", "/v0/analytics"),
            ("POST", "/v0/analytics:stream"),
            ("GET", "/v0/goals"),
            ("POST", "/v0/goals"),
            ("GET", "/v0/namespaces"),
            ("GET", "/v0/predictions"),
            ("GET", "/v0/nudges"),
            ("GET", "/metrics"),
            ("GET", "/metrics/counters"),
            ("GET", "/metrics/predictions"),
        ],
    )
    @pytest.mark.parametrize(
        "header",
        [None, "Basic s3cret", "Bearer wrong", "Bearer"],
        ids=["none", "wrong-scheme", "wrong-token", "no-token"],
    )
    async def test_every_route_needs_the_token(self, http, method, path, header) -> None:
        headers = {"Authorization": header} if header else {}
        async with http.request(method, path, json={"goal_name": "g"}, headers=headers) as r:
            assert r.status == 401
            assert await r.json() == {"error": "Missing or invalid authorization header"}

    @pytest.mark.parametrize(
        "values", [("Bearer s3cret", "Bearer wrong"), ("Bearer s3cret", "Bearer s3cret")]
    )
    async def test_two_authorization_headers_are_refused(self, http, values, caplog) -> None:
        caplog.set_level(logging.DEBUG)
        twice = CIMultiDict(("Authorization", value) for value in values)
        async with http.get("/v0/goals", headers=twice) as r:
            assert r.status == 401
            assert await r.json() == {
                "error": "More than one authorization header: send exactly one"
            }
        async with http.get("/v0/goals", headers={"Authorization": values[0]}) as r:
            assert r.status == 200
        lines = [r.getMessage() for r in caplog.records if r.name == "kimball_grpc.api.auth"]
        assert lines == [
            "refused a rest call to GET /v0/goals from 127.0.0.1: "
            "More than one authorization header: send exactly one"
        ]

    async def test_a_gateway_checking_no_token_passes_both_on_and_the_server_refuses(
        self, server
    ) -> None:
        """``kimball gateway`` without tokens of its own: the server decides, on every value."""
        channel = network_channel(
            f"127.0.0.1:{server.grpc_port}", server.front.settings.max_response_bytes
        )
        gateway = await start_gateway("127.0.0.1", 0, channel, None, None)
        try:
            async with rest_client(gateway) as http:
                twice = CIMultiDict([("Authorization", "Bearer s3cret")] * 2)
                async with http.get("/v0/goals", headers=twice) as r:
                    assert r.status == 401
                    assert "More than one" in (await r.json())["error"]
                async with http.get("/v0/goals", headers={"Authorization": "Bearer s3cret"}) as r:
                    assert r.status == 200
        finally:
            await gateway.stop()

    async def test_right_token_in_any_case_and_open_health(self, http) -> None:
        headers = {"Authorization": "bearer s3cret"}
        async with http.post("/v0/goals", json={"goal_name": "g"}, headers=headers) as r:
            assert r.status == 204
        async with http.get("/v0/goals", headers={"Authorization": "Bearer s3cret"}) as r:
            assert await r.json() == {"goals": ["g"]}
        async with http.get("/metrics", headers=headers) as r:
            assert r.status == 200
        stream = {**headers, "Content-Type": "application/x-ndjson"}
        line = b'{"event_name": "e", "user_id": "u"}\n'
        async with http.post("/v0/analytics:stream", data=line, headers=stream) as r:
            assert (r.status, await r.json()) == (200, {"accepted": 1, "messages": 1})
        for path in ("/alive", "/ready"):
            async with http.get(path) as r:
                assert r.status == 200


STREAM = {"Content-Type": "application/x-ndjson"}


async def test_a_stream_of_json_lines_is_applied_line_by_line(http) -> None:
    lines = [
        {"events": [{"event_name": "view", "user_id": u} for u in ("u1", "u2")]},
        {"event_name": "buy", "user_id": "u1", "ensure_goal": True},  # one event
        [{"event_name": "view", "user_id": "u3"}],  # an array of events
    ]
    body = "\n".join(json.dumps(line) for line in lines) + "\n\n"  # blank lines are skipped

    async with http.post("/v0/analytics:stream", data=body, headers=STREAM) as response:
        assert response.status == 200
        assert await response.json() == {"accepted": 4, "messages": 3}
    counts = {c["name"]: c["count"] for c in (await get(http, "/v0/analytics"))[1]["counts"]}
    assert (counts["view"], counts["buy"]) == (3, 1)


async def test_a_bad_line_ends_the_stream_naming_it_and_keeps_what_came_before(http) -> None:
    body = "\n".join(
        [
            json.dumps({"event_name": "view", "user_id": "u1"}),
            json.dumps({"event_name": "view", "user_id": "u2"}),
            "{not json",
            json.dumps({"event_name": "view", "user_id": "u3"}),
        ]
    )
    async with http.post("/v0/analytics:stream", data=body, headers=STREAM) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["what"].startswith("message 2: ")
    assert (error["message"], error["accepted"], error["messages"]) == (2, 2, 2)
    counts = {c["name"]: c["count"] for c in (await get(http, "/v0/analytics"))[1]["counts"]}
    assert counts["view"] == 2  # the lines before it stay applied, nothing after it


async def test_a_line_with_a_huge_integer_or_a_wrong_type_is_named_with_its_field(http) -> None:
    good = json.dumps({"event_name": "ok", "user_id": "u"})
    for line, what in (
        ('{"event_name": "ok", "user_id": ' + "9" * 5000 + "}", "a number of 5000 digits"),
        ('{"event_name": "ok", "user_id": 12}', "user_id must be a string, got a number"),
    ):
        async with http.post("/v0/analytics:stream", data=f"{good}\n{line}", headers=STREAM) as r:
            assert r.status == 400
            error = (await r.json())["error"]
        assert error["what"].startswith("message 1: user_id must be a string")
        assert what in error["what"]
        assert (error["field"], error["accepted"]) == ("events[0].user_id", 1)


async def test_a_line_the_server_refuses_is_named_too(http) -> None:
    body = (
        json.dumps({"event_name": "ok", "user_id": "u"})
        + "\n"
        + json.dumps({"event_name": "", "user_id": "u"})
    )
    async with http.post("/v0/analytics:stream", data=body, headers=STREAM) as response:
        assert response.status == 400
        assert "message 1" in (await response.json())["error"]["what"]


async def test_a_stream_needs_a_json_lines_content_type(http) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post("/v0/analytics:stream", data="{}", headers=headers) as response:
        assert response.status == 415
        assert "application/x-ndjson" in (await response.json())["error"]["expected_types"]


async def test_a_stream_line_over_the_message_limit_is_refused_naming_it(http) -> None:
    from gateway.app import MAX_BODY_BYTES

    many = [{"event_name": "view", "user_id": f"user-{i:06d}"} for i in range(90_000)]
    big = json.dumps(many)
    assert len(big) > MAX_BODY_BYTES
    body = json.dumps({"event_name": "ok", "user_id": "u"}) + "\n" + big + "\n"
    async with http.post("/v0/analytics:stream", data=body, headers=STREAM) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["what"] == f"message 1: a line is longer than {MAX_BODY_BYTES} bytes: split it"
    assert error["accepted"] == 1

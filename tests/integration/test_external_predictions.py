"""External prediction targets: real KimballIntegration servers on loopback, no mocks."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry
from support.in_process import gateway_of, local_settings, rest_client, running
from support.metrics import samples
from support.polling import until
from support.ports import reserved_port

from gateway.response_shapes import predictions_json
from kimball_grpc.config.settings import PredictionTarget
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.generated import features_proto_pb2 as ipb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.outbound.external_predictions import (
    ExternalAnswer,
    ExternalPredictions,
    TargetIssue,
)

Context = grpc.aio.ServicerContext


class Echo(integration_grpc.KimballIntegrationServicer):
    """Answers from the request, so a test sees it arrived whole; records every peer."""

    def __init__(self) -> None:
        self.requests: list[ipb.PredictionRequest] = []
        self.peers: list[str] = []

    async def Prediction(self, request: ipb.PredictionRequest, context: Context):
        self.requests.append(request)
        self.peers.append(context.peer())
        return ipb.PredictionResponse(
            predictions=[
                ipb.Prediction(prediction_name="goal", yes=len(request.event_names), no=0.25),
                ipb.Prediction(
                    prediction_name=f"{request.namespace}/{request.user_id}", yes=0.5, no=0.75
                ),
            ]
        )


class Fixed(integration_grpc.KimballIntegrationServicer):
    """Always the same answers."""

    def __init__(self, *predictions: tuple[str, float, float]) -> None:
        self.predictions = [
            ipb.Prediction(prediction_name=n, yes=y, no=o) for n, y, o in predictions
        ]

    async def Prediction(self, request: ipb.PredictionRequest, context: Context):
        return ipb.PredictionResponse(predictions=self.predictions)


class Hang(integration_grpc.KimballIntegrationServicer):
    """Never answers; notes when gRPC gives up on the call (the deadline reached it)."""

    def __init__(self) -> None:
        self.started = 0
        self.released = 0

    async def Prediction(self, request: ipb.PredictionRequest, context: Context):
        self.started += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.released += 1


class Fail(integration_grpc.KimballIntegrationServicer):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details

    async def Prediction(self, request: ipb.PredictionRequest, context: Context):
        await context.abort(self.code, self.details)


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(servicer)`` starts a target server and gives its port."""
    servers: list[grpc.aio.Server] = []

    async def start(servicer: integration_grpc.KimballIntegrationServicer, port: int = 0) -> int:
        server = grpc.aio.server()
        integration_grpc.add_KimballIntegrationServicer_to_server(servicer, server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
        return bound

    yield start
    await asyncio.gather(*(s.stop(grace=None) for s in servers))


@pytest.fixture
def dead_port() -> Iterator[int]:
    with reserved_port() as port:
        yield port


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


Make = Callable[..., ExternalPredictions]


@pytest.fixture
async def make(registry: CollectorRegistry) -> AsyncIterator[Make]:
    """``make({name: port}, ...)``: an ExternalPredictions on loopback, closed afterwards."""
    made: list[ExternalPredictions] = []

    def build(ports: dict[str, int], **options) -> ExternalPredictions:
        targets = [PredictionTarget(name, "127.0.0.1", port) for name, port in ports.items()]
        external = ExternalPredictions(targets, registry, **options)
        made.append(external)
        return external

    yield build
    for external in made:
        await external.close()


def requests(registry: CollectorRegistry, target: str, result: str) -> float:
    key = (
        "kimball_external_prediction_requests_total",
        (("result", result), ("target", target)),
    )
    return samples(registry)[key]


async def test_answers_of_two_targets_are_merged(serve: Serve, make: Make) -> None:
    echo = Echo()
    external = make(
        {
            "alpha": await serve(echo),
            "beta": await serve(Fixed(("goal", 0.1, 0.9), ("other", 1, 2))),
        }
    )
    answers = await external.ask("shop", "u1", ["a", "b", "c"])
    assert [(r.namespace, r.user_id, list(r.event_names)) for r in echo.requests] == [
        ("shop", "u1", ["a", "b", "c"])
    ]
    assert answers.merged() == {
        # In the configured order of the targets, whichever answered first.
        "goal": {"alpha_yes": 3.0, "alpha_no": 0.25, "beta_yes": 0.1, "beta_no": 0.9},
        "shop/u1": {"alpha_yes": 0.5, "alpha_no": 0.75},
        "other": {"beta_yes": 1.0, "beta_no": 2.0},
    }
    assert answers.per_goal["goal"] == (
        ExternalAnswer("alpha", 3.0, 0.25),
        ExternalAnswer("beta", 0.1, 0.9),  # the float32 0.1, given back as 0.1
    )
    assert answers.skipped == answers.dropped == answers.issues == ()
    assert answers.fields("unknown") == {}


async def test_merged_into_the_api_response_and_its_rest_shape(serve: Serve, make: Make) -> None:
    external = make({"beta": await serve(Fixed(("goal_1", 0.5, 0.25), ("new_goal", 1, 0)))})
    response = pb.GetPredictionsResponse()
    response.goals["goal_1"].yes = 0.125
    response.goals["goal_1"].no = 0.5
    (await external.ask("", "", ["e"])).merge_into(response)
    assert list(response.goals["goal_1"].external) == [
        pb.ExternalPrediction(target="beta", yes=0.5, no=0.25)
    ]
    # Each target T's answer shows as T_yes and T_no under goals[prediction_name], next to
    # Kimball's own figures.
    assert predictions_json(response) == {
        "goals": {
            "goal_1": {"yes": 0.125, "no": 0.5, "beta_yes": 0.5, "beta_no": 0.25},
            "new_goal": {"beta_yes": 1.0, "beta_no": 0.0},
        }
    }


async def test_a_hanging_target_is_skipped_at_the_deadline(
    serve: Serve, make: Make, registry: CollectorRegistry
) -> None:
    hang = Hang()
    external = make({"good": await serve(Echo()), "slow": await serve(hang)})
    started = time.perf_counter()
    async with asyncio.timeout(5):  # a deadline not applied fails here rather than hanging
        answers = await external.ask("", "u1", [])
    elapsed = time.perf_counter() - started
    assert 0.19 <= elapsed < 1.0
    assert answers.merged() == {
        "goal": {"good_yes": 0.0, "good_no": 0.25},
        "/u1": {"good_yes": 0.5, "good_no": 0.75},
    }
    assert answers.skipped == (TargetIssue("slow", "deadline exceeded after 200 ms"),)
    assert requests(registry, "slow", "deadline") == 1
    assert requests(registry, "good", "ok") == 1

    # The deadline reached the target too, which stopped waiting for nothing.
    async def released() -> bool:
        return hang.released == hang.started == 1

    await until(released, "the hanging call released")


async def test_the_deadline_is_configurable(serve: Serve, make: Make) -> None:
    external = make({"slow": await serve(Hang())}, deadline=0.05)
    assert external.deadline == 0.05
    started = time.perf_counter()
    async with asyncio.timeout(5):  # a deadline not applied fails here rather than hanging
        answers = await external.ask("", "u1", [])
    elapsed = time.perf_counter() - started
    assert 0.04 <= elapsed < 0.18  # well under the 200 ms default
    assert answers.skipped == (TargetIssue("slow", "deadline exceeded after 50 ms"),)
    assert answers.per_goal == {}


async def test_failing_and_unreachable_targets_are_reported(
    serve: Serve, make: Make, registry: CollectorRegistry, dead_port: int
) -> None:
    external = make(
        {
            "internal": await serve(Fail(grpc.StatusCode.INTERNAL, "boom")),
            "busy": await serve(Fail(grpc.StatusCode.UNAVAILABLE, "try later")),
            "dead": dead_port,
            "good": await serve(Fixed(("goal", 1, 0))),
        }
    )
    started = time.perf_counter()
    answers = await external.ask("", "u1", [])
    assert time.perf_counter() - started < 1.0
    assert answers.merged() == {"goal": {"good_yes": 1.0, "good_no": 0.0}}
    reasons = {issue.target: issue.reason for issue in answers.skipped}
    assert list(reasons) == ["internal", "busy", "dead"]
    assert reasons["internal"] == "internal: boom"
    assert reasons["busy"] == "unavailable: try later"
    assert reasons["dead"].startswith("unavailable: ")
    assert "refused" in reasons["dead"].lower()
    assert len(reasons["dead"]) <= 200
    for target in ("internal", "busy", "dead"):
        assert requests(registry, target, "error") == 1
        assert requests(registry, target, "ok") == 0
    assert requests(registry, "good", "ok") == 1


async def test_answers_that_cannot_be_shown_are_dropped_and_reported(
    serve: Serve, make: Make, registry: CollectorRegistry
) -> None:
    bad = Fixed(
        ("nan_yes", math.nan, 0.5),
        ("inf_no", 0.5, math.inf),
        ("", 0.5, 0.5),
        ("control\x07char", 0.5, 0.5),
        ("x" * 300, 0.5, 0.5),
        ("kept", 0.5, 0.25),
        ("kept", 0.75, 0.75),  # repeated: the first answer for a name wins
        ("fine", -1.5, 3e38),
    )
    external = make({"bad": await serve(bad)})
    answers = await external.ask("", "", ["e"])
    assert answers.merged() == {
        "kept": {"bad_yes": 0.5, "bad_no": 0.25},
        "fine": {"bad_yes": -1.5, "bad_no": 3e38},
    }
    assert answers.skipped == ()
    assert [issue.target for issue in answers.dropped] == ["bad"] * 6
    assert [issue.reason for issue in answers.dropped] == [
        "answer 'nan_yes' dropped: yes is nan, not a finite number",
        "answer 'inf_no' dropped: no is inf, not a finite number",
        "answer '' dropped: prediction_name is required and must not be empty",
        "answer 'control\\x07char' dropped: prediction_name contains control characters "
        "or unpaired surrogates",
        f"answer {'x' * 64!r} dropped: prediction_name is longer than 256 characters",
        "answer 'kept' dropped: repeated, the first one is kept",
    ]
    assert answers.issues == answers.dropped
    assert requests(registry, "bad", "ok") == 1  # the call worked; some answers did not
    key = ("kimball_external_prediction_dropped_answers_total", (("target", "bad"),))
    assert samples(registry)[key] == 6


async def test_channels_are_opened_once_and_reused(
    serve: Serve, registry: CollectorRegistry
) -> None:
    echo = Echo()
    port = await serve(echo)
    opened: list[str] = []

    def factory(address: str) -> grpc.aio.Channel:
        opened.append(address)
        return grpc.aio.insecure_channel(address)

    targets = [PredictionTarget("echo", "127.0.0.1", port)]
    async with ExternalPredictions(targets, registry, channel_factory=factory) as external:
        assert opened == []  # nothing opened before the first call
        for index in range(3):
            await external.ask("", f"u{index}", [])
        await asyncio.gather(*(external.ask("", "u", []) for _ in range(5)))
    assert opened == [f"127.0.0.1:{port}"]
    assert len(echo.requests) == 8
    assert len(set(echo.peers)) == 1  # one connection, seen from the target's side
    key = ("kimball_external_prediction_duration_seconds_count", (("target", "echo"),))
    assert samples(registry)[key] == 8


async def test_a_target_that_comes_back_is_used_again(
    serve: Serve, make: Make, registry: CollectorRegistry
) -> None:
    with reserved_port() as port:
        external = make({"late": port})
        assert [i.target for i in (await external.ask("", "u", [])).skipped] == ["late"]
    await serve(Fixed(("goal", 1, 0)), port=port)

    async def answers() -> bool:
        return (await external.ask("", "u", [])).merged() == {
            "goal": {"late_yes": 1.0, "late_no": 0.0}
        }

    # On the same channel, once its reconnect backoff is over.
    await until(answers, "answers from the target that came back")
    assert requests(registry, "late", "ok") == 1


async def test_no_targets_answers_at_once_without_io(registry: CollectorRegistry) -> None:
    def factory(address: str) -> grpc.aio.Channel:
        raise AssertionError("no channel should be opened")

    external = ExternalPredictions((), registry, channel_factory=factory)
    answers = await external.ask("", "u1", ["e"])
    assert answers.per_goal == {} and answers.issues == ()
    await external.close()


async def test_after_close_targets_are_reported_not_called(serve: Serve, make: Make) -> None:
    echo = Echo()
    external = make({"echo": await serve(echo)})
    await external.ask("", "u", [])
    await external.close()
    answers = await external.ask("", "u", [])
    assert answers.skipped == (TargetIssue("echo", "closed: shutting down"),)
    assert len(echo.requests) == 1
    await external.close()  # closing twice is fine


def test_every_series_exists_before_any_call(registry: CollectorRegistry) -> None:
    ExternalPredictions([PredictionTarget("t", "127.0.0.1", 1)], registry)
    for result in ("ok", "deadline", "error"):
        assert requests(registry, "t", result) == 0


def test_repeated_target_names_and_bad_deadlines_are_refused(
    registry: CollectorRegistry,
) -> None:
    twice = [PredictionTarget("t", "a", 1), PredictionTarget("t", "b", 2)]
    with pytest.raises(ConfigError, match="repeated target name"):
        ExternalPredictions(twice, registry)
    for deadline in (0, -1, math.inf, math.nan):
        with pytest.raises(ConfigError, match="deadline"):
            ExternalPredictions((), CollectorRegistry(), deadline=deadline)


async def test_ipv6_hosts_are_bracketed(registry: CollectorRegistry) -> None:
    opened: list[str] = []

    def factory(address: str) -> grpc.aio.Channel:
        opened.append(address)
        return grpc.aio.insecure_channel(address)

    targets = [PredictionTarget("v6", "::1", 9), PredictionTarget("name", "localhost", 9)]
    async with ExternalPredictions(targets, registry, channel_factory=factory, deadline=0.05) as ex:
        await ex.ask("", "u", [])
    assert opened == ["[::1]:9", "localhost:9"]


async def test_a_server_merges_targets_into_predictions_on_both_apis(serve, tmp_path):
    """End to end: kimball's own GetPredictions and GET /v0/predictions, with one good target
    and one that hangs: the good answer is merged, the hanging one reported, no 5xx."""
    good = await serve(Fixed(("buy", 0.75, 0.25)))
    hang = Hang()
    slow = await serve(hang)
    settings = local_settings(
        tmp_path,
        external_grpc_prediction_targets=(
            PredictionTarget("model", "127.0.0.1", good),
            PredictionTarget("slow", "127.0.0.1", slow),
        ),
        external_prediction_deadline_ms=100,
    )
    async with running(settings) as server, gateway_of(server) as gateway:
        stub = pb_grpc.KimballServiceStub(server.local_channel)
        await stub.TrackEvents(
            pb.TrackEventsRequest(
                events=[
                    pb.Event(event_name="view", user_id="u1"),
                    pb.Event(event_name="buy", user_id="u1", ensure_goal=True),
                ]
            )
        )
        answer = await stub.GetPredictions(pb.GetPredictionsRequest(events=["view"]))
        assert [(e.target, e.yes, e.no) for e in answer.goals["buy"].external] == [
            ("model", 0.75, 0.25)
        ]
        assert answer.goals["buy"].HasField("probability")  # Kimball's own figures stay
        assert [p.target for p in answer.external_problems] == ["slow"]
        assert "deadline" in answer.external_problems[0].reason

        async with (
            rest_client(gateway) as http,
            http.get("/v0/predictions", params={"event": "view"}) as got,
        ):
            assert got.status == 200
            body = await got.json()
        assert (body["goals"]["buy"]["model_yes"], body["goals"]["buy"]["model_no"]) == (
            0.75,
            0.25,
        )
        assert body["external_problems"][0]["target"] == "slow"


async def test_a_prediction_by_user_sends_the_targets_the_users_events(serve, tmp_path):
    """As the original did: for a request by user_id the targets get the names of the
    events that user did (sorted), so a model that predicts from events can answer it."""
    echo = Echo()
    port = await serve(echo)
    settings = local_settings(
        tmp_path, external_grpc_prediction_targets=(PredictionTarget("model", "127.0.0.1", port),)
    )
    async with running(settings) as server, gateway_of(server) as gateway:
        stub = pb_grpc.KimballServiceStub(server.local_channel)
        await stub.TrackEvents(
            pb.TrackEventsRequest(
                events=[
                    pb.Event(event_name="view", user_id="u1", namespace="shop"),
                    pb.Event(event_name="signup", user_id="u1", namespace="shop"),
                    pb.Event(event_name="buy", user_id="u1", namespace="shop", ensure_goal=True),
                    pb.Event(event_name="other", user_id="u2", namespace="shop"),
                    pb.Event(event_name="elsewhere", user_id="u1", namespace="blog"),
                ]
            )
        )
        answer = await stub.GetPredictions(pb.GetPredictionsRequest(namespace="shop", user_id="u1"))
        assert [(e.target, e.yes) for e in answer.goals["goal"].external] == [("model", 3.0)]
        async with (
            rest_client(gateway) as http,
            http.get("/v0/predictions", params={"namespace": "shop", "user_id": "u1"}) as got,
        ):
            assert got.status == 200
            body = await got.json()
        assert body["goals"]["goal"]["model_yes"] == 3.0  # the target saw three events
        # A request by events still sends those events, as given.
        await stub.GetPredictions(pb.GetPredictionsRequest(namespace="shop", events=["view"]))
        # A user without events is refused (404) before any target is asked.
        async with (
            rest_client(gateway) as http,
            http.get("/v0/predictions", params={"namespace": "shop", "user_id": "nobody"}) as got,
        ):
            assert got.status == 404
    sent = [(r.namespace, r.user_id, list(r.event_names)) for r in echo.requests]
    assert sent == [
        ("shop", "u1", ["buy", "signup", "view"]),  # the user's events in this namespace
        ("shop", "u1", ["buy", "signup", "view"]),
        ("shop", "", ["view"]),
    ]

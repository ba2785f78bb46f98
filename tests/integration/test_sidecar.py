"""Sidecar mode in one process: a real api server and a real sidecar on loopback.

Events sent to the sidecar (gRPC, REST, the integration contract) are spooled,
acknowledged, and delivered to the api server; reads are forwarded; the api
server going away and coming back loses nothing. Real processes killed with
SIGKILL are in system/test_sidecar_processes.py. Waits poll with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from support import polling
from support.file_modes import loosened, modes_under, not_owner_only
from support.grpc_errors import error_metadata
from support.in_process import gateway_of, local_settings, rest_client, weekly_counters
from support.ports import free_port

from gateway.server import RunningGateway
from kimball_grpc.app import RunningServer, start_server
from kimball_grpc.codec.error_details import error_info
from kimball_grpc.codec.state_codec import encode_records
from kimball_grpc.config.settings import Mode, Settings
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.events import Event, prepare_event
from kimball_grpc.core.records import GoalRecord
from kimball_grpc.generated import features_proto_pb2 as ipb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.generated.kimball.v1 import relay_pb2 as rpb
from kimball_grpc.generated.kimball.v1 import relay_pb2_grpc as relay_grpc
from kimball_grpc.sidecar.server import RunningSidecar, start_sidecar

TOKEN = "api-secret"
WEEKLY = weekly_counters(".*", 100, 0.01)
AUTH = (("authorization", f"Bearer {TOKEN}"),)


# Delivery through a sidecar crosses two servers and a spool: give it 10 s.
until = partial(polling.until, timeout=10)


class Deployment:
    """An api server on a fixed port (so it can be stopped and started again) and
    sidecars pointing at it, each with its own data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api_port = free_port()
        self.api: RunningServer | None = None
        self.sidecars: list[RunningSidecar] = []
        self.channels: list[grpc.aio.Channel] = []
        self.gateways = AsyncExitStack()

    def api_settings(self) -> Settings:
        return local_settings(
            self.root / "api",
            grpc_port=self.api_port,
            api_auth=True,
            api_auth_tokens=(TOKEN,),
            counter_config=WEEKLY,
        )

    async def start_api(self, **overrides: object) -> RunningServer:
        self.api = await start_server(replace(self.api_settings(), **overrides))
        await self.api.wait_ready()
        return self.api

    async def stop_api(self) -> None:
        assert self.api is not None
        await self.api.stop(grace=None)
        self.api = None

    async def start_sidecar(self, name: str = "sidecar", **overrides: object) -> RunningSidecar:
        settings = local_settings(
            self.root / name,
            mode=Mode.SIDECAR,
            analytics_host=f"127.0.0.1:{self.api_port}",
            analytics_token=TOKEN,
        )
        sidecar = await start_sidecar(replace(settings, **overrides))
        await sidecar.wait_ready()
        self.sidecars.append(sidecar)
        return sidecar

    async def stop_sidecar(self, sidecar: RunningSidecar, grace: float | None = None) -> None:
        self.sidecars.remove(sidecar)
        await sidecar.stop(grace=grace)

    def channel(self, port: int) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.channels.append(channel)
        return channel

    def stub(self, port: int) -> pb_grpc.KimballServiceStub:
        return pb_grpc.KimballServiceStub(self.channel(port))

    async def gateway(self, sidecar: RunningSidecar) -> RunningGateway:
        return await self.gateways.enter_async_context(gateway_of(sidecar))

    async def counts(self, namespace: str = "default") -> dict[str, int]:
        """Named counters on the api server: event name -> unique users."""
        assert self.api is not None
        return {
            c.name: c.count for c in self.api.engine.counters(namespace) if c.kind.value == "named"
        }

    async def close(self) -> None:
        await self.gateways.aclose()
        for channel in self.channels:
            await channel.close()
        for sidecar in list(self.sidecars):
            await sidecar.stop(grace=None)
        if self.api is not None:
            await self.api.stop(grace=None)


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    deployment = Deployment(tmp_path)
    yield deployment
    await deployment.close()


def events(name: str, users: range, namespace: str = "") -> list[pb.Event]:
    return [pb.Event(namespace=namespace, event_name=name, user_id=f"user-{i}") for i in users]


async def test_events_sent_to_a_sidecar_reach_the_api_server_with_every_field(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    when = Timestamp()
    when.FromDatetime(datetime(2024, 3, 6, 12, tzinfo=UTC))  # ISO week 2024-W10
    answer = await stub.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(event_name="signup", user_id="ann", value=5.0, datetime=when),
                pb.Event(event_name="signup", user_id="bob", value=7.0, datetime=when),
                pb.Event(event_name="paid", user_id="ann", ensure_goal=True),
            ]
        )
    )
    assert answer.accepted == 3
    await until(lambda: _has(deployment, {"signup": 2, "paid": 1}), "delivery")
    assert deployment.api is not None
    engine = deployment.api.engine
    signup = next(c for c in engine.counters("default") if c.name == "signup" and not c.iso_week)
    assert signup.value_sum == 12.0
    weeks = {(c.iso_year, c.iso_week) for c in engine.counters("default") if c.name == "signup"}
    assert (2024, 10) in weeks
    assert "paid" in engine.goals("default")
    assert sidecar.spool.pending == 0


async def _has(deployment: Deployment, expected: dict[str, int]) -> bool:
    counts = await deployment.counts()
    return all(counts.get(name) == n for name, n in expected.items())


async def test_reads_are_forwarded_and_their_errors_passed_on(deployment):
    api = await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    direct = deployment.stub(api.grpc_port)
    via = deployment.stub(sidecar.grpc_port)
    await via.CreateGoal(pb.CreateGoalRequest(namespace="shop", goal_name="paid"))
    await via.TrackEvents(
        pb.TrackEventsRequest(
            events=events("view", range(4), "shop") + events("paid", range(2), "shop")
        )
    )
    await until(lambda: _has_ns(deployment, "shop", {"view": 4, "paid": 2}), "delivery")
    for method, request in [
        ("GetAnalytics", pb.GetAnalyticsRequest(namespace="shop")),
        ("ListGoals", pb.ListGoalsRequest(namespace="shop")),
        ("ListNamespaces", pb.ListNamespacesRequest()),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop")),
        ("GetPredictions", pb.GetPredictionsRequest(namespace="shop", user_id="user-1")),
        ("GetNudges", pb.GetNudgesRequest(namespace="shop", goal="paid", user_id="user-3")),
    ]:
        expected = await getattr(direct, method)(request, metadata=AUTH)
        assert await getattr(via, method)(request) == expected, method
    integration = integration_grpc.KimballIntegrationStub(deployment.channel(sidecar.grpc_port))
    prediction = ipb.PredictionRequest(namespace="shop", event_names=["view"])
    expected_prediction = await integration_grpc.KimballIntegrationStub(
        deployment.channel(api.grpc_port)
    ).Prediction(prediction, metadata=AUTH)
    assert await integration.Prediction(prediction) == expected_prediction

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await via.GetNudges(pb.GetNudgesRequest(namespace="shop", goal="", user_id="u"))
    with pytest.raises(grpc.aio.AioRpcError) as direct_refused:
        await direct.GetNudges(
            pb.GetNudgesRequest(namespace="shop", goal="", user_id="u"), metadata=AUTH
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == direct_refused.value.details()
    assert error_info(refused.value.trailing_metadata()) == error_info(
        direct_refused.value.trailing_metadata()
    )  # the reason (InvalidArgument) and the parameter named


async def _has_ns(deployment: Deployment, namespace: str, expected: dict[str, int]) -> bool:
    counts = await deployment.counts(namespace)
    return all(counts.get(name) == n for name, n in expected.items())


async def test_rest_on_a_sidecar_takes_events_and_forwards_reads(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    gateway = await deployment.gateway(sidecar)
    async with rest_client(gateway) as http:
        body = {"events": [{"event_name": "open", "user_id": f"u{i}"} for i in range(5)]}
        async with http.post("/v0/analytics", json=body) as response:
            assert response.status == 204, await response.text()
        stream = "\n".join(
            json.dumps({"event_name": "scroll", "user_id": f"u{i}"}) for i in range(3)
        )
        async with http.post(
            "/v0/analytics:stream",
            data=stream,
            headers={"Content-Type": "application/x-ndjson"},
        ) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["accepted"] == 3
        await until(lambda: _has(deployment, {"open": 5, "scroll": 3}), "delivery")
        async with http.get("/v0/analytics") as response:
            assert response.status == 200
            shown = {c["name"]: c["count"] for c in (await response.json())["counts"]}
        assert shown["open"] == 5 and shown["scroll"] == 3
        async with http.get("/v0/nudges", params={"goal": "", "user_id": "u1"}) as response:
            assert response.status == 400  # the api server's refusal, as REST
        async with http.post("/v0/analytics", json={"events": [{"event_name": "x"}]}) as bad:
            assert bad.status == 400
            assert (await bad.json())["error"]["key"] == "user_id"


async def test_integration_event_stream_on_a_sidecar_is_spooled(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    integration = integration_grpc.KimballIntegrationStub(deployment.channel(sidecar.grpc_port))
    messages = [ipb.KimballEvent(namespace="", name="legacy", key=f"k{i}") for i in range(6)]
    assert (await integration.EventStream(iter(messages))).code == 0
    await until(lambda: _has(deployment, {"legacy": 6}), "delivery")


async def test_events_wait_in_the_spool_while_the_api_server_is_down(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("before", range(3))))
    await until(lambda: _has(deployment, {"before": 3}), "delivery")

    await deployment.stop_api()
    answer = await stub.TrackEvents(pb.TrackEventsRequest(events=events("during", range(50))))
    assert answer.accepted == 50  # acknowledged by the relay while the api server is away
    assert sidecar.spool.pending == 50
    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
        await stub.GetAnalytics(pb.GetAnalyticsRequest())
    assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{deployment.api_port}" in unavailable.value.details()

    await deployment.start_api()  # same port, same data: back after a restart
    await until(lambda: _has(deployment, {"before": 3, "during": 50}), "delivery after restart")
    await until(lambda: sidecar.spool.pending == 0, "the spool to empty")


async def test_a_restarted_sidecar_delivers_what_it_spooled_before(deployment):
    sidecar = await deployment.start_sidecar()  # no api server yet
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("early", range(20))))
    await deployment.stop_sidecar(sidecar, grace=1.0)

    again = await deployment.start_sidecar()  # same data directory
    assert again.spool.pending == 20
    await deployment.start_api()
    await until(lambda: _has(deployment, {"early": 20}), "delivery from the kept spool")
    await until(lambda: again.spool.pending == 0, "the spool to empty")


async def test_a_full_spool_refuses_events_and_keeps_what_it_has(deployment):
    sidecar = await deployment.start_sidecar(spool_max_events=10)  # no api server
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("kept", range(8))))
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await stub.TrackEvents(pb.TrackEventsRequest(events=events("refused", range(3))))
    assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "spool" in full.value.details()
    assert sidecar.spool.pending == 8
    gateway = await deployment.gateway(sidecar)
    async with rest_client(gateway) as http:
        body = {"events": [{"event_name": "refused", "user_id": f"u{i}"} for i in range(3)]}
        async with http.post("/v0/analytics", json=body) as response:
            assert response.status == 429
    await deployment.start_api()
    await until(lambda: _has(deployment, {"kept": 8}), "delivery")
    assert "refused" not in await deployment.counts()


async def test_batches_past_the_api_servers_limits_are_dropped_and_delivery_goes_on(deployment):
    api = await deployment.start_api(max_namespaces=1)  # "default" only
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("kept", range(2))))
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("x", range(3), "elsewhere")))
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("after", range(2))))
    # The refused batch is acknowledged with the rest: not sent again and again.
    await until(lambda: _has(deployment, {"kept": 2, "after": 2}), "delivery past it")
    await until(lambda: sidecar.spool.pending == 0, "the spool to empty")
    assert api.engine.namespaces() == ["default"]
    refused = {"limit": "namespaces"}
    assert api.metrics.registry.get_sample_value("kimball_limit_refusals_total", refused) == 1
    # Relayed events are counted by the api server as the sidecars' (the refused ones too).
    counted = api.metrics.registry.get_sample_value
    assert counted("kimball_events_ingested_total", {"api": "sidecar"}) == 4
    assert counted("kimball_events_ingested_total", {"api": "grpc"}) == 0
    assert counted("kimball_events_refused_total", {"reason": "limit"}) == 3
    registry = sidecar.metrics.registry
    assert registry.get_sample_value("kimball_relay_refused_events_total") == 3
    assert registry.get_sample_value("kimball_relay_delivered_events_total") == 4


async def test_a_bad_event_is_refused_by_the_sidecar_and_nothing_is_spooled(deployment):
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    batch = [*events("fine", range(3)), pb.Event(event_name="", user_id="u")]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.TrackEvents(pb.TrackEventsRequest(events=batch))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(refused.value)["index"] == "3"
    assert sidecar.spool.pending == 0


async def test_the_spool_holds_no_raw_user_id(deployment):
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    secret = "alice@example.com"
    await stub.TrackEvent(pb.TrackEventRequest(event=pb.Event(event_name="e", user_id=secret)))
    await deployment.stop_sidecar(sidecar, grace=1.0)
    files = [p for p in (deployment.root / "sidecar").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wal" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


async def test_subscriptions_on_a_sidecar_see_the_api_servers_events(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    call = stub.Subscribe(pb.SubscribeRequest(event_names=["live"]))
    await until(
        lambda: deployment.api is not None and deployment.api.hub.subscriber_count == 1,
        "the subscription",
    )
    await stub.TrackEvent(pb.TrackEventRequest(event=pb.Event(event_name="live", user_id="ann")))
    first = await asyncio.wait_for(call.read(), 10)
    call.cancel()
    assert first.event.event_name == "live"
    # Relayed events are records: the user's hash, no raw id (as replayed events).
    assert first.event.user_id == "" and len(first.user_hash) == 32


async def test_stopping_a_sidecar_ends_forwarded_subscriptions_at_once(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    call = deployment.stub(sidecar.grpc_port).Subscribe(pb.SubscribeRequest())
    await until(
        lambda: deployment.api is not None and deployment.api.hub.subscriber_count == 1,
        "the subscription",
    )
    started = time.monotonic()
    await deployment.stop_sidecar(sidecar, grace=10.0)
    assert time.monotonic() - started < 5  # not the 10 s grace period
    # UNAVAILABLE, not OK: the client can tell the sidecar went away and subscribe again.
    assert await call.code() is grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in await call.details()
    assert error_info(await call.trailing_metadata()).reason == "ShuttingDown"
    await until(lambda: deployment.api.hub.subscriber_count == 0, "the forwarded call ended")


async def test_stopping_the_api_server_ends_relay_streams_at_once(deployment):
    api = await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    await until(lambda: sidecar.sender.connected, "the relay stream")
    started = time.monotonic()
    await api.stop(grace=10.0)
    deployment.api = None
    assert time.monotonic() - started < 5  # not the 10 s grace period


async def test_a_wrong_relay_token_keeps_events_and_says_what_to_fix(deployment, caplog):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar(analytics_token="wrong")
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("held", range(4))))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListNamespaces(pb.ListNamespacesRequest())
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "ANALYTICS_TOKEN" in refused.value.details()
    await until(lambda: sidecar.sender.failures > 0, "a refused relay stream")
    assert sidecar.spool.pending == 4
    assert "refused the relay stream" in caplog.text


async def test_sidecar_metrics_show_the_spool_and_the_stream(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("m", range(7))))
    await until(lambda: sidecar.sender.delivered == 7, "delivery")
    registry = sidecar.metrics.registry
    assert registry.get_sample_value("kimball_relay_spooled_events_total") == 7
    assert registry.get_sample_value("kimball_relay_delivered_events_total") == 7
    assert registry.get_sample_value("kimball_relay_spool_events") == 0
    assert registry.get_sample_value("kimball_relay_connected") == 1
    assert registry.get_sample_value("kimball_counters") is None  # a sidecar keeps none
    # Its events are counted where they are applied: on the api server, when relayed.
    assert registry.get_sample_value("kimball_events_ingested_total", {"api": "grpc"}) is None


async def test_a_sidecar_without_analytics_host_does_not_start(tmp_path):
    settings = Settings(grpc_port=0, data_dir=tmp_path, mode=Mode.SIDECAR, api_auth=False)
    with pytest.raises(ConfigError, match="ANALYTICS_HOST"):
        await start_sidecar(settings)


# --- the relay method on the api server -------------------------------------------


async def test_the_relay_method_refuses_bad_batches_and_unknown_callers(deployment):
    api = await deployment.start_api()
    relay = relay_grpc.KimballRelayStub(deployment.channel(api.grpc_port))

    async def send(request: rpb.RelayRequest, metadata=AUTH) -> list[rpb.RelayResponse]:
        call = relay.Relay(metadata=metadata)
        await call.write(request)
        await call.done_writing()
        return [response async for response in call]

    with pytest.raises(grpc.aio.AioRpcError) as damaged:
        await send(rpb.RelayRequest(first_sequence=1, last_sequence=1, batches=[b"\xff\x00"]))
    assert damaged.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(damaged.value)["index"] == "0"
    goals = encode_records([GoalRecord("default", "paid")])
    with pytest.raises(grpc.aio.AioRpcError) as not_events:
        await send(rpb.RelayRequest(first_sequence=1, last_sequence=1, batches=[goals]))
    assert not_events.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "events only" in not_events.value.details()
    good = encode_records([prepare_event(Event("e", "ann"), (2024, 10))])
    answers = await send(rpb.RelayRequest(first_sequence=7, last_sequence=7, batches=[good]))
    assert [a.acknowledged_through for a in answers] == [7]
    assert await deployment.counts() == {"e": 1}
    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await send(rpb.RelayRequest(first_sequence=8, last_sequence=8, batches=[good]), ())
    assert stranger.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_resuming_past_the_last_sequence_number_through_a_sidecar_is_out_of_range(
    deployment,
):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("seen", range(3))))
    await until(lambda: _has(deployment, {"seen": 3}), "delivery")
    assert deployment.api is not None
    head = deployment.api.ingestor.last_sequence
    call = stub.Subscribe(pb.SubscribeRequest(after_sequence=head + 500), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() is grpc.StatusCode.OUT_OF_RANGE  # at once, the api server's
    assert refused.value.details() == (
        f"after_sequence {head + 500} is past the last sequence number, {head}: "
        f"resume from {head} or lower"
    )
    assert error_metadata(refused.value)["last_sequence"] == str(head)


async def test_a_graceful_stop_of_the_api_server_ends_relay_and_watch_at_once_and_both_return(
    deployment, caplog
):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    stub = deployment.stub(sidecar.grpc_port)
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("before", range(3))))
    await until(lambda: _has(deployment, {"before": 3}), "delivery")
    api = deployment.api
    assert api is not None
    await until(lambda: api.front.calls.open_streams == 2, "the relay and the spec watch")

    began = time.monotonic()
    await api.stop(grace=10.0)
    deployment.api = None
    assert time.monotonic() - began < 3  # the streams do not hold the 10 s grace period
    await until(lambda: sidecar.sender.failures >= 1, "the relay to notice")
    said = [r.getMessage() for r in caplog.records if r.name.startswith("kimball_grpc.sidecar")]
    assert any("UNAVAILABLE: the server is shutting down" in line for line in said), said

    api = await deployment.start_api()
    await stub.TrackEvents(pb.TrackEventsRequest(events=events("after", range(2))))
    await until(lambda: _has(deployment, {"after": 2}), "delivery after the restart")
    direct = deployment.stub(api.grpc_port)
    await direct.PutFeatureSpec(
        pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="back")), metadata=AUTH
    )
    await until(lambda: "back" in sidecar.specs.flags.specs, "the watch to resume")


# --- feature flags on a sidecar ------------------------------------------------------


async def test_the_relay_method_applies_the_batches_within_the_limits_and_counts_the_rest(
    deployment,
):
    api = await deployment.start_api(max_event_names=2)
    relay = relay_grpc.KimballRelayStub(deployment.channel(api.grpc_port))

    def batch(*names: str) -> bytes:
        return encode_records([prepare_event(Event(n, "ann"), (2024, 10)) for n in names])

    call = relay.Relay(metadata=AUTH)
    # The second batch would be the third event name: left out whole, the others applied.
    await call.write(
        rpb.RelayRequest(
            first_sequence=1,
            last_sequence=6,
            batches=[batch("a"), batch("a", "b", "c"), batch("b")],
        )
    )
    await call.done_writing()
    answers = [answer async for answer in call]
    assert [(a.acknowledged_through, a.refused_events) for a in answers] == [(6, 3)]
    assert await deployment.counts() == {"a": 1, "b": 1}


async def test_a_sidecar_answers_flags_from_its_copy_also_while_the_api_server_is_down(
    deployment,
):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar()
    via = deployment.stub(sidecar.grpc_port)
    spec = pb.FeatureSpec(name="new_checkout")
    spec.user.add(property="plan", comparator="=").value.string_value = "pro"
    await via.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))  # forwarded to the api server
    assert deployment.api is not None
    assert deployment.api.engine.flags.get("new_checkout").user[0].value == "pro"
    await until(lambda: "new_checkout" in sidecar.specs.flags.specs, "the copy")

    def ask(plan: str) -> pb.EvaluateFeaturesRequest:
        request = pb.EvaluateFeaturesRequest()
        request.user.update({"user_id": "ann", "plan": plan})
        request.context.update({"feature": "new_checkout"})
        return request

    assert (await via.EvaluateFeatures(ask("pro"))).features["new_checkout"] is True
    await deployment.stop_api()
    assert (await via.EvaluateFeatures(ask("free"))).features["new_checkout"] is False
    listed = await via.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
    assert [s.name for s in listed.specs] == ["new_checkout"]

    await deployment.stop_sidecar(sidecar, grace=1.0)
    again = await deployment.start_sidecar()  # the api server is still down
    via_again = deployment.stub(again.grpc_port)
    assert (await via_again.EvaluateFeatures(ask("pro"))).features["new_checkout"] is True
    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
        await via_again.DeleteFeatureSpec(pb.DeleteFeatureSpecRequest(name="new_checkout"))
    assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE

    await deployment.start_api()
    # The usages counted at the sidecar (three evaluations of user ann) reach the api server.
    await until(lambda: _has(deployment, {"new_checkout": 1}), "the usage events")

    async def deleted() -> bool:  # as a client would: again while UNAVAILABLE
        try:
            await via_again.DeleteFeatureSpec(pb.DeleteFeatureSpecRequest(name="new_checkout"))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
            return False
        return True

    await until(deleted, "the api server to take calls through the sidecar again")
    await until(lambda: not again.specs.flags.specs, "the deletion in the copy")


async def test_flags_are_answered_even_when_their_usage_cannot_be_spooled(deployment):
    sidecar = await deployment.start_sidecar(spool_max_events=1)  # no api server
    via = deployment.stub(sidecar.grpc_port)
    request = pb.EvaluateFeaturesRequest()
    request.user.update({"user_id": "ann"})
    request.context.update({"feature": "checkout"})
    for _ in range(3):
        assert (await via.EvaluateFeatures(request)).features == {}
    assert sidecar.spool.pending == 1
    lost = sidecar.metrics.registry.get_sample_value(
        "kimball_feature_usage_lost_total", {"code": "RESOURCE_EXHAUSTED"}
    )
    assert lost == 2


async def test_every_file_and_directory_a_sidecar_keeps_is_its_owners_only(deployment):
    await deployment.start_api()
    sidecar = await deployment.start_sidecar(api_auth=True)  # generates its own token
    data_dir = deployment.root / "sidecar"
    token = (data_dir / "api-token").read_text().strip()
    metadata = (("authorization", f"Bearer {token}"),)
    via = deployment.stub(sidecar.grpc_port)
    spec = pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="new_checkout"))
    await via.PutFeatureSpec(spec, metadata=metadata)
    await via.TrackEvent(pb.TrackEventRequest(event=events("e", range(1))[0]), metadata=metadata)
    await until(lambda: (data_dir / "feature-specs.pb").exists(), "the copy of the specs")
    await until(lambda: sidecar.spool.acknowledged == 1, "delivery")
    await deployment.stop_sidecar(sidecar, grace=1.0)

    modes = modes_under(data_dir)
    assert {"spool", "spool/acknowledged", "feature-specs.pb", "api-token"} <= modes.keys()
    assert any(p.endswith(".wal") for p in modes)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert not_owner_only(data_dir) == {}

    loosened(data_dir)  # as an earlier version left them
    await deployment.stop_sidecar(await deployment.start_sidecar(api_auth=True))
    assert not_owner_only(data_dir) == {}

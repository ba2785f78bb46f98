"""``promtool check metrics`` (Prometheus's own linter: naming, units, types, help) has
nothing to say about ``/metrics`` of a live api server and of a sidecar after traffic of
every kind: REST and gRPC, accepted and refused, unary and streaming, an unknown method,
prediction and event targets that do not answer. ``make test`` installs promtool (Debian's
prometheus package); without it this test fails rather than skips."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from support.in_process import gateway_of, local_settings, rest_client, running
from support.ports import free_port

from kimball_grpc.config.settings import Mode, PredictionTarget
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.sidecar.server import start_sidecar

TOKEN = "promtool-token"
RIGHT = (("authorization", f"Bearer {TOKEN}"),)
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def promtool_check(text: str) -> str:
    """What promtool says about an exposition text (nothing: clean)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (apt-get install prometheus)"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    return (checked.stdout + checked.stderr).strip() + ("" if checked.returncode == 0 else " !")


async def grpc_traffic(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        event = pb.Event(event_name="e", user_id="u")
        await stub.TrackEvents(pb.TrackEventsRequest(events=[event]), metadata=RIGHT)

        async def batches():
            yield pb.TrackEventsRequest(events=[event])

        await stub.StreamEvents(batches(), metadata=RIGHT)
        await stub.GetPredictions(pb.GetPredictionsRequest(), metadata=RIGHT)
        for failing in (
            stub.TrackEvent(pb.TrackEventRequest(event=pb.Event()), metadata=RIGHT),
            stub.GetAnalytics(pb.GetAnalyticsRequest()),
            channel.unary_unary("/kimball.v1.KimballService/Nope")(b"", metadata=RIGHT),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await failing
        subscription = stub.Subscribe(pb.SubscribeRequest(), metadata=RIGHT, timeout=0.2)
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in subscription:
                pass


async def scraped_after_rest_traffic(server) -> str:
    async with gateway_of(server) as gateway, rest_client(gateway) as http:
        for method, path, body, headers in (
            ("POST", "/v0/analytics", b'[{"event_name": "e", "user_id": "r"}]', BEARER),
            ("POST", "/v0/analytics", b"[{", BEARER),
            ("GET", "/v0/analytics", None, {}),
            ("GET", "/v0/featureSpecs/none", None, BEARER),
            ("GET", "/no/such/path", None, BEARER),
        ):
            headers = {**headers, "Content-Type": "application/json"}
            async with http.request(method, path, data=body, headers=headers) as response:
                assert response.status < 500
        async with http.get("/metrics", headers=BEARER) as response:
            assert response.status == 200
            return await response.text()


async def test_promtool_finds_nothing_on_the_api_servers_metrics(tmp_path: Path) -> None:
    settings = local_settings(
        tmp_path,
        api_auth=True,
        api_auth_tokens=(TOKEN,),
        kubernetes_memory_limit=2 * 1024**3,
        external_grpc_event_targets=(("127.0.0.1", free_port()),),
        external_grpc_prediction_targets=(PredictionTarget("t", "127.0.0.1", free_port()),),
    )
    async with running(settings) as server:
        await grpc_traffic(server.grpc_port)
        await server.persistence.snapshot()
        text = await scraped_after_rest_traffic(server)
    for family in ("grpc_server_handled_total", "kimball_events_refused_total", "kimball_build"):
        assert family in text  # the traffic was counted: the check saw every kind
    assert promtool_check(text) == ""


async def test_promtool_finds_nothing_on_a_sidecars_metrics(tmp_path: Path) -> None:
    api_port = free_port()
    api = local_settings(tmp_path / "api", grpc_port=api_port, api_auth_tokens=(TOKEN,))
    async with running(api):
        sidecar_settings = local_settings(
            tmp_path / "sidecar",
            mode=Mode.SIDECAR,
            analytics_host=f"127.0.0.1:{api_port}",
            analytics_token=TOKEN,
            api_auth=True,
            api_auth_tokens=(TOKEN,),
        )
        sidecar = await start_sidecar(sidecar_settings)
        try:
            await sidecar.wait_ready()
            await grpc_traffic(sidecar.grpc_port)
            text = await scraped_after_rest_traffic(sidecar)
        finally:
            await sidecar.stop(grace=None)
    assert "kimball_relay_spooled_events_total" in text
    assert promtool_check(text) == ""

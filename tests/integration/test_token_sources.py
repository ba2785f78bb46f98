"""API tokens from every source on a live server: app.config, ``KIMBALL_API_TOKENS`` and a
token file, all accepted on gRPC and REST; the file re-read when it changes, the new tokens
taking effect at the next call without a restart; a failed re-read keeping the old ones;
no token in the log or in /metrics. SIGHUP on a real process: system/test_token_reload.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from support.in_process import gateway_of, local_settings, rest_client, running, sidecar_of
from support.metrics import samples
from support.polling import until

from kimball_grpc.app import RunningServer
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

SECRETS = ("config-token", "env-token", "file-token-1", "file-token-2", "rotated-token")


@dataclass
class Live:
    server: RunningServer
    stub: pb_grpc.KimballServiceStub
    http: aiohttp.ClientSession
    file: Path

    async def accepted(self, token: str) -> tuple[bool, bool]:
        """Whether ``token`` is accepted on gRPC, and on REST."""
        try:
            await self.stub.GetAnalytics(
                pb.GetAnalyticsRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
            on_grpc = True
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            on_grpc = False
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.get("/v0/analytics", headers=headers) as response:
            assert response.status in (200, 401)
            return on_grpc, response.status == 200

    def reloads(self, result: str) -> float:
        return samples(self.server.metrics.registry)[
            ("kimball_api_token_reloads_total", (("result", result),))
        ]


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    file = tmp_path / "api-tokens"
    file.write_text("# the tokens of the web app\nfile-token-1\n\nfile-token-2\n")
    settings = local_settings(
        tmp_path / "data",
        api_auth=True,
        api_auth_tokens=("config-token",),
        api_tokens=("env-token",),
        api_tokens_file=file,
        api_tokens_file_poll_s=0.05,
    )
    async with (
        running(settings) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        gateway_of(server) as gateway,
        rest_client(gateway) as http,
    ):
        yield Live(server, pb_grpc.KimballServiceStub(channel), http, file)


async def test_every_source_is_accepted_on_both_apis(live):
    for token in ("config-token", "env-token", "file-token-1", "file-token-2"):
        assert await live.accepted(token) == (True, True), token
    assert await live.accepted("nobody's-token") == (False, False)
    metrics = samples(live.server.metrics.registry)
    assert metrics[("kimball_api_tokens", ())] == 4


async def test_a_changed_file_takes_effect_at_the_next_call(live, caplog):
    with caplog.at_level(logging.DEBUG):
        live.file.write_text("file-token-2\nrotated-token\n")  # file-token-1 is retired

        async def rotated() -> bool:
            return await live.accepted("rotated-token") == (True, True)

        await until(rotated, "the rotated token to be accepted")
        assert await live.accepted("file-token-1") == (False, False)
        for token in ("config-token", "env-token", "file-token-2"):
            assert await live.accepted(token) == (True, True), token
    assert live.reloads("ok") == 1
    assert samples(live.server.metrics.registry)[("kimball_api_tokens", ())] == 4
    assert "API tokens reloaded (the file changed)" in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text


@pytest.mark.parametrize("how", ["removed", "emptied"])
async def test_a_failed_reload_keeps_the_old_tokens(live, caplog, how):
    with caplog.at_level(logging.DEBUG):
        if how == "removed":
            live.file.unlink()
        else:
            live.file.write_text("# nothing left\n")
        await until(lambda: live.reloads("failed") == 1, "the failed reload")
        for token in ("config-token", "env-token", "file-token-1", "file-token-2"):
            assert await live.accepted(token) == (True, True), token
        # One warning for the change, not one per poll of a file still broken: some polls
        # pass (a wait for something that must not happen).
        await asyncio.sleep(0.3)
        assert live.reloads("failed") == 1
        live.file.write_text("rotated-token\n")
        await until(lambda: live.reloads("ok") == 1, "the reload of the repaired file")
        assert await live.accepted("rotated-token") == (True, True)
        assert await live.accepted("file-token-1") == (False, False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "API tokens not reloaded" in w]) == 1
    for secret in SECRETS:
        assert secret not in caplog.text


async def test_metrics_hold_no_token(live):
    headers = {"Authorization": "Bearer config-token"}
    async with live.http.get("/metrics", headers=headers) as response:
        text = await response.text()
    assert "kimball_api_tokens 4.0" in text
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("source", ["KIMBALL_API_TOKENS", "token file"])
async def test_a_sidecar_presents_its_first_token_to_the_api_server(tmp_path, source):
    # No ANALYTICS_TOKEN: the relay presents the first token the sidecar accepts itself.
    file = tmp_path / "sidecar-tokens"
    file.write_text("# first\nshared-token\nsidecar-only-token\n")
    tokens: dict[str, object] = (
        {"api_tokens": ("shared-token", "sidecar-only-token")}
        if source == "KIMBALL_API_TOKENS"
        else {"api_tokens_file": file}
    )
    api_settings = local_settings(tmp_path / "api", api_auth=True, api_tokens=("shared-token",))
    async with (
        running(api_settings) as api,
        sidecar_of(
            f"127.0.0.1:{api.grpc_port}", tmp_path / "sidecar", api_auth=True, **tokens
        ) as sidecar,
        grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel,
    ):
        event = pb.Event(event_name="signup", user_id="u1")
        await pb_grpc.KimballServiceStub(channel).TrackEvent(
            pb.TrackEventRequest(event=event),
            metadata=(("authorization", "Bearer sidecar-only-token"),),
        )

        def delivered() -> bool:
            return any(c.name == "signup" and c.count == 1 for c in api.engine.counters(""))

        await until(delivered, "the event relayed to the api server", timeout=10)

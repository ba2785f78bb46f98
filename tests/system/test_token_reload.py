"""API tokens of a real `kimball serve` process: from ``KIMBALL_API_TOKENS`` and a token file,
the file re-read on SIGHUP (a failed re-read keeps the tokens of before), bad values
refused at start; and no token anywhere in the process's log."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from support.kimball_process import (
    KIMBALL,
    output_after_listening,
    read_until_listening,
    start,
    start_command,
    stop,
    wait_for_output,
)

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

SECRETS = ("env-token-1", "env-token-2", "file-token-a", "file-token-b")


def accepted(token: str, grpc_port: int, rest_port: int) -> tuple[bool, bool]:
    """Whether ``token`` is accepted on gRPC, and on REST."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        try:
            pb_grpc.KimballServiceStub(channel).ListGoals(
                pb.ListGoalsRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
            on_grpc = True
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            on_grpc = False
    request = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}/v0/goals", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            on_rest = True
    except urllib.error.HTTPError as error:
        assert error.code == 401
        on_rest = False
    return on_grpc, on_rest


def test_tokens_from_the_environment_and_a_file_reloaded_on_sighup(tmp_path: Path) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text("# rotate me\nfile-token-a\n")
    process = start(
        "--grpc-port",
        "0",
        "--api-tokens-file",
        str(tokens),
        env={
            "KIMBALL_API_TOKENS": " env-token-1 , env-token-2 ",
            "KIMBALL_API_TOKENS_FILE_POLL": "3600",  # only SIGHUP re-reads it here
            "LOG_LEVEL": "DEBUG",
        },
    )
    log: list[str] = []
    try:
        listening = read_until_listening(process)
        log += listening.lines
        ports = (listening.grpc_port, listening.rest_port)
        assert any(
            f"3 token(s) accepted: 2 from KIMBALL_API_TOKENS, 1 from {tokens}" in line
            for line in log
        )
        for token in ("env-token-1", "env-token-2", "file-token-a"):
            assert accepted(token, *ports) == (True, True), token

        tokens.write_text("file-token-b\n")
        process.send_signal(signal.SIGHUP)
        wait_for_output(process, "API tokens reloaded (SIGHUP)")
        assert accepted("file-token-b", *ports) == (True, True)
        assert accepted("file-token-a", *ports) == (False, False)
        assert accepted("env-token-1", *ports) == (True, True)

        tokens.write_text("# emptied by mistake\n")
        process.send_signal(signal.SIGHUP)
        wait_for_output(process, "API tokens not reloaded (SIGHUP)")
        assert accepted("file-token-b", *ports) == (True, True)
        assert process.poll() is None  # SIGHUP does not end the process
    finally:
        code = stop(process)
        log += output_after_listening(process)
    assert code == 0
    text = "".join(log)
    assert "WARNING" in text and "holds no token" in text
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"KIMBALL_API_TOKENS": "env-token-1,,env-token-2"}, ["KIMBALL_API_TOKENS", "empty"]),
        (
            {"KIMBALL_API_TOKENS_FILE": "/nonexistent/api-tokens"},
            ["KIMBALL_API_TOKENS_FILE", "cannot read it"],
        ),
        ({"KIMBALL_API_TOKENS_FILE": "EMPTY"}, ["KIMBALL_API_TOKENS_FILE", "holds no token"]),
    ],
    ids=["empty-entry", "missing-file", "empty-file"],
)
def test_bad_tokens_stop_the_start_with_a_clear_error(tmp_path, env, fragments) -> None:
    if env.get("KIMBALL_API_TOKENS_FILE") == "EMPTY":
        empty = tmp_path / "api-tokens"
        empty.write_text("\n# nothing\n")
        env = {"KIMBALL_API_TOKENS_FILE": str(empty)}
    result = subprocess.run(
        [*KIMBALL, "serve", "--grpc-port", "0", "--api-port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("kimball: ")
    for fragment in fragments:
        assert fragment in result.stderr
    for secret in SECRETS:
        assert secret not in result.stderr + result.stdout


def test_the_gateway_checks_its_token_file_and_reloads_it_on_sighup(tmp_path: Path) -> None:
    # The server takes both tokens; the gateway in front of it only those of its file.
    server = start("--grpc-port", "0", env={"KIMBALL_API_TOKENS": "env-token-1,env-token-2"})
    tokens = tmp_path / "gateway-tokens"
    tokens.write_text("env-token-1\n")
    gateway = None
    log: list[str] = []
    try:
        grpc_port = read_until_listening(server).grpc_port
        gateway = start_command(
            "gateway",
            "--grpc-target",
            f"127.0.0.1:{grpc_port}",
            "--api-port",
            "0",
            "--api-tokens-file",
            str(tokens),
        )
        listening = read_until_listening(gateway)
        log += listening.lines

        def status(token: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{listening.rest_port}/v0/goals",
                headers={"Authorization": f"Bearer {token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        assert (status("env-token-1"), status("env-token-2")) == (200, 401)
        tokens.write_text("env-token-2\n")
        gateway.send_signal(signal.SIGHUP)
        wait_for_output(gateway, "API tokens reloaded (SIGHUP)")
        assert (status("env-token-1"), status("env-token-2")) == (401, 200)
    finally:
        stop(gateway)
        stop(server)
    log += output_after_listening(gateway)
    for secret in SECRETS:
        assert secret not in "".join(log)

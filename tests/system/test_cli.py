"""`kimball serve` as a real process: it says where it listens and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
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
    token_config,
    wait_for_port,
)

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc


def bearer(data_dir: Path) -> tuple[tuple[str, str]]:
    """Call metadata with the token a server generated into ``data_dir``."""
    token = (data_dir / "api-token").read_text().strip()
    return (("authorization", f"Bearer {token}"),)


def test_serve_logs_where_it_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = start("--grpc-port", "0", "--data-dir", str(tmp_path))
    try:
        listening = read_until_listening(process)
        port, logged = listening.grpc_port, listening.lines
        # Auth is on by default: with no token configured, one is kept in the data
        # directory and its path, never the token, is logged.
        metadata = bearer(tmp_path)
        assert any(str(tmp_path / "api-token") in line for line in logged)
        assert not any(metadata[0][1].split()[1] in line for line in logged)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            # A live subscription must not hold up shutdown. It registers asynchronously:
            # track events until it has delivered one, so it is surely live.
            subscription = stub.Subscribe(pb.SubscribeRequest(), metadata=metadata)
            track = pb.TrackEventRequest(event=pb.Event(event_name="a", user_id="u"))
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(next, subscription)
                deadline = time.monotonic() + 20
                while not first.done():
                    assert time.monotonic() < deadline, "subscription delivered nothing"
                    stub.TrackEvent(track, metadata=metadata)
                    wait([first], timeout=0.05)
                assert first.result().event.event_name == "a"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            # The stream ends with UNAVAILABLE, not OK: the client can tell the server went
            # away (events tracked while probing may come first).
            names = set()
            with pytest.raises(grpc.RpcError) as ended:
                names.update(r.event.event_name for r in subscription)
            assert names <= {"a"}
            assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in ended.value.details()
    finally:
        process.kill()
        process.wait()


def test_generated_token_is_kept_across_restarts_and_private(tmp_path: Path) -> None:
    tokens = []
    for _ in range(2):
        process = start("--grpc-port", "0", "--data-dir", str(tmp_path))
        try:
            wait_for_port(process)
            tokens.append(bearer(tmp_path))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
    assert tokens[0] == tokens[1]
    assert (tmp_path / "api-token").stat().st_mode & 0o077 == 0


def test_serve_refuses_a_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "app.config"
    config.write_text('[{features, [\n  {counters, #{init => [#{pattern => "("}]}}\n]}].\n')
    result = subprocess.run(
        [*KIMBALL, "serve", "--grpc-port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(config) in result.stderr and "counter rule 1" in result.stderr


def test_serve_refuses_a_bad_environment_variable() -> None:
    result = subprocess.run(
        [*KIMBALL, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRPC_PORT": "lots"},
    )
    assert result.returncode == 2
    assert "GRPC_PORT" in result.stderr


@pytest.mark.parametrize("flag", ["--grpc-port", "--api-port"])
@pytest.mark.parametrize("value", ["70000", "-1", "http"])
def test_serve_refuses_a_bad_port_flag(flag: str, value: str) -> None:
    result = subprocess.run(
        [*KIMBALL, "serve", f"{flag}={value}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert flag in result.stderr and value in result.stderr


@pytest.mark.parametrize("command", [["serve"], ["gateway", "--grpc-target", "h:1"]])
@pytest.mark.parametrize(
    ("flag", "says"), [("--log-format=xml", "text or json"), ("--log-level=loud", "DEBUG, INFO")]
)
def test_serve_and_gateway_refuse_a_bad_log_flag(command: list[str], flag: str, says: str):
    result = subprocess.run([*KIMBALL, *command, flag], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert flag.split("=")[0] in result.stderr and says in result.stderr


@pytest.mark.parametrize("value", ["0", "many"])
def test_serve_refuses_a_bad_limit_flag(value: str) -> None:
    result = subprocess.run(
        [*KIMBALL, "serve", f"--max-namespaces={value}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--max-namespaces" in result.stderr and value in result.stderr


def test_serve_takes_limits_from_flags_and_the_environment(tmp_path: Path) -> None:
    process = start(
        "--grpc-port",
        "0",
        "--data-dir",
        str(tmp_path),
        "--max-namespaces",
        "1",
        env={"KIMBALL_MAX_GOALS": "1"},
    )
    try:
        port = wait_for_port(process)
        metadata = bearer(tmp_path)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            stub.TrackEvent(
                pb.TrackEventRequest(event=pb.Event(event_name="a", user_id="u")), metadata=metadata
            )
            stub.CreateGoal(pb.CreateGoalRequest(goal_name="g1"), metadata=metadata)
            for call, request in (
                (
                    stub.TrackEvent,
                    pb.TrackEventRequest(
                        event=pb.Event(event_name="a", user_id="u", namespace="other")
                    ),
                ),
                (stub.CreateGoal, pb.CreateGoalRequest(goal_name="g2")),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, metadata=metadata)
                assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "KIMBALL_MAX_GOALS" in refused.value.details()
    finally:
        stop(process)


@pytest.mark.parametrize("command", ["serve", "gateway"])
@pytest.mark.parametrize("value", ["4194303", "64MiB", "2147483648"])
def test_serve_and_gateway_refuse_a_bad_max_response_bytes(command: str, value: str) -> None:
    target = ["--grpc-target", "127.0.0.1:1"] if command == "gateway" else []
    result = subprocess.run(
        [*KIMBALL, command, *target, "--max-response-bytes", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--max-response-bytes" in result.stderr and value in result.stderr


def test_standalone_gateway_in_front_of_a_remote_server(tmp_path: Path) -> None:
    config = token_config(tmp_path, "tok")
    server = start("--grpc-port", "0", "--data-dir", str(tmp_path), "--config", str(config))
    gateway = None
    try:
        grpc_port = wait_for_port(server)
        gateway = start_command(
            "gateway",
            "--grpc-target",
            f"127.0.0.1:{grpc_port}",
            "--host",
            "127.0.0.1",
            "--api-port",
            "0",
            "--config",
            str(config),
        )
        rest_port = read_until_listening(gateway).rest_port
        base = f"http://127.0.0.1:{rest_port}"
        auth = {"Authorization": "Bearer tok", "Content-Type": "application/json"}
        body = json.dumps({"event_name": "signup", "user_id": "u1"}).encode()
        request = urllib.request.Request(f"{base}/v0/analytics", body, auth, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
        request = urllib.request.Request(f"{base}/v0/analytics", headers=auth)
        with urllib.request.urlopen(request, timeout=10) as response:
            counts = {c["name"]: c["count"] for c in json.load(response)["counts"]}
        assert counts == {"global_counter": 1, "signup": 1}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/v0/goals", timeout=10)
        assert refused.value.code == 401
        # Metrics live with the server, not with a gateway elsewhere.
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", headers=auth))
        assert missing.value.code == 404
        assert stop(gateway) == 0
    finally:
        stop(gateway)
        stop(server)


@pytest.mark.parametrize("access_log", ["--access-log", "--no-access-log"])
def test_serve_writes_json_lines_and_the_access_log_as_told(tmp_path: Path, access_log: str):
    process = start(
        "--grpc-port", "0", "--data-dir", str(tmp_path), "--log-format", "json", access_log
    )
    try:
        listening = read_until_listening(process)
        base = f"http://127.0.0.1:{listening.rest_port}"
        with urllib.request.urlopen(f"{base}/alive", timeout=10) as response:
            assert response.status == 200
            request_id = response.headers["X-Request-Id"]
        assert stop(process) == 0
        output = [*listening.lines, *output_after_listening(process)]
        lines = [json.loads(line) for line in output]
    finally:
        stop(process)
    assert {"time", "level", "logger", "message"} <= lines[0].keys()
    access = [line for line in lines if line["logger"] == "kimball.access"]
    if access_log == "--access-log":
        assert [(a["route"], a["status"], a["request_id"]) for a in access] == [
            ("/alive", 200, request_id)
        ]
    else:
        assert access == []

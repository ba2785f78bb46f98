"""`kimball health`, the container's health check: gRPC health and REST readiness both, so a
server whose REST side cannot be reached is not reported healthy."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kimball_process import (
    KIMBALL,
    Listening,
    read_until_listening,
    start,
    start_command,
    stop,
)
from support.ports import reserved_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listening]:
    process = start("--grpc-port", "0", "--data-dir", str(tmp_path_factory.mktemp("data")))
    try:
        yield read_until_listening(process)
    finally:
        stop(process)


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KIMBALL, "health", "--timeout", "5", *args], capture_output=True, text=True, timeout=60
    )


def ready_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/ready"


def test_healthy_when_grpc_serves_and_rest_is_ready(server: Listening) -> None:
    url = ready_url(server.rest_port)
    result = health("--target", f"127.0.0.1:{server.grpc_port}", "--http", url)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["SERVING", f"{url}: HTTP 200"]


def test_grpc_alone_is_checked_without_http(server: Listening) -> None:
    result = health("--target", f"127.0.0.1:{server.grpc_port}")
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING")


def test_unhealthy_when_rest_answers_not_ready(server: Listening, tmp_path: Path) -> None:
    # A REST gateway whose gRPC server is down answers /ready with 503; gRPC itself serves.
    with reserved_port() as down:
        gateway = start_command(
            "gateway",
            "--grpc-target",
            f"127.0.0.1:{down}",
            "--host",
            "127.0.0.1",
            "--api-port",
            "0",
        )
        try:
            url = ready_url(read_until_listening(gateway).rest_port)
            result = health("--target", f"127.0.0.1:{server.grpc_port}", "--http", url)
        finally:
            stop(gateway)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["SERVING"]
    assert result.stderr.strip() == f"kimball: {url} is not healthy: HTTP 503"


@pytest.mark.parametrize("unreachable", ["grpc", "rest", "both"])
def test_unhealthy_when_a_side_is_unreachable(server: Listening, unreachable: str) -> None:
    with reserved_port() as closed:
        grpc_port = closed if unreachable in ("grpc", "both") else server.grpc_port
        url = ready_url(closed if unreachable in ("rest", "both") else server.rest_port)
        result = health("--target", f"127.0.0.1:{grpc_port}", "--http", url)
    assert result.returncode == 1
    # Both sides are checked and each failure is named, whichever fails first.
    grpc_down = f"kimball: 127.0.0.1:{grpc_port} is not healthy: UNAVAILABLE"
    rest_down = f"kimball: {url} is not healthy: [Errno 111] Connection refused"
    expected = {"grpc": [grpc_down], "rest": [rest_down], "both": [grpc_down, rest_down]}
    assert result.stderr.splitlines() == expected[unreachable]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--http", "127.0.0.1:8080/ready"),
        ("--http", "ftp://127.0.0.1/ready"),
        ("--http", "http:///ready"),
        ("--http", "http://127.0.0.1:99999/ready"),
        ("--http", "http://[::1/ready"),
        ("--timeout", "0"),
        ("--timeout", "soon"),
    ],
)
def test_health_refuses_a_bad_option(option: str, value: str) -> None:
    result = health(option, value)
    assert result.returncode == 2
    assert f"argument {option}:" in result.stderr and repr(value) in result.stderr

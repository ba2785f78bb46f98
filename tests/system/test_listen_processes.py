"""`kimball serve` and `kimball gateway` as processes: with no address given they answer on
127.0.0.1 and ::1 (what Docker's port mapping, Kubernetes probes and `localhost` scripts
use); `--host` and `--api-host` choose; a host without IPv6 gets IPv4."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.kimball_process import KIMBALL, read_until_listening, start_command, stop
from support.reachability import LOOPBACKS, grpc_answers, ipv6_loopback, rest_answers

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")


@needs_ipv6
def test_serve_answers_on_ipv4_and_ipv6_by_default(tmp_path: Path) -> None:
    process = start_command("serve", "--grpc-port", "0", "--api-port", "0")
    try:
        listening = read_until_listening(process)
        assert "gRPC on [::]:" in "".join(listening.lines)
        for host in LOOPBACKS:
            assert grpc_answers(host, listening.grpc_port), host
            assert rest_answers(host, listening.rest_port), host
    finally:
        stop(process)


@needs_ipv6
def test_serve_listens_where_the_environment_and_flags_say(tmp_path: Path) -> None:
    # REST on IPv4 loopback only (the flag), gRPC on IPv6 loopback only (the variable).
    process = start_command(
        "serve",
        "--grpc-port",
        "0",
        "--api-port",
        "0",
        "--api-host",
        "127.0.0.1",
        env={"KIMBALL_HOST": "[::1]"},
    )
    try:
        listening = read_until_listening(process)
        assert [grpc_answers(h, listening.grpc_port) for h in LOOPBACKS] == [False, True]
        assert [rest_answers(h, listening.rest_port) for h in LOOPBACKS] == [True, False]
    finally:
        stop(process)


@needs_ipv6
def test_gateway_answers_on_ipv4_and_ipv6_by_default(tmp_path: Path) -> None:
    server = start_command("serve", "--host", "127.0.0.1", "--grpc-port", "0", "--api-port", "0")
    gateway = None
    try:
        grpc_port = read_until_listening(server).grpc_port
        gateway = start_command(
            "gateway", "--grpc-target", f"127.0.0.1:{grpc_port}", "--api-port", "0"
        )
        rest_port = read_until_listening(gateway).rest_port
        assert [rest_answers(h, rest_port) for h in LOOPBACKS] == [True, True]
    finally:
        stop(gateway)
        stop(server)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--host", "127.0.0.1:50051"),
        ("--host", "http://0.0.0.0"),
        ("--api-host", ""),
        ("--api-host", "bad_name"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_a_bad_address_stops_the_start_naming_the_option(command, option, value) -> None:
    extra = ["--grpc-target", "127.0.0.1:1"] if command == "gateway" else []
    result = subprocess.run(
        [*KIMBALL, command, *extra, f"{option}={value}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert option in result.stderr and "an address to listen on" in result.stderr


def test_a_bad_address_variable_stops_the_start_naming_it() -> None:
    result = subprocess.run(
        [*KIMBALL, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"KIMBALL_API_HOST": "[::1]:8080", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "KIMBALL_API_HOST" in result.stderr and "without a port" in result.stderr


# In a network namespace of its own with IPv6 turned off (unshare: a user namespace, no
# root needed where the kernel allows them), the defaults still start and answer on IPv4.
NO_IPV6_CHECK = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")
    from support.kimball_process import read_until_listening, start_command, stop
    from support.reachability import grpc_answers, rest_answers

    process = start_command("serve", "--grpc-port", "0", "--api-port", "0")
    try:
        listening = read_until_listening(process)
        print(grpc_answers("127.0.0.1", listening.grpc_port),
              rest_answers("127.0.0.1", listening.rest_port))
    finally:
        stop(process)
    """
)


def test_serve_starts_on_ipv4_on_a_host_without_ipv6() -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip")
    isolated = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
    )
    if isolated.returncode != 0:
        pytest.skip(f"no network namespace here: {isolated.stderr.decode().strip()}")
    script = (
        "ip link set lo up && "
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1 && "
        f'exec "{sys.executable}" -c "$0"'
    )
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script, NO_IPV6_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    if "sysctl" in result.stderr and result.returncode != 0:
        pytest.skip(f"cannot turn IPv6 off here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"], result.stdout

"""Whether a server answers at an address: gRPC health, REST ``/ready``; for tests that
check where servers listen (IPv4, IPv6) and who they let in (TLS)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kimball_grpc.outbound.channels import target_address

LOOPBACKS = ("127.0.0.1", "::1")


def ipv6_loopback() -> bool:
    """Whether this host has an IPv6 loopback to listen on."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def grpc_answers(host: str, port: int) -> bool:
    """Whether gRPC health answers at ``host:port`` in plain text (False: unreachable)."""
    with grpc.insecure_channel(target_address(host, port)) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE, error
            return False
    return True


def rest_answers(host: str, port: int) -> bool:
    """Whether REST answers ``/ready`` at ``host:port`` (False: connection refused)."""
    try:
        url = f"http://{target_address(host, port)}/ready"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except urllib.error.URLError as error:
        assert isinstance(error.reason, ConnectionRefusedError), error
        return False

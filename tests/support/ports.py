"""Loopback ports for servers a test starts on a port it must know before they start (to
start them again there, or to give it to another server's settings)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on now, never handed out twice in one process.

    Under pytest-xdist each worker takes only its own share of the ports (by ``port // 2``:
    Linux hands out odd ports for bind(0), so the port's parity says nothing), so two
    workers never pick the same port between picking it and binding it.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    for _ in range(10_000):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if (port // 2) % workers == worker and port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port")


@contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port bound but not listening while the ``with`` lasts: connections to it
    are refused, and no other test can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]

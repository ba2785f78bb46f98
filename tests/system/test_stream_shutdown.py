"""Subscribers that stopped reading: their streams, blocked in writes that no client takes,
must not hold `kimball serve`'s shutdown, nor flood its log when the client goes away."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from support.kimball_process import read_until_listening, start, stop, token_config

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

TOKEN = "stream-shutdown-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)

# Subscribers in a process of their own: once each has an event, the process stops itself
# (SIGSTOP), so nothing reads their sockets any more, as with a client that hangs.
SUBSCRIBERS = """
import asyncio, os, signal, sys
import grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb, kimball_pb2_grpc as pb_grpc

async def main(port, count, token):
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        calls = [stub.Subscribe(pb.SubscribeRequest(), metadata=metadata) for _ in range(count)]
        for call in calls:
            await call.read()
        print("live", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
"""


@contextmanager
def blocked_subscribers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, subprocess.Popen, int]]:
    """A server, and a process of 4 subscribers that stopped reading while the server was
    writing to them far more than socket buffers and flow-control windows take."""
    config = token_config(tmp_path, TOKEN)
    server = start(
        "--grpc-port", "0", "--data-dir", str(tmp_path / "data"), "--config", str(config)
    )
    subscribers = None
    try:
        port = read_until_listening(server).grpc_port
        subscribers = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBERS, str(port), "4", TOKEN],
            stdout=subprocess.PIPE,
            text=True,
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            deadline = time.monotonic() + 20
            ping = pb.TrackEventRequest(event=pb.Event(event_name="ping", user_id="u"))
            assert subscribers.stdout is not None
            while not select.select([subscribers.stdout], [], [], 0.05)[0]:
                assert time.monotonic() < deadline, "the subscribers got no event"
                stub.TrackEvent(ping, metadata=AUTH)
            assert subscribers.stdout.readline().strip() == "live"
            track_many(stub)
        yield server, subscribers, port
    finally:
        if subscribers is not None:
            subscribers.kill()
            subscribers.wait()
        stop(server)


def track_many(stub: pb_grpc.KimballServiceStub) -> None:
    long = "x" * 200
    for batch in range(8):
        request = pb.TrackEventsRequest(
            events=[
                pb.Event(event_name=f"{long}{i % 50}", user_id=f"{long}{batch}-{i}")
                for i in range(5_000)
            ]
        )
        stub.TrackEvents(request, metadata=AUTH, timeout=60)


def test_sigterm_does_not_wait_for_subscribers_that_stopped_reading(tmp_path: Path) -> None:
    with blocked_subscribers(tmp_path) as (server, _, _):
        began = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert time.monotonic() - began < 6  # not the 10 s grace period


def test_a_subscriber_killed_in_the_middle_of_a_write_costs_no_traceback(tmp_path: Path) -> None:
    with blocked_subscribers(tmp_path) as (server, subscribers, port):
        subscribers.kill()  # its connection resets under the blocked writes
        subscribers.wait()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            track_many(pb_grpc.KimballServiceStub(channel))  # the server notices
        server.send_signal(signal.SIGTERM)
        log, _ = server.communicate(timeout=30)
        assert server.returncode == 0
        assert "Traceback" not in log and " ERROR " not in log, log

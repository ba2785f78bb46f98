"""The sidecar's relay sender against a real gRPC api server on loopback that stalls."""

from __future__ import annotations

import asyncio

import grpc
from support.polling import until

from kimball_grpc.core.events import Event
from kimball_grpc.generated.kimball.v1 import relay_pb2 as rpb
from kimball_grpc.generated.kimball.v1 import relay_pb2_grpc as relay_grpc
from kimball_grpc.sidecar.sender import RelaySender
from kimball_grpc.sidecar.spool import Spool


class _StalledRelay(relay_grpc.KimballRelayServicer):
    """An api server that takes the stream and then reads nothing, ever."""

    async def Relay(self, request_iterator, context):
        await asyncio.Event().wait()
        yield rpb.RelayResponse()


async def test_a_stalled_api_server_is_given_up_after_the_ack_timeout(tmp_path):
    server = grpc.aio.server()
    relay_grpc.add_KimballRelayServicer_to_server(_StalledRelay(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    spool = Spool(tmp_path)
    spool.open()
    long_name = "é" * 200
    for start in range(0, 40_000, 10_000):  # megabytes: more than flow control lets through
        await spool.accept(
            [
                Event(event_name=f"{long_name}{i}", user_id=f"u{i}")
                for i in range(start, start + 10_000)
            ]
        )
    sender = RelaySender(spool, f"127.0.0.1:{port}", ack_timeout=0.5, first_backoff=0.05)
    sender.start()
    try:
        await until(
            lambda: sender.failures >= 2, "the sender to give up on the stalled server", 10, 0.05
        )
        assert spool.pending == 40_000  # nothing acknowledged, nothing dropped
    finally:
        await sender.stop()
        await server.stop(None)
        await spool.close()

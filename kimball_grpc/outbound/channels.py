"""Channels this server opens to other servers: event and prediction targets, and a
sidecar's api server. One way to address them and to wait for a connection."""

from __future__ import annotations

import asyncio

import grpc

from kimball_grpc.config.tls import ClientTls
from kimball_grpc.core.limits import KEEPALIVE_PING_SECONDS, MAX_MESSAGE_BYTES

ChannelOptions = tuple[tuple[str, int], ...]


def kimball_messages(max_response_bytes: int) -> ChannelOptions:
    """Kimball's own message limits, for a channel to a Kimball server: requests as large
    as it takes, answers as large as it sends (its ``max_response_bytes``)."""
    return (
        ("grpc.max_receive_message_length", max_response_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    )


def is_over_receive_limit(error: grpc.aio.AioRpcError) -> bool:
    """Whether a call failed because its answer was larger than this channel takes (its
    ``max_receive_message_length``), not because the server refused it."""
    return error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and (
        "Received message larger than max" in (error.details() or "")
    )


# gRPC drops an unused connection after 30 min; a quiet peer is not an outage.
KEEP_IDLE_CONNECTION: ChannelOptions = (("grpc.client_idle_timeout_ms", 2**31 - 1),)
# Calls fail fast while the peer is down, and work again within seconds once it is back
# (gRPC's own reconnect backoff grows to 2 min).
QUICK_RECONNECT: ChannelOptions = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
# A long-lived stream notices a peer that vanished without closing the connection.
# (The server side permits these pings: Settings.grpc_min_ping_interval_s is at most this.)
KEEPALIVE: ChannelOptions = (
    ("grpc.keepalive_time_ms", KEEPALIVE_PING_SECONDS * 1000),
    ("grpc.keepalive_timeout_ms", 20_000),
)

# The same for a server Kimball does not run (an event target): gRPC servers (C++ and
# Python, Go, Java alike) by default end a connection whose client pings more often than
# every 5 minutes while they send nothing, which a target reading a stream never does.
# Pings only go out while the stream is quiet: data from the target resets the timer.
TARGET_KEEPALIVE: ChannelOptions = (
    ("grpc.keepalive_time_ms", 330_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)


class ConnectionLost(Exception):
    """No usable connection, or a call failed transiently: reconnect after a backoff."""


def insecure_channel(address: str, *options: ChannelOptions) -> grpc.aio.Channel:
    """A plaintext channel to ``address`` with the given option groups."""
    return grpc.aio.insecure_channel(address, options=[o for group in options for o in group])


def client_channel(
    address: str, tls: ClientTls | None, *options: ChannelOptions
) -> grpc.aio.Channel:
    """A channel to ``address`` over TLS with ``tls`` (plain text without), with the given
    option groups."""
    if tls is None:
        return insecure_channel(address, *options)
    return grpc.aio.secure_channel(
        address, channel_credentials(tls), options=[o for group in options for o in group]
    )


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """gRPC's credentials for ``tls``: the CA bundle, and the client's certificate if any."""
    return grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate_chain)


def target_address(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it (an IPv6 literal in brackets)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


async def wait_until_connected(channel: grpc.aio.Channel, address: str, timeout: float) -> None:
    """Return once ``channel`` is READY; ``ConnectionLost`` on failure or after ``timeout``.

    Not ``channel_ready()``: it waits through TRANSIENT_FAILURE on gRPC's own
    reconnect backoff (1 s, growing to 2 min), so a refused port would hang it
    until the timeout. Failing fast lets the caller's backoff decide the pace."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise ConnectionLost(f"cannot connect to {address}")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ConnectionLost(f"no connection to {address} within {timeout:g} s")
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except TimeoutError:
            continue  # the loop reports the timeout
        state = channel.get_state(try_to_connect=True)

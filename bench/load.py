"""The load the benchmark scripts drive: pre-serialized requests sent to a server (gRPC calls,
REST POSTs, so many in flight until a deadline), and the in-process passes they are compared
with (the same events through ``Ingestor.accept`` in this process)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import aiohttp
import grpc

# servers and workload: bench modules next to this one.
from servers import AUTH, BENCH_TOKEN, CHANNEL_OPTIONS, SERVICE
from workload import BATCH, Body, batches

from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.codec import proto_mapping
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, EventFields
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.streaming.subscriptions import SubscriptionHub

PATH = "/v0/analytics"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_TOKEN}"}
FOREVER = float("inf")
T = TypeVar("T")


async def in_flight(
    source: Iterator[T], workers: int, seconds: float, send: Callable[[T], Awaitable[int]]
) -> int:
    """``workers`` senders taking turns at ``source`` (each item is sent by one of them) until
    it runs out or ``seconds`` pass; the sum of what ``send`` returned (events or calls)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        for item in source:
            n = await send(item)  # not `done += await ...`: that loses updates
            done += n
            if time.perf_counter() > deadline:
                return

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


def channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


@contextlib.asynccontextmanager
async def rpc(
    port: int, method: str, response: type | None = None, *, streaming: bool = False
) -> AsyncIterator[Callable]:
    """A ``KimballService`` method on a fresh channel to ``port``, called with requests
    already serialized; answers decoded as ``response`` (None: left as bytes)."""
    async with channel(port) as ch:
        kind = ch.stream_unary if streaming else ch.unary_unary
        decode = response.FromString if response is not None else None
        yield kind(f"{SERVICE}/{method}", request_serializer=None, response_deserializer=decode)


# -- over the wire --------------------------------------------------------------------------


def run_stream(port: int, messages: list[Body]) -> int:
    """One ``StreamEvents`` call carrying ``messages``; the events in them."""
    return run_streams(port, messages, 1)


def run_streams(port: int, messages: list[Body], streams: int) -> int:
    """``streams`` concurrent ``StreamEvents`` calls on one channel, message ``i`` on stream
    ``i % streams``; the events in them."""

    async def go() -> list[int]:
        async with rpc(port, "StreamEvents", pb.StreamEventsResponse, streaming=True) as call:

            async def one(part: list[Body]) -> int:
                response = await call((data for data, _ in part), metadata=AUTH)
                return response.messages

            return await asyncio.gather(*(one(messages[s::streams]) for s in range(streams)))

    received = sum(asyncio.run(go()))
    if received != len(messages):
        raise RuntimeError(f"server got {received} messages of {len(messages)}")
    return sum(n for _, n in messages)


def run_track_events(port: int, messages: list[Body], inflight: int, seconds: float) -> int:
    """Unary ``TrackEvents`` with pre-serialized requests, ``inflight`` at a time; events done."""

    async def go() -> int:
        async with rpc(port, "TrackEvents", pb.TrackEventsResponse) as call:

            async def send(message: Body) -> int:
                data, n = message
                answer = await call(data, metadata=AUTH)
                if answer.accepted != n:
                    raise RuntimeError(f"TrackEvents accepted {answer.accepted} of {n}")
                return n

            return await in_flight(iter(messages), inflight, seconds, send)

    return asyncio.run(go())


def run_posts(port: int, bodies: list[Body], connections: int, seconds: float) -> int:
    """``POST /v0/analytics`` each body once (or until ``seconds``), ``connections`` at a
    time on keep-alive connections of one session; events done. Every answer must be 204."""
    url = f"http://127.0.0.1:{port}{PATH}"

    async def go() -> int:
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def send(item: Body) -> int:
                body, n = item
                async with session.post(url, data=body, headers=HEADERS) as answer:
                    if answer.status != 204:
                        text = await answer.text()
                        raise RuntimeError(f"POST {url}: {answer.status} {text[:200]}")
                    await answer.read()
                return n

            return await in_flight(iter(bodies), connections, seconds, send)

    return asyncio.run(go())


# -- in this process ------------------------------------------------------------------------


def ours_accept(engine_factory: Callable[[], Engine], events: list[Event], batch: int = BATCH):
    """A timed pass of Ingestor.accept in batches (validate, hash, apply): what gRPC calls.
    A setup: it makes a fresh engine and returns the pass, which returns the events taken."""
    chunks = batches(events, batch)

    def setup() -> Callable[[], int]:
        ingestor = Ingestor(engine_factory(), SubscriptionHub())

        async def feed() -> int:
            accept = ingestor.accept
            n = 0
            for b in chunks:
                n += await accept(b)
            return n

        def run() -> int:
            return asyncio.run(feed())

        return run

    return setup


def servicer_steps(data: bytes) -> list[EventFields]:
    """What the servicer does with a ``TrackEventsRequest`` before ``accept``: decode, map."""
    request = pb.TrackEventsRequest.FromString(data)
    return proto_mapping.request_event_fields(request)


def in_process(
    bodies: list[Body], steps: Callable[[bytes], Sequence[EventFields]]
) -> Callable[[], int]:
    """A timed pass: every body through ``steps`` then ``Ingestor.accept``, on a fresh engine."""
    ingestor = Ingestor(Engine(), SubscriptionHub())

    async def go() -> int:
        accept = ingestor.accept
        n = 0
        for body, _ in bodies:
            n += await accept(steps(body))
        return n

    return lambda: asyncio.run(go())

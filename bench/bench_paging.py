"""Paged reads: a namespace of many event names read whole and in pages, from `kimball serve`.

Run from the repository root:

    .venv/bin/python bench/bench_paging.py            # 220,000 event names, about 3 minutes
    .venv/bin/python bench/bench_paging.py --quick    # a smoke run

One ``kimball serve`` subprocess (``--server-cpu``), its ``--max-response-bytes`` raised to
1 GiB so that the whole answer is allowed, holds one namespace of ``--event-names`` named
counters (one event each, loaded with StreamEvents before any clock starts). Then, in
interleaved rounds, it reads every counter:

- over gRPC (``GetAnalytics``) and REST (``GET /v0/analytics``), whole (no ``page_size``)
  and in pages of 1,000 and 10,000 (following ``next_page_token``);
- per read: the wall time, the calls, the server's CPU per counter (from /proc), the
  answer's bytes, and the longest single call: the server answers a call in one go on its
  event loop, so that is how long everything else waits meanwhile;
- a probe process (on the load generator's CPU) asks ``GET /alive`` every 20 ms during the
  read: its slowest answer is what a health check or any other caller sees.

Paging bounds each call's work by the page, not the namespace; a page costs one lookup
into the sorted names (kept between reads) plus its own counters. Timing is only printed,
never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import aiohttp
import grpc

# figures, run_options and servers: bench modules next to this script.
from figures import measure, median, percentile
from run_options import add_server_options, add_size, new_parser, parse, start_run
from servers import AUTH, BENCH_TOKEN, SERVICE, ServerProcess, kimball_argv

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

MAX_RESPONSE_BYTES = 1024**3
LOAD_BATCH = 10_000  # events per StreamEvents message while loading
PROBE_INTERVAL = 0.02  # seconds between /alive probes
PAGE_SIZES = (0, 1_000, 10_000)  # 0: the whole answer
OPTIONS = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]


@dataclass
class Read:
    """What one read of every counter took."""

    counters: int
    calls: int
    answer_bytes: int
    longest_call: float  # seconds


# -- loading --------------------------------------------------------------------------


def load(port: int, names: int) -> None:
    """``names`` event names, one event each, into the default namespace."""

    def messages():
        for start in range(0, names, LOAD_BATCH):
            yield pb.TrackEventsRequest(
                events=[
                    pb.Event(event_name=f"event_name_{i:07d}", user_id=f"u{i % 1000}")
                    for i in range(start, min(start + LOAD_BATCH, names))
                ]
            ).SerializeToString()

    async def go() -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
            call = channel.stream_unary(
                f"{SERVICE}/StreamEvents", response_deserializer=pb.StreamEventsResponse.FromString
            )
            return (await call(messages(), metadata=AUTH, timeout=600)).accepted

    if (accepted := asyncio.run(go())) != names:
        raise RuntimeError(f"loaded {accepted} of {names} events")


# -- reading --------------------------------------------------------------------------


async def read_pages(fetch: Callable[[str], Awaitable[tuple[int, int, str]]]) -> Read:
    """Every page: ``fetch(token)`` answers (counters, bytes, next token)."""
    read = Read(0, 0, 0, 0.0)
    token = ""
    while True:
        start = time.perf_counter()
        counters, size, token = await fetch(token)
        read.longest_call = max(read.longest_call, time.perf_counter() - start)
        read.counters += counters
        read.calls += 1
        read.answer_bytes += size
        if not token:
            return read


async def grpc_read(port: int, page_size: int) -> Read:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        call = channel.unary_unary(f"{SERVICE}/GetAnalytics", response_deserializer=None)

        async def fetch(token: str) -> tuple[int, int, str]:
            request = pb.GetAnalyticsRequest(page_size=page_size, page_token=token)
            data = await call(request.SerializeToString(), metadata=AUTH, timeout=300)
            answer = pb.GetAnalyticsResponse.FromString(data)
            return len(answer.counts), len(data), answer.next_page_token

        return await read_pages(fetch)


async def rest_read(port: int, page_size: int) -> Read:
    headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def fetch(token: str) -> tuple[int, int, str]:
            params = {"page_size": str(page_size)} if page_size else {}
            if token:
                params["page_token"] = token
            url = f"http://127.0.0.1:{port}/v0/analytics"
            async with session.get(url, params=params) as response:
                data = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET /v0/analytics: {response.status} {data[:200]!r}")
            body = await asyncio.to_thread(json.loads, data)
            return len(body["counts"]), len(data), body.get("next_page_token", "")

        return await read_pages(fetch)


# -- the /alive probe -----------------------------------------------------------------


def probe(port: int, stop: Connection, out: Connection) -> None:
    """``GET /alive`` every PROBE_INTERVAL until told to stop; send back each latency."""
    latencies = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out.send("started")
    while not stop.poll(PROBE_INTERVAL):
        start = time.perf_counter()
        connection.request("GET", "/alive")
        connection.getresponse().read()
        latencies.append(time.perf_counter() - start)
    out.send(latencies)


def probed(port: int, run: Callable[[], Read]) -> tuple[Read, list[float]]:
    """``run()`` while a probe process asks /alive; the read and the probe's latencies."""
    stop_here, stop_there = multiprocessing.Pipe()
    results_here, results_there = multiprocessing.Pipe()
    process = multiprocessing.Process(target=probe, args=(port, stop_there, results_there))
    process.start()
    results_here.recv()
    try:
        read = run()
    finally:
        stop_here.send(True)
        latencies = results_here.recv()
        process.join()
    return read, latencies


# -- the run --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__, users=None, rounds=(3, 1))
    add_size(parser, "--event-names", 220_000, 20_000, "event names in the namespace")
    add_server_options(parser, "the server's CPU")
    return parse(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpu = start_run(args, "bench_paging.py")
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess("kimball", [], cpu, tmp)
        # Above the default limit of event names per namespace: the namespace is that large.
        server.argv = kimball_argv(
            server,
            f"{tmp}/data",
            "--max-response-bytes",
            str(MAX_RESPONSE_BYTES),
            "--max-event-names",
            str(args.event_names),
        )
        server.start()
        try:
            server.wait_serving()
            server.wait_http("/alive")
            started = time.perf_counter()
            load(server.port, args.event_names)
            print(
                f"loaded {args.event_names:,} event names in "
                f"{time.perf_counter() - started:.1f} s; {args.rounds} rounds\n"
            )
            report(server, args.rounds)
        finally:
            server.stop()
    return 0


def report(server: ServerProcess, rounds: int) -> None:
    reads = {
        (api, size): reader
        for api, reader in (("gRPC", grpc_read), ("REST", rest_read))
        for size in PAGE_SIZES
    }
    found: dict[tuple[str, int], list[tuple[object, Read, list[float]]]] = {k: [] for k in reads}
    for _ in range(rounds):
        for (api, size), reader in reads.items():
            port = server.port if api == "gRPC" else server.http_port
            result: list[Read] = []

            def run(reader=reader, port=port, size=size, result=result) -> int:
                result.append(asyncio.run(reader(port, size)))
                return result[-1].counters

            sample, latencies = probed(server.http_port, lambda run=run: measure(server, run))
            found[(api, size)].append((sample, result[0], latencies))
    print(
        "| read | page_size | calls | wall time | server CPU per counter | answer bytes "
        "| longest call | /alive slowest (p99) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (api, size), runs in found.items():
        samples = [s for s, _, _ in runs]
        read = runs[0][1]
        latencies = [x for _, _, probe_latencies in runs for x in probe_latencies]
        print(
            f"| {api} {'whole' if not size else 'pages'} | {size or '-'} | {read.calls:,} "
            f"| {median([s.seconds for s in samples]):.2f} s "
            f"| {median([s.server_cpu / s.units * 1e6 for s in samples]):.1f} µs "
            f"| {read.answer_bytes / 1e6:.1f} MB "
            f"| {median([r.longest_call for _, r, _ in runs]) * 1e3:,.0f} ms "
            f"| {max(latencies) * 1e3:,.0f} ms ({percentile(latencies, 0.99) * 1e3:,.0f} ms) |"
        )


if __name__ == "__main__":
    sys.exit(main())

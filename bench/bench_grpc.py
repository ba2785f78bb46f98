"""gRPC benchmark: the real server in a subprocess against the in-process core and a no-op server.

Run from the repository root:

    .venv/bin/python bench/bench_grpc.py            # defaults, about 1 minute
    .venv/bin/python bench/bench_grpc.py --quick    # a smoke run

What it measures, in one run, in interleaved rounds (medians reported):

- StreamEvents (client streaming, ``--batch`` events per message) into ``kimball serve``,
  in events/s, against the in-process core rate for the same events: ``Ingestor.accept``
  in batches of ``--batch`` on a fresh engine, timed in this process while pinned to the
  server's CPU. Target: gRPC at least 65% of the in-process rate.
- TrackEvent (unary, ``--inflight`` calls in flight) into ``kimball serve`` against a no-op
  ``KimballService`` servicer on a grpc.aio server started the same way (a subprocess of
  this script). Target: at least 60% of the no-op server's call rate.

With ``--access-log``, instead: what the access log costs. Three ``kimball serve`` at
LOG_LEVEL=INFO, their output to a file each (as a container runtime takes it): the access
log off (``--no-access-log``), on in text, and on in JSON (``--log-format json``); unary
TrackEvent (one event, one line per call: the most a line can cost per event) and REST
``POST /v0/analytics`` of ``--batch`` events (``--connections`` at once) into each.

Each server is a subprocess pinned to one CPU (``--server-cpu``), the load generator to
another (``--client-cpu``). Requests are serialized before the clock starts; each round
streams into its own namespace so every round does the same Bloom work from empty
counters. Server CPU per event or call comes from /proc/<pid>/stat, so a client that cannot
keep up shows as server CPU below 100%. Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator

import grpc

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import Sample, cpu_per_unit, measure, median, row, table_head, verdict
from load import (
    FOREVER,
    in_flight,
    in_process,
    ours_accept,
    rpc,
    run_posts,
    run_stream,
    servicer_steps,
)
from run_options import add_server_options, add_size, new_parser, parse, pinned, start_run
from servers import AUTH, CHANNEL_OPTIONS, SERVICE, ServerProcess, kimball_argv
from workload import (
    GOAL_NAMES,
    in_namespace,
    json_bodies,
    make_plain_workload,
    track_events_requests,
)

from kimball_grpc.api.call_observer import CallObserver
from kimball_grpc.api.status_mapping import StatusInterceptor
from kimball_grpc.app import stop_signals
from kimball_grpc.core.engine import Engine
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.metrics import Metrics

TARGET_STREAM_RATIO = 0.65
TARGET_UNARY_RATIO = 0.60


# -- the no-op server ---------------------------------------------------------


class NoopService(pb_grpc.KimballServiceServicer):
    """The transport ceiling: accepts calls, does nothing."""

    async def TrackEvent(self, request, context):
        return pb.TrackEventResponse()

    async def StreamEvents(self, request_iterator, context):
        messages = 0
        async for _ in request_iterator:
            messages += 1
        return pb.StreamEventsResponse(messages=messages)


async def serve_noop(port: int, interceptor: bool) -> None:
    """A grpc.aio server built like Kimball's (same options), with the no-op servicer."""
    stop = stop_signals()
    # As in Kimball: metrics recorded (and no access log, as with LOG_LEVEL=WARNING).
    observer = CallObserver(Metrics(Engine()), False, frozenset())
    interceptors = [observer, StatusInterceptor({SERVICE.strip("/")})] if interceptor else []
    server = grpc.aio.server(interceptors=interceptors, options=CHANNEL_OPTIONS)
    pb_grpc.add_KimballServiceServicer_to_server(NoopService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await stop.wait()
    await server.stop(None)


def noop_argv(port: int, interceptor: bool) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--serve-noop", str(port)]
    return [*argv, "--interceptor"] if interceptor else argv


# -- unary load ---------------------------------------------------------------


def run_unary(port: int, requests: list[bytes], inflight: int, seconds: float) -> int:
    """Unary ``TrackEvent`` calls, ``inflight`` at a time, for ``seconds``; calls done."""

    async def go() -> int:
        async with rpc(port, "TrackEvent") as call:

            async def send(request: bytes) -> int:
                await call(request, metadata=AUTH)
                return 1

            source: Iterator[bytes] = itertools.cycle(requests)  # pool sized not to wrap
            return await in_flight(source, inflight, seconds, send)

    return asyncio.run(go())


# -- the access log's cost ---------------------------------------------------------


ACCESS_LOG_SERVERS = {  # name: kimball serve flags
    "access log off": ["--no-access-log"],
    "access log on, text": [],
    "access log on, json": ["--log-format", "json"],
}


def access_log_cost(
    args: argparse.Namespace, server_cpu: int | None, events: list, unary_rounds: list
) -> None:
    """Unary calls and REST POSTs into kimball serve with the access log off, text, json."""
    posts = [
        json_bodies(in_namespace(events, f"rest-{r}", GOAL_NAMES), args.batch)
        for r in range(args.rounds)
    ]
    results: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        servers = []
        for i, (name, flags) in enumerate(ACCESS_LOG_SERVERS.items()):
            server = ServerProcess(name, [], server_cpu, tmp, env={"LOG_LEVEL": "INFO"})
            server.argv = kimball_argv(server, os.path.join(tmp, f"data-{i}"), *flags)
            server.log = os.path.join(tmp, f"log-{i}")
            servers.append(server)
        try:
            for s in servers:
                s.start()
            for s in servers:
                s.wait_serving()
                run_unary(s.port, unary_rounds[0][:200], 8, 0.2)
            for r in range(args.rounds):
                for s in servers[r % 3 :] + servers[: r % 3]:  # each goes first once
                    unary = lambda s=s, r=r: run_unary(  # noqa: E731
                        s.port, unary_rounds[r], args.inflight, args.unary_seconds
                    )
                    results.setdefault(f"unary:{s.name}", []).append(measure(s, unary))
                    rest = lambda s=s, r=r: run_posts(  # noqa: E731
                        s.http_port, posts[r], args.connections, FOREVER
                    )
                    results.setdefault(f"rest:{s.name}", []).append(measure(s, rest))
        finally:
            for s in servers:
                s.stop()
        line_bytes = {
            s.name: os.path.getsize(s.log)
            / max(1, sum(x.units for x in results[f"unary:{s.name}"]))
            for s in servers
        }
    tables = (
        (
            "unary",
            f"unary TrackEvent ({args.inflight} in flight, {args.unary_seconds:g} s "
            "per run), calls/s",
            "calls",
            "call",
        ),
        (
            "rest",
            f"REST POST /v0/analytics, {args.batch} events per POST, {args.connections} "
            "connections, events/s",
            "ev",
            "event",
        ),
    )
    for kind, title, unit, per in tables:
        print(f"\n## the access log: {title}\n")
        table_head()
        off = None
        for name in ACCESS_LOG_SERVERS:
            rate = row(f"kimball serve, {name}", results[f"{kind}:{name}"], unit, per, off)
            off = off or rate
    print("\nserver CPU an access line adds (median over rounds of each round's difference):")
    for kind, per in (("unary", "call"), ("rest", f"POST of {args.batch} events")):
        off = results[f"{kind}:access log off"]
        for name in list(ACCESS_LOG_SERVERS)[1:]:
            added = median(
                [
                    (on.server_cpu / on.units - base.server_cpu / base.units)
                    * (1 if kind == "unary" else args.batch)
                    * 1e6
                    for on, base in zip(results[f"{kind}:{name}"], off, strict=True)
                ]
            )
            print(f"- {name}: {added:+.1f} µs per {per}")
    print()
    for name, size in line_bytes.items():
        print(f"{name}: {size:.0f} bytes of log per unary call")


# -- main -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(25_000, 5_000), rounds=(3, 2))
    add_server_options(parser, batch="events per stream message")
    add_size(parser, "--stream-events", 100_000, 20_000, "events per stream")
    parser.add_argument("--inflight", type=int, default=64, help="unary calls in flight")
    add_size(parser, "--unary-seconds", 3.0, 1.0, "seconds per unary run")
    parser.add_argument(
        "--access-log", action="store_true", help="measure the access log's cost (only that)"
    )
    parser.add_argument("--connections", type=int, default=16, help="REST connections")
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--interceptor", action="store_true", help=argparse.SUPPRESS)
    args = parse(parser, argv)
    if args.serve_noop is not None:
        asyncio.run(serve_noop(args.serve_noop, args.interceptor))
        return 0

    server_cpu = start_run(args, "bench_grpc")
    started = time.perf_counter()

    # Workload, serialized before any clock starts; one namespace per round.
    w = make_plain_workload(args.stream_events, args.users, args.names, args.seed)
    stream_rounds = [
        track_events_requests(in_namespace(w.events, f"stream-{r}"), args.batch)
        for r in range(args.rounds)
    ]
    unary_pool = max(50_000, int(args.unary_seconds * 12_000))
    unary_rounds = [
        [
            pb.TrackEventRequest(
                event=pb.Event(namespace=f"unary-{r}", event_name=e.event_name, user_id=e.user_id)
            ).SerializeToString()
            for e in (w.events * (1 + unary_pool // len(w.events)))[:unary_pool]
        ]
        for r in range(args.rounds)
    ]

    if args.access_log:
        access_log_cost(args, server_cpu, w.events, unary_rounds)
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return 0

    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        kimball = ServerProcess("kimball serve", [], server_cpu, tmp)
        kimball.argv = kimball_argv(kimball, os.path.join(tmp, "data"))
        noop = ServerProcess("no-op grpc.aio server", [], server_cpu, tmp)
        noop.argv = noop_argv(noop.port, interceptor=False)
        noop_ic = ServerProcess("no-op + StatusInterceptor", [], server_cpu, tmp)
        noop_ic.argv = noop_argv(noop_ic.port, interceptor=True)
        servers = [kimball, noop, noop_ic]
        try:
            for s in servers:
                s.start()
            for s in servers:
                s.wait_ready()
            # Warm-up: a connection and a few calls to each server.
            for s in servers:
                run_unary(s.port, unary_rounds[0][:200], 8, 0.2)
            run_stream(noop.port, stream_rounds[0][:10])

            n_events = len(w.events)
            results: dict[str, list[Sample]] = {}

            def add(name: str, sample: Sample) -> None:
                results.setdefault(name, []).append(sample)

            for r in range(args.rounds):
                # Streaming: in-process core (on the server's CPU), Kimball, no-op.
                with pinned(server_cpu):
                    add("core", measure(None, ours_accept(Engine, w.events)()))
                    add("decode", measure(None, in_process(stream_rounds[r], servicer_steps)))
                add(
                    "stream",
                    measure(kimball, lambda r=r: run_stream(kimball.port, stream_rounds[r])),
                )
                # The no-op server is fast: send the messages 10 times for a measurable run.
                add(
                    "stream-noop",
                    measure(noop, lambda r=r: run_stream(noop.port, stream_rounds[r] * 10)),
                )
                # Unary: alternate which server goes first.
                order = [kimball, noop, noop_ic] if r % 2 == 0 else [noop_ic, noop, kimball]
                for s in order:
                    add(
                        f"unary:{s.name}",
                        measure(
                            s,
                            lambda s=s, r=r: run_unary(
                                s.port, unary_rounds[r], args.inflight, args.unary_seconds
                            ),
                        ),
                    )
        finally:
            for s in servers:
                s.stop()

    print(
        f"\nworkload: {n_events:,} events ({w.distinct_users:,} users, {args.names} names, "
        f"new user {w.new_user_share:.0%}, new (user, name) {w.new_pair_share:.0%}), "
        f"{args.batch} events per message; unary: {args.inflight} in flight, "
        f"{args.unary_seconds:g} s per run; {args.rounds} interleaved rounds\n"
    )
    print("## client streaming (StreamEvents), events/s\n")
    table_head()
    core = row(
        f"in-process core: Ingestor.accept x{args.batch}", results["core"], "ev", "event", None
    )
    row("in-process: decode + event_from_proto + accept", results["decode"], "ev", "event", core)
    stream = row("gRPC StreamEvents -> kimball serve", results["stream"], "ev", "event", core)
    row("gRPC StreamEvents -> no-op server (ceiling)", results["stream-noop"], "ev", "event", None)
    print("\n## unary (TrackEvent), calls/s\n")
    table_head()
    ceiling = row(
        "no-op grpc.aio servicer", results["unary:no-op grpc.aio server"], "calls", "call", None
    )
    row(
        "no-op servicer + Kimball's StatusInterceptor",
        results["unary:no-op + StatusInterceptor"],
        "calls",
        "call",
        ceiling,
    )
    unary = row("kimball serve", results["unary:kimball serve"], "calls", "call", ceiling)
    print()
    for label, ratio, target, samples in (
        ("stream vs in-process core", stream / core, TARGET_STREAM_RATIO, results["stream"]),
        ("unary vs no-op servicer", unary / ceiling, TARGET_UNARY_RATIO, None),
    ):
        cpu = cpu_per_unit(samples) if samples else None
        verdict(label, f"{ratio:.0%}", ratio >= target, f">= {target:.0%}", cpu)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

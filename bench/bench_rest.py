"""REST benchmark: 100-event POSTs through the gateway against the in-process core and a no-op.

Run from the repository root:

    .venv/bin/python bench/bench_rest.py            # defaults, about 1-1.5 minutes
    .venv/bin/python bench/bench_rest.py --quick    # a smoke run

What it measures, in one run, in interleaved rounds (medians reported):

- ``POST /v0/analytics`` with ``{"events": [...]}`` bodies of ``--batch`` events (namespace,
  user_id, event_name; ``ensure_goal`` on the events of two goal names), serialized before
  the clock starts, ``--connections`` concurrent keep-alive connections of one aiohttp
  ``ClientSession``, into ``kimball serve`` with authentication on, as deployed (bearer
  token). Every answer must be 204.
- The in-process core rate for the same events: ``Ingestor.accept`` in batches of
  ``--batch`` on a fresh engine, timed in this process while pinned to the server's CPU.
  Target: REST at least 65% of it. Since ``kimball serve`` keeps a write-ahead log, the
  same with the log (fsync always, ``--connections`` batches in flight) is measured too,
  and REST is also compared with that (the gateway's own cost).
- The same POSTs into a no-op aiohttp server (a subprocess of this script) whose handler
  reads the body, ``json.loads`` it and answers 204: same framework, same client. The ratio
  is printed for information.
- For the reading (all printed for information): the gateway's and servicer's steps
  in-process (json.loads, ``message_from_json``, serialize, decode, ``event_from_proto``,
  accept), and the same with ``json_format.ParseDict`` for every body (the build before the
  direct one); ``kimball serve`` with its gateway calling over loopback gRPC instead of the
  in-process channel (a patch this script applies inside its own server subprocess, the way
  ``kimball gateway`` reaches a server); ``kimball serve`` without the REST connection edges
  (the per-connection wrapper and its timers, the body clock: patched out the same way),
  to show what they cost; ``TrackEvents`` over gRPC straight into
  ``kimball serve`` (no gateway); a table of each step alone; and the server CPU per event
  taken apart from the differences between those rows.

Each server is a subprocess pinned to one CPU (``--server-cpu``), the load generator to
another (``--client-cpu``). Each round posts into its own namespace so every round does the
same Bloom work from empty counters. Server CPU per event comes from /proc/<pid>/stat (all
threads). Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import aiohttp
from aiohttp import web

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import Sample, cpu_per_unit, measure, median, row, table_head, verdict
from google.protobuf import json_format
from load import (
    FOREVER,
    PATH,
    in_flight,
    in_process,
    ours_accept,
    run_posts,
    run_track_events,
    servicer_steps,
)
from run_options import add_server_options, add_size, new_parser, parse, pinned, start_run
from servers import ServerProcess, kimball_argv
from workload import (
    GOAL_NAMES,
    Body,
    batches,
    in_namespace,
    json_bodies,
    make_plain_workload,
    track_events_requests,
)

from gateway.request_json import message_from_json
from gateway.request_shapes import track_events_body
from gateway.server import network_channel
from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.app import stop_signals
from kimball_grpc.codec import proto_mapping
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, EventFields
from kimball_grpc.core.limits import DEFAULT_MAX_RESPONSE_BYTES, MAX_MESSAGE_BYTES
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.streaming.subscriptions import SubscriptionHub
from storage.wal import WriteAheadLog

TARGET_RATIO = 0.65

EV = ("ev", "event")  # rate unit, server CPU per
ROWS = [  # (results key, label) after the core row
    ("core-log", "in-process core with the write-ahead log (fsync always), same concurrency"),
    ("steps", "in-process: gateway + servicer steps + accept"),
    ("parse-dict-steps", "in-process: same, json_format.ParseDict for every body"),
    ("rest", "REST POST -> kimball serve"),
    ("rest-loopback", "REST POST -> kimball serve, gateway over loopback gRPC"),
    ("rest-unguarded", "REST POST -> kimball serve without the connection edges"),
    ("grpc", "gRPC TrackEvents x100 -> kimball serve (no gateway)"),
    ("noop", "REST POST -> no-op aiohttp handler (json.loads, 204)"),
]


# -- kimball serve with its gateway over loopback gRPC ---------------------------------


def serve_kimball_loopback(argv: list[str]) -> int:
    """``kimball serve`` with the gateway calling the gRPC port, as ``kimball gateway`` would."""
    from kimball_grpc import app as kimball_server
    from kimball_grpc.cli import main as cli

    target = f"127.0.0.1:{argv[argv.index('--grpc-port') + 1]}"
    start_gateway = kimball_server.start_gateway

    async def start_with_loopback(host, port, channel, *rest, **options):  # this process only
        return await start_gateway(
            host, port, network_channel(target, DEFAULT_MAX_RESPONSE_BYTES), *rest, **options
        )

    kimball_server.start_gateway = start_with_loopback
    return cli.main(argv)


def serve_kimball_unguarded(argv: list[str]) -> int:
    """``kimball serve`` without the REST connection edges (``gateway.connections``: the
    per-connection wrapper, its header timer and middleware; the body clock of each read),
    to measure what they cost."""
    from gateway import connections, translate
    from kimball_grpc.cli import main as cli

    async def handle(self, request: web.Request, handler):  # this process only
        return await handler(request)

    async def read(self, reading):
        return await reading

    connections.ConnectionGuard.protocol = lambda self, server: server
    connections.ConnectionGuard.middleware = web.middleware(handle)
    translate.BodyClock.read = read
    return cli.main(argv)


PATCHES = {"loopback": "--serve-kimball-loopback", "unguarded": "--serve-kimball-unguarded"}


def kimball_rest_argv(server: ServerProcess, data_dir: str, patch: str | None) -> list[str]:
    """``kimball serve`` as the other scripts start it, or with a patch above."""
    argv = kimball_argv(server, data_dir)
    if patch is not None:
        rest = argv[argv.index("serve") :]
        argv = [sys.executable, os.path.abspath(__file__), PATCHES[patch], *rest]
    return argv


# -- the no-op server -------------------------------------------------------------


async def serve_noop(port: int) -> None:
    """An aiohttp app as the gateway builds it (body limit, no access log) until SIGTERM;
    its handler parses the body and answers 204."""
    stop = stop_signals()

    async def track(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(status=204)

    async def alive(request: web.Request) -> web.Response:
        return web.Response(text="ok!")

    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app.router.add_post(PATH, track)
    app.router.add_get("/alive", alive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await stop.wait()
    await runner.cleanup()


# -- in-process paths --------------------------------------------------------------------


def gateway_steps(body: bytes) -> list[EventFields]:
    """What a POST costs Kimball minus the transports: the gateway's and the servicer's steps."""
    message = message_from_json(track_events_body(json.loads(body)), pb.TrackEventsRequest)
    return servicer_steps(message.SerializeToString())


def parse_dict_steps(body: bytes) -> list[EventFields]:
    """The same with ``json_format.ParseDict`` for every body (no direct build)."""
    data = track_events_body(json.loads(body))
    message = json_format.ParseDict(data, pb.TrackEventsRequest())
    return servicer_steps(message.SerializeToString())


def in_process_logged(events: list[Event], batch: int, concurrency: int) -> Callable[[], int]:
    """The core as ``kimball serve`` runs it: ``Ingestor.accept`` with a write-ahead log
    (fsync always, in a temporary directory), ``concurrency`` batches in flight, so group
    commit shares fsyncs as it does for that many connections."""
    chunks = batches(events, batch)

    async def go() -> int:
        with tempfile.TemporaryDirectory(prefix="kimball-bench-wal-") as tmp:
            wal = WriteAheadLog(Path(tmp))
            wal.open()
            ingestor = Ingestor(Engine(), SubscriptionHub(), log=wal)
            done = await in_flight(iter(chunks), concurrency, FOREVER, ingestor.accept)
            await wal.close()
        return done

    return lambda: asyncio.run(go())


def step_costs(bodies: list[Body], repeats: int) -> list[tuple[str, float]]:
    """Each step alone over ``bodies``, µs per event (fastest of ``repeats`` passes)."""
    raw = [b for b, _ in bodies]
    n = sum(k for _, k in bodies)
    dicts = [track_events_body(json.loads(b)) for b in raw]
    messages = [json_format.ParseDict(d, pb.TrackEventsRequest()) for d in dicts]
    wires = [m.SerializeToString() for m in messages]
    decoded = [pb.TrackEventsRequest.FromString(w) for w in wires]
    steps: list[tuple[str, Callable[[], object]]] = [
        ("`json.loads` of the body", lambda: [json.loads(b) for b in raw]),
        (
            "`message_from_json` into `TrackEventsRequest` (gateway)",
            lambda: [message_from_json(d, pb.TrackEventsRequest) for d in dicts],
        ),
        (
            "`json_format.ParseDict` into `TrackEventsRequest` (for comparison)",
            lambda: [json_format.ParseDict(d, pb.TrackEventsRequest()) for d in dicts],
        ),
        (
            "`SerializeToString` (gateway, gRPC client)",
            lambda: [m.SerializeToString() for m in messages],
        ),
        (
            "`TrackEventsRequest.FromString` (gRPC server)",
            lambda: [pb.TrackEventsRequest.FromString(w) for w in wires],
        ),
        (
            "`request_event_fields` (servicer)",
            lambda: [proto_mapping.request_event_fields(r) for r in decoded],
        ),
    ]
    out = []
    for name, run in steps:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        out.append((name, min(seconds) / n * 1e6))
    return out


# -- report --------------------------------------------------------------------------------


def server_us(samples: list[Sample]) -> float:
    return median([s.server_cpu / s.units * 1e6 for s in samples])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-kimball-loopback"]:
        return serve_kimball_loopback(argv[1:])
    if argv[:1] == ["--serve-kimball-unguarded"]:
        return serve_kimball_unguarded(argv[1:])

    parser = new_parser(__doc__, users=(25_000, 2_500), rounds=(3, 2))
    add_server_options(parser, batch="events per POST")
    add_size(parser, "--events", 100_000, 10_000, "events per round")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    add_size(parser, "--max-seconds", 10.0, 3.0, "cap per measurement")
    parser.add_argument("--noop-repeat", type=int, default=3, help="bodies sent N times to no-op")
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parse(parser, argv)
    if args.serve_noop is not None:
        asyncio.run(serve_noop(args.serve_noop))
        return 0

    note = f", aiohttp {aiohttp.__version__}"
    server_cpu = start_run(args, "bench_rest", "gateway", note=note)
    started = time.perf_counter()

    # Workload, serialized before any clock starts; one namespace per round and path.
    w = make_plain_workload(args.events, args.users, args.names, args.seed)
    rounds = []
    for r in range(args.rounds):
        events = in_namespace(w.events, f"rest-{r}", GOAL_NAMES)
        grpc_events = in_namespace(w.events, f"grpc-{r}", GOAL_NAMES)
        rounds.append(
            {
                "events": events,
                "bodies": json_bodies(events, args.batch),
                "grpc": track_events_requests(grpc_events, args.batch),
            }
        )
    warm_events = in_namespace(w.events[: 20 * args.batch], "warm-up", GOAL_NAMES)
    warm = json_bodies(warm_events, args.batch)
    warm_grpc = track_events_requests(warm_events, args.batch)
    n_events = len(w.events)
    goal_share = sum(e.ensure_goal for e in rounds[0]["events"]) / n_events
    body_bytes = median([len(b) for b, _ in rounds[0]["bodies"]])

    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        kimball = ServerProcess("kimball serve", [], server_cpu, tmp)
        kimball.argv = kimball_rest_argv(kimball, os.path.join(tmp, "data"), None)
        loopback = ServerProcess("kimball serve (loopback)", [], server_cpu, tmp)
        loopback.argv = kimball_rest_argv(loopback, os.path.join(tmp, "data-lo"), "loopback")
        unguarded = ServerProcess("kimball serve (no edges)", [], server_cpu, tmp)
        unguarded.argv = kimball_rest_argv(unguarded, os.path.join(tmp, "data-ng"), "unguarded")
        noop = ServerProcess("no-op aiohttp server", [], server_cpu, tmp)
        noop.argv = [sys.executable, os.path.abspath(__file__), "--serve-noop", str(noop.http_port)]
        servers = [kimball, loopback, unguarded, noop]
        results: dict[str, list[Sample]] = {}

        def add(name: str, sample: Sample) -> None:
            results.setdefault(name, []).append(sample)

        try:
            for s in servers:
                s.start()
            for s, ready in (
                (kimball, "/ready"),
                (loopback, "/ready"),
                (unguarded, "/ready"),
                (noop, "/alive"),
            ):
                s.wait_http(ready)
            for s in servers:  # warm-up: connections, first calls, imports
                run_posts(s.http_port, warm, args.connections, 5.0)
            run_track_events(kimball.port, warm_grpc, args.connections, 5.0)

            for r, data in enumerate(rounds):
                bodies, messages = data["bodies"], data["grpc"]
                with pinned(server_cpu):  # in-process, on the server's CPU
                    add("core", measure(None, ours_accept(Engine, data["events"])()))
                    logged = in_process_logged(data["events"], args.batch, args.connections)
                    add("core-log", measure(None, logged))
                    add("steps", measure(None, in_process(bodies, gateway_steps)))
                    add("parse-dict-steps", measure(None, in_process(bodies, parse_dict_steps)))
                conns, cap = args.connections, args.max_seconds
                noop_bodies = bodies * args.noop_repeat
                wire: list[tuple[str, ServerProcess, Callable[[], int]]] = [
                    ("rest", kimball, partial(run_posts, kimball.http_port, bodies, conns, cap)),
                    (
                        "rest-loopback",
                        loopback,
                        partial(run_posts, loopback.http_port, bodies, conns, cap),
                    ),
                    (
                        "rest-unguarded",
                        unguarded,
                        partial(run_posts, unguarded.http_port, bodies, conns, cap),
                    ),
                    ("noop", noop, partial(run_posts, noop.http_port, noop_bodies, conns, cap)),
                    (
                        "grpc",
                        kimball,
                        partial(run_track_events, kimball.port, messages, conns, cap),
                    ),
                ]
                k = r % len(wire)  # rotate which server goes first
                for name, server, run in wire[k:] + wire[:k]:
                    add(name, measure(server, run))
            with pinned(server_cpu):
                costs = step_costs(rounds[0]["bodies"][: max(1, 10_000 // args.batch)], 5)
        finally:
            for s in servers:
                s.stop()

    print(
        f"\nworkload: {n_events:,} events per round ({w.distinct_users:,} users, {args.names} "
        f"names, new user {w.new_user_share:.0%}, new (user, name) {w.new_pair_share:.0%}, "
        f"ensure_goal on {goal_share:.1%}), {args.batch} events per POST (~{body_bytes:,.0f} "
        f"bytes), {args.connections} connections; {args.rounds} interleaved rounds\n"
    )
    table_head()
    core = row(f"in-process core: Ingestor.accept x{args.batch}", results["core"], *EV, None)
    rates = {"core": core}
    for key, label in ROWS:
        reference = None if key == "noop" else core
        rates[key] = row(label, results[key], *EV, reference)

    print()
    ratio = rates["rest"] / core
    verdict(
        "REST gateway vs in-process core",
        f"{ratio:.0%}",
        ratio >= TARGET_RATIO,
        f">= {TARGET_RATIO:.0%}",
        cpu_per_unit(results["rest"]),
    )
    print(
        f"info  REST gateway vs in-process core with the same write-ahead log: "
        f"{rates['rest'] / rates['core-log']:.0%} (the gateway's own cost)"
    )
    for label, value in (
        ("REST gateway vs no-op aiohttp server", rates["rest"] / rates["noop"]),
        ("REST, gateway over loopback gRPC, vs in-process core", rates["rest-loopback"] / core),
        ("REST vs REST without the connection edges", rates["rest"] / rates["rest-unguarded"]),
        ("gRPC TrackEvents (no gateway) vs in-process core", rates["grpc"] / core),
    ):
        print(f"info  {label}: {value:.0%}")

    print("\n## steps alone (warm loops over 10,000 events), on the server's CPU, µs per event\n")
    print("| step | µs/event |\n|---|---:|")
    for name, us in costs:
        print(f"| {name} | {us:.2f} |")
    print(f"| `Ingestor.accept` (the core) | {1e6 / core:.2f} |")

    core_us = 1e6 / core
    us = {
        key: server_us(results[key]) for key in ("rest", "rest-loopback", "rest-unguarded", "grpc")
    }
    noop_us = server_us(results["noop"])
    rest_us = us["rest"]
    parts = [
        ("REST POST -> kimball serve, whole server", rest_us),
        (
            "saved by the in-process channel (loopback row - REST row)",
            us["rest-loopback"] - rest_us,
        ),
        (
            "the connection edges: wrapper, timers, body clock (REST row - no-edges row)",
            rest_us - us["rest-unguarded"],
        ),
        (
            "gRPC server side of a call: call, decode, `event_from_proto` (gRPC row - core)",
            us["grpc"] - core_us,
        ),
        ("in REST: the core (in-process `Ingestor.accept`)", core_us),
        ("in REST: aiohttp + `json.loads` (no-op server)", noop_us),
        (
            "in REST: the rest (token, build, serialize, decode, interceptors, metrics; noise)",
            rest_us - core_us - noop_us,
        ),
    ]
    print("\n## server CPU per event, where it goes (medians; differences of the rows above)\n")
    print("| part | µs/event |\n|---|---:|")
    for name, value in parts:
        print(f"| {name} | {value:.2f} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

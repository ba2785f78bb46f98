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
  Target: REST at least 65% of it.
- The same POSTs into a no-op aiohttp server (a subprocess of this script) whose handler
  reads the body, ``json.loads`` it and answers 204: same framework, same client. The ratio
  is printed for information.
- For the reading (all printed for information):
  the gateway's and servicer's steps in-process (json.loads, the booleans check,
  ``json_format.ParseDict``, serialize, decode, ``event_from_proto``, accept); the same with
  ``pb.Event(**event)`` instead of ``ParseDict``; and with core events built straight from
  the parsed dicts (no protobuf);
  ``kimball serve`` with ``ParseDict`` swapped for the ``pb.Event(**event)`` build (a patch
  this script applies inside its own server subprocess; the gateway code is not changed);
  a sketch server with no loopback gRPC hop (aiohttp, the same token check, events from the
  dicts, ``Ingestor.accept`` in the same process); ``TrackEvents`` over gRPC straight into
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
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web

# bench_core and bench_grpc sit next to this script (the script's folder is on sys.path).
from bench_core import BATCH, code_note, machine_note, make_plain_workload, median, ours_accept
from bench_grpc import (
    AUTH,
    BENCH_TOKEN,
    CHANNEL_OPTIONS,
    SERVICE,
    Sample,
    ServerProcess,
    _counted,
    add_run_options,
    free_port,
    kimball_argv,
    measure,
    pinned,
    row,
    start_run,
    table_head,
)
from google.protobuf import json_format

import gateway.app as gateway_app
from gateway.shapes import track_events_body
from kimball_grpc import proto_mapping
from kimball_grpc.auth import UNAUTHORIZED_MESSAGE, TokenChecker
from kimball_grpc.engine import Engine
from kimball_grpc.errors import InvalidArgument
from kimball_grpc.events import Event
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.ingest import Ingestor
from kimball_grpc.limits import MAX_MESSAGE_BYTES
from kimball_grpc.metrics import Metrics
from kimball_grpc.subscriptions import SubscriptionHub

TARGET_RATIO = 0.65
PATH = "/v0/analytics"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_TOKEN}"}
GOAL_NAMES = ("event_018", "event_019")  # the two rarest names carry ensure_goal: true
ROOT = Path(__file__).resolve().parent.parent

Body = tuple[bytes, int]  # serialized JSON body, events in it
EV = ("ev", "event")  # rate unit, server CPU per
ROWS = [  # (results key, label) after the core row
    ("steps", "in-process: gateway + servicer steps + accept"),
    ("fast-steps", "in-process: same, pb.Event(**event) for ParseDict"),
    ("direct", "in-process: json.loads -> Event -> accept (no protobuf)"),
    ("rest", "REST POST -> kimball serve"),
    ("rest-fast", "REST POST -> kimball serve, faster build patched in"),
    ("rest-direct", "REST POST -> sketch: aiohttp + Ingestor.accept, no gRPC hop"),
    ("grpc", "gRPC TrackEvents x100 -> kimball serve (no gateway)"),
    ("noop", "REST POST -> no-op aiohttp handler (json.loads, 204)"),
]


# -- faster request builds (measured here; the gateway does not use them) ---------------

# The plain fields of pb.Event and the JSON types ParseDict takes for them without conversion.
_FAST_TYPES: dict[str, tuple[type, ...]] = {
    "namespace": (str,),
    "event_name": (str,),
    "user_id": (str,),
    "ensure_goal": (bool,),
    "value": (int, float),
}


def plain_events(data: object) -> list[dict] | None:
    """The event dicts of ``{"events": [...]}`` if each holds only plain fields of plain types.

    Anything else (camelCase names, ``datetime`` strings, quoted numbers, nulls, unknown keys,
    non-finite values) gives None: the caller falls back to ``ParseDict``, which then accepts
    or refuses exactly as today.
    """
    if data.__class__ is not dict or len(data) != 1:
        return None
    events = data.get("events")
    if events.__class__ is not list:
        return None
    types = _FAST_TYPES
    for event in events:
        if event.__class__ is not dict:
            return None
        for key, value in event.items():
            allowed = types.get(key)
            if allowed is None or value.__class__ not in allowed:
                return None
        value = event.get("value")
        if value is not None and not (math.isfinite(value) and abs(value) < 2**53):
            return None
    return events


def fast_track_events(data: object) -> pb.TrackEventsRequest | None:
    """``TrackEventsRequest`` built with ``pb.Event(**event)``; None means use ``ParseDict``."""
    events = plain_events(data)
    if events is None:
        return None
    try:
        return pb.TrackEventsRequest(events=[pb.Event(**e) for e in events])
    except (TypeError, ValueError):
        return None


def events_from_json(data: object) -> list[Event]:
    """Core events straight from the parsed body, no protobuf (``ParseDict`` as the fallback)."""
    events = plain_events(data)
    if events is None:
        message = json_format.ParseDict(data, pb.TrackEventsRequest())
        return [proto_mapping.event_from_proto(e) for e in message.events]
    out = []
    for e in events:
        value = e.get("value")
        out.append(
            Event(
                e.get("event_name", ""),
                e.get("user_id", ""),
                e.get("namespace", ""),
                None if value is None else float(value),
                None,
                e.get("ensure_goal", False),
            )
        )
    return out


class FastJsonFormat:
    """Stands in for ``json_format`` in gateway.app inside the patched server only."""

    ParseError = json_format.ParseError

    @staticmethod
    def ParseDict(data, message, *args, **kwargs):
        if message.__class__ is pb.TrackEventsRequest and not args and not kwargs:
            fast = fast_track_events(data)
            if fast is not None:
                return fast
        return json_format.ParseDict(data, message, *args, **kwargs)


def serve_kimball_fast(argv: list[str]) -> int:
    """``kimball serve`` with the faster request build swapped into the gateway module."""
    from kimball_grpc import cli

    gateway_app.json_format = FastJsonFormat  # this process only; no file changes
    return cli.main(argv)


# -- the no-op server -------------------------------------------------------------


async def serve_noop(port: int) -> None:
    """An aiohttp server built like the gateway's; its handler parses the body, answers 204."""

    async def track(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(status=204)

    await run_app([(PATH, track)], port)


async def run_app(posts: list[tuple[str, Callable]], port: int) -> None:
    """An aiohttp app as the gateway builds it (body limit, no access log) until SIGTERM."""

    async def alive(request: web.Request) -> web.Response:
        return web.Response(text="ok!")

    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    for path, handler in posts:
        app.router.add_post(path, handler)
    app.router.add_get("/alive", alive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def serve_direct(port: int) -> None:
    """A sketch of the ingest route with no loopback gRPC hop: aiohttp straight into the core.

    Same token check, body checks and ``Ingestor`` (with metrics) as ``kimball serve``; events
    built by ``events_from_json``. Only ``POST /v0/analytics``; not the gateway.
    """
    engine = Engine()
    ingestor = Ingestor(engine, SubscriptionHub(), observe_events=Metrics(engine).observe_events)
    checker = TokenChecker([BENCH_TOKEN])

    async def track(request: web.Request) -> web.Response:
        if not checker.allows(request.headers.get("Authorization")):
            return web.json_response({"error": UNAUTHORIZED_MESSAGE}, status=401)
        if request.content_type != "application/json":
            return web.json_response({"error": {"what": "The content-type is invalid"}}, status=415)
        try:
            events = events_from_json(track_events_body(json.loads(await request.read())))
            await ingestor.accept(events)
        except (ValueError, json_format.ParseError, InvalidArgument) as exc:
            return web.json_response({"error": {"what": str(exc)}}, status=400)
        return web.Response(status=204)

    await run_app([(PATH, track)], port)


# -- server processes ---------------------------------------------------------------


@dataclass
class HttpServer(ServerProcess):
    """A server process with a REST port (``port`` stays the gRPC one, if any)."""

    http_port: int = field(default_factory=free_port)
    ready_path: str = "/alive"

    def wait_http(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}{self.ready_path}"
        while True:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout} s")
            time.sleep(0.1)


def kimball_rest_argv(server: HttpServer, data_dir: str, fast: bool) -> list[str]:
    """``kimball serve`` as bench_grpc starts it (token config), with our REST port."""
    argv = kimball_argv(server.port, data_dir)
    argv[argv.index("--api-port") + 1] = str(server.http_port)
    if fast:
        rest = argv[argv.index("serve") :]
        argv = [sys.executable, os.path.abspath(__file__), "--serve-kimball-fast", *rest]
    return argv


# -- load -----------------------------------------------------------------------------


def run_posts(port: int, bodies: list[Body], connections: int, seconds: float) -> int:
    """POST each body once (or until ``seconds``), ``connections`` at a time; events done."""

    async def go() -> int:
        url = f"http://127.0.0.1:{port}{PATH}"
        source: Iterator[Body] = iter(bodies)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal done
            for body, n in source:  # shared: each body is posted once
                async with session.post(url, data=body, headers=HEADERS) as answer:
                    if answer.status != 204:
                        text = await answer.text()
                        raise RuntimeError(f"POST {url}: {answer.status} {text[:200]}")
                    await answer.read()
                done += n
                if time.perf_counter() > deadline:
                    return

        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(worker(session) for _ in range(connections)))
        return done

    return asyncio.run(go())


def run_track_events(port: int, messages: list[Body], inflight: int, seconds: float) -> int:
    """Unary ``TrackEvents`` with pre-serialized requests, ``inflight`` at a time; events done."""

    async def go() -> int:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=CHANNEL_OPTIONS
        ) as channel:
            call = channel.unary_unary(
                f"{SERVICE}/TrackEvents",
                request_serializer=None,  # already bytes
                response_deserializer=pb.TrackEventsResponse.FromString,
            )
            source: Iterator[Body] = iter(messages)
            done = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                for data, n in source:
                    answer = await call(data, metadata=AUTH)
                    if answer.accepted != n:
                        raise RuntimeError(f"TrackEvents accepted {answer.accepted} of {n}")
                    done += n
                    if time.perf_counter() > deadline:
                        return

            await asyncio.gather(*(worker() for _ in range(inflight)))
            return done

    return asyncio.run(go())


# -- in-process paths --------------------------------------------------------------------


# The gateway's check for booleans sent as numbers, run before ParseDict (if it has one).
_GUARD = getattr(gateway_app, "_refuse_booleans_as_numbers", None)


def guard(data: dict) -> None:
    if _GUARD is not None:
        _GUARD(data, pb.TrackEventsRequest.DESCRIPTOR)


def gateway_steps(body: bytes) -> list[Event]:
    """What a POST costs Kimball minus the transports: the gateway's and the servicer's steps."""
    data = track_events_body(json.loads(body))
    guard(data)
    message = json_format.ParseDict(data, pb.TrackEventsRequest())
    request = pb.TrackEventsRequest.FromString(message.SerializeToString())
    return [proto_mapping.event_from_proto(e) for e in request.events]


def fast_steps(body: bytes) -> list[Event]:
    """The same with ``pb.Event(**event)`` instead of ``ParseDict`` (its fallback unused here)."""
    data = track_events_body(json.loads(body))
    guard(data)
    message = fast_track_events(data) or json_format.ParseDict(data, pb.TrackEventsRequest())
    request = pb.TrackEventsRequest.FromString(message.SerializeToString())
    return [proto_mapping.event_from_proto(e) for e in request.events]


def direct_steps(body: bytes) -> list[Event]:
    """No protobuf and no hop: the parsed body straight into core events."""
    return events_from_json(track_events_body(json.loads(body)))


def in_process(bodies: list[Body], steps: Callable[[bytes], list[Event]]) -> Callable[[], int]:
    """A timed pass: every body through ``steps`` then ``Ingestor.accept``, on a fresh engine."""
    ingestor = Ingestor(Engine(), SubscriptionHub())

    async def go() -> int:
        accept = ingestor.accept
        n = 0
        for body, _ in bodies:
            n += await accept(steps(body))
        return n

    return lambda: asyncio.run(go())


def step_costs(bodies: list[Body], repeats: int) -> list[tuple[str, float]]:
    """Each step alone over ``bodies``, µs per event (fastest of ``repeats`` passes)."""
    raw = [b for b, _ in bodies]
    n = sum(k for _, k in bodies)
    dicts = [track_events_body(json.loads(b)) for b in raw]
    messages = [json_format.ParseDict(d, pb.TrackEventsRequest()) for d in dicts]
    wires = [m.SerializeToString() for m in messages]
    decoded = [pb.TrackEventsRequest.FromString(w) for w in wires]
    from_proto = proto_mapping.event_from_proto
    steps: list[tuple[str, Callable[[], object]]] = [
        ("`json.loads` of the body", lambda: [json.loads(b) for b in raw]),
        ("gateway's booleans-as-numbers check", lambda: [guard(d) for d in dicts]),
        (
            "`json_format.ParseDict` into `TrackEventsRequest`",
            lambda: [json_format.ParseDict(d, pb.TrackEventsRequest()) for d in dicts],
        ),
        (
            "faster build: type check + `pb.Event(**event)`",
            lambda: [fast_track_events(d) for d in dicts],
        ),
        (
            "no protobuf: type check + core `Event` (`events_from_json`)",
            lambda: [events_from_json(d) for d in dicts],
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
            "`event_from_proto` (servicer)",
            lambda: [[from_proto(e) for e in r.events] for r in decoded],
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


# -- workload ---------------------------------------------------------------------------


def round_events(events: list[Event], namespace: str) -> list[Event]:
    return [e._replace(namespace=namespace, ensure_goal=e.event_name in GOAL_NAMES) for e in events]


def json_bodies(events: list[Event], batch: int) -> list[Body]:
    def as_json(e: Event) -> dict[str, object]:
        item: dict[str, object] = {
            "namespace": e.namespace,
            "user_id": e.user_id,
            "event_name": e.event_name,
        }
        if e.ensure_goal:
            item["ensure_goal"] = True
        return item

    out = []
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        body = json.dumps({"events": [as_json(e) for e in chunk]}, separators=(",", ":"))
        out.append((body.encode(), len(chunk)))
    return out


def grpc_messages(events: list[Event], batch: int) -> list[Body]:
    out = []
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        message = pb.TrackEventsRequest(events=[proto_mapping.event_to_proto(e) for e in chunk])
        out.append((message.SerializeToString(), len(chunk)))
    return out


def gateway_note() -> str:
    """Uncommitted changes under gateway/ (code_note covers kimball_grpc/ only)."""
    try:
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    changed = ", ".join(line[3:] for line in dirty.splitlines() if line.strip())
    return f"; uncommitted changes in {changed}" if changed else ""


# -- report --------------------------------------------------------------------------------


def server_us(samples: list[Sample]) -> float:
    return median([s.server_cpu / s.units * 1e6 for s in samples])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-kimball-fast"]:
        return serve_kimball_fast(argv[1:])

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser)
    parser.add_argument("--events", type=int, default=100_000, help="events per round")
    parser.add_argument("--batch", type=int, default=BATCH, help="events per POST")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="cap per measurement")
    parser.add_argument("--noop-repeat", type=int, default=3, help="bodies sent N times to no-op")
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-direct", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop is not None:
        asyncio.run(serve_noop(args.serve_noop))
        return 0
    if args.serve_direct is not None:
        asyncio.run(serve_direct(args.serve_direct))
        return 0
    if args.quick:
        args.events, args.users, args.rounds, args.max_seconds = 10_000, 2_500, 2, 3.0

    title = f"bench_rest  ({machine_note()}, aiohttp {aiohttp.__version__})"
    server_cpu = start_run(title, f"{code_note()}{gateway_note()}", args)
    started = time.perf_counter()

    # Workload, serialized before any clock starts; one namespace per round and path.
    w = make_plain_workload(args.events, args.users, args.names, args.seed)
    rounds = []
    for r in range(args.rounds):
        events = round_events(w.events, f"rest-{r}")
        rounds.append(
            {
                "events": events,
                "bodies": json_bodies(events, args.batch),
                "grpc": grpc_messages(round_events(w.events, f"grpc-{r}"), args.batch),
            }
        )
    warm = json_bodies(round_events(w.events[: 20 * args.batch], "warm-up"), args.batch)
    warm_grpc = grpc_messages(round_events(w.events[: 20 * args.batch], "warm-up"), args.batch)
    n_events = len(w.events)
    goal_share = sum(e.ensure_goal for e in rounds[0]["events"]) / n_events
    body_bytes = median([len(b) for b, _ in rounds[0]["bodies"]])

    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        kimball = HttpServer("kimball serve", [], server_cpu, tmp, ready_path="/ready")
        kimball.argv = kimball_rest_argv(kimball, os.path.join(tmp, "data"), fast=False)
        fast = HttpServer("kimball serve (faster build)", [], server_cpu, tmp, ready_path="/ready")
        fast.argv = kimball_rest_argv(fast, os.path.join(tmp, "data-fast"), fast=True)
        noop = HttpServer("no-op aiohttp server", [], server_cpu, tmp)
        noop.argv = [sys.executable, os.path.abspath(__file__), "--serve-noop", str(noop.http_port)]
        direct = HttpServer("sketch: no gRPC hop", [], server_cpu, tmp)
        direct.argv = [
            *[sys.executable, os.path.abspath(__file__)],
            *["--serve-direct", str(direct.http_port)],
        ]
        servers = [kimball, fast, direct, noop]
        results: dict[str, list[Sample]] = {}

        def add(name: str, sample: Sample) -> None:
            results.setdefault(name, []).append(sample)

        try:
            for s in servers:
                s.start()
            for s in servers:
                s.wait_http()
            for s in servers:  # warm-up: connections, first calls, imports
                run_posts(s.http_port, warm, args.connections, 5.0)
            run_track_events(kimball.port, warm_grpc, args.connections, 5.0)

            for r, data in enumerate(rounds):
                bodies, messages = data["bodies"], data["grpc"]
                with pinned(server_cpu):  # in-process, on the server's CPU
                    core_pass = ours_accept(Engine, data["events"])()
                    add("core", measure(None, _counted(core_pass, n_events)))
                    add("steps", measure(None, in_process(bodies, gateway_steps)))
                    add("fast-steps", measure(None, in_process(bodies, fast_steps)))
                    add("direct", measure(None, in_process(bodies, direct_steps)))
                conns, cap = args.connections, args.max_seconds
                noop_bodies = bodies * args.noop_repeat
                wire: list[tuple[str, ServerProcess, Callable[[], int]]] = [
                    ("rest", kimball, partial(run_posts, kimball.http_port, bodies, conns, cap)),
                    ("rest-fast", fast, partial(run_posts, fast.http_port, bodies, conns, cap)),
                    (
                        "rest-direct",
                        direct,
                        partial(run_posts, direct.http_port, bodies, conns, cap),
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
    mark = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(f"{mark}  REST gateway vs in-process core: {ratio:.0%} (target >= {TARGET_RATIO:.0%})")
    for label, value in (
        ("REST gateway vs no-op aiohttp server", rates["rest"] / rates["noop"]),
        ("REST, faster build patched in, vs in-process core", rates["rest-fast"] / core),
        ("REST, sketch with no gRPC hop, vs in-process core", rates["rest-direct"] / core),
        ("gRPC TrackEvents (no gateway) vs in-process core", rates["grpc"] / core),
    ):
        print(f"info  {label}: {value:.0%}")

    print("\n## steps alone (warm loops over 10,000 events), on the server's CPU, µs per event\n")
    print("| step | µs/event |\n|---|---:|")
    for name, us in costs:
        print(f"| {name} | {us:.2f} |")
    print(f"| `Ingestor.accept` (the core) | {1e6 / core:.2f} |")

    core_us = 1e6 / core
    us = {key: server_us(results[key]) for key in ("rest", "rest-fast", "rest-direct", "grpc")}
    noop_us = server_us(results["noop"])
    rest_us, fast_us, direct_us = us["rest"], us["rest-fast"], us["rest-direct"]
    parts = [
        ("REST POST -> kimball serve, whole server", rest_us),
        ("saved by the faster build instead of `ParseDict` (REST - faster row)", rest_us - fast_us),
        (
            "saved by also dropping the loopback gRPC hop (faster row - sketch row)",
            fast_us - direct_us,
        ),
        (
            "the hop's gRPC server side: call, decode, `event_from_proto` (gRPC - core)",
            us["grpc"] - core_us,
        ),
        ("left in the sketch: the core (in-process `Ingestor.accept`)", core_us),
        ("left in the sketch: aiohttp + `json.loads` (no-op server)", noop_us),
        (
            "left in the sketch: the rest (token, events from dicts, metrics; noise)",
            direct_us - core_us - noop_us,
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

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

Each server is a subprocess pinned to one CPU (``--server-cpu``), the load generator to
another (``--client-cpu``). Requests are serialized before the clock starts; each round
streams into its own namespace so every round does the same Bloom work from empty
counters. Server CPU per event or call comes from /proc/<pid>/stat, so a client that cannot
keep up shows as server CPU below 100%. Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

# bench_core sits next to this script (the script's folder is on sys.path).
from bench_core import (
    BATCH,
    code_note,
    machine_note,
    make_plain_workload,
    median,
    ours_accept,
    spread,
)

from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.api.status_mapping import StatusInterceptor
from kimball_grpc.codec import proto_mapping
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.metrics import Metrics
from kimball_grpc.streaming.subscriptions import SubscriptionHub

SERVICE = "/kimball.v1.KimballService"
TARGET_STREAM_RATIO = 0.65
TARGET_UNARY_RATIO = 0.60
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
    observe = Metrics(Engine()).observe_request  # as in Kimball: metrics are recorded
    interceptors = [StatusInterceptor({SERVICE.strip("/")}, observe)] if interceptor else []
    server = grpc.aio.server(interceptors=interceptors, options=CHANNEL_OPTIONS)
    pb_grpc.add_KimballServiceServicer_to_server(NoopService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(None)


# -- server processes ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_pin(cpus: set[int]) -> bool:
    return hasattr(os, "sched_setaffinity") and cpus <= os.sched_getaffinity(0)


@dataclass
class ServerProcess:
    name: str
    argv: list[str]
    cpu: int | None
    cwd: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        cpu = self.cpu
        preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        env = {k: v for k, v in os.environ.items() if k != "KIMBALL_CONFIG"}
        env["LOG_LEVEL"] = "WARNING"
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=env,
            preexec_fn=preexec,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            while True:
                if self.process and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
                try:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                    return
                except grpc.FutureTimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name} not ready after {timeout} s") from None

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole server process (all threads)."""
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Kimball runs as deployed, authentication on; the no-op servers ignore the header.
BENCH_TOKEN = "bench-token"


def scrape_metrics(http_port: int, prefix: str) -> dict[str, float]:
    """Samples of a server's ``/metrics`` (bearer token) whose names start with ``prefix``,
    by sample name with its labels."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/metrics",
        headers={"Authorization": f"Bearer {BENCH_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        text = answer.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


AUTH = (("authorization", f"Bearer {BENCH_TOKEN}"),)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options every server benchmark takes: workload, rounds, CPUs, seed."""
    parser.add_argument("--users", type=int, default=25_000, help="users in the workload")
    parser.add_argument("--names", type=int, default=20, help="event names in the workload")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--seed", type=int, default=20240515)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds")


def start_run(title: str, code: str, args: argparse.Namespace) -> int | None:
    """Print the run's header and pin the load generator; the CPU for servers (or None)."""
    print(f"# {title}")
    pin = not args.no_pin and can_pin({args.server_cpu, args.client_cpu})
    if pin:
        os.sched_setaffinity(0, {args.client_cpu})
    print(f"code: {code}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"servers pinned to CPU {args.server_cpu}, load generator to CPU {args.client_cpu}"
        if pin
        else "not pinned (need two usable CPUs)"
    )
    return args.server_cpu if pin else None


def kimball_argv(port: int, data_dir: str) -> list[str]:
    script = Path(sys.executable).with_name("kimball")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "kimball_grpc.cli"]
    config = Path(data_dir).with_name("app.config")
    config.write_text(f'[{{features, [{{api_auth_tokens, [<<"{BENCH_TOKEN}">>]}}]}}].\n')
    return [
        *head,
        "serve",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--api-port",
        "0",
        "--data-dir",
        data_dir,
        "--config",
        str(config),
    ]


def noop_argv(port: int, interceptor: bool) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--serve-noop", str(port)]
    return [*argv, "--interceptor"] if interceptor else argv


# -- measurements -------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    units: int  # events or calls completed
    server_cpu: float  # seconds
    client_cpu: float  # seconds

    @property
    def rate(self) -> float:
        return self.units / self.seconds


def measure(server: ServerProcess | None, run: Callable[[], int]) -> Sample:
    server_before = server.cpu_seconds() if server else 0.0
    client_before = time.process_time()
    start = time.perf_counter()
    units = run()
    seconds = time.perf_counter() - start
    client = time.process_time() - client_before
    server_cpu = server.cpu_seconds() - server_before if server else 0.0
    return Sample(seconds, units, server_cpu, client)


def stream_messages(events: list[pb.Event], batch: int) -> list[bytes]:
    return [
        pb.TrackEventsRequest(events=events[i : i + batch]).SerializeToString()
        for i in range(0, len(events), batch)
    ]


def run_stream(port: int, messages: list[bytes], expected_events: int) -> int:
    async def go() -> int:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=CHANNEL_OPTIONS
        ) as channel:
            call = channel.stream_unary(
                f"{SERVICE}/StreamEvents",
                request_serializer=None,  # already bytes
                response_deserializer=pb.StreamEventsResponse.FromString,
            )
            response = await call(iter(messages), metadata=AUTH)
            return response.messages

    received = asyncio.run(go())
    if received != len(messages):
        raise RuntimeError(f"server got {received} messages of {len(messages)}")
    return expected_events


def run_unary(port: int, requests: list[bytes], inflight: int, seconds: float) -> int:
    async def go() -> int:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=CHANNEL_OPTIONS
        ) as channel:
            call = channel.unary_unary(
                f"{SERVICE}/TrackEvent", request_serializer=None, response_deserializer=None
            )
            source: Iterator[bytes] = itertools.cycle(requests)  # pool sized not to wrap
            done = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await call(next(source), metadata=AUTH)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(inflight)))
            return done

    return asyncio.run(go())


def in_process_decode_accept(messages: list[bytes]) -> Callable[[], int]:
    """What the Kimball server does per message minus the transport: decode, map, accept."""
    ingestor = Ingestor(Engine(), SubscriptionHub())

    async def go() -> int:
        n = 0
        for data in messages:
            request = pb.TrackEventsRequest.FromString(data)
            n += await ingestor.accept([proto_mapping.event_from_proto(e) for e in request.events])
        return n

    return lambda: asyncio.run(go())


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the block on ``cpu`` (the server's), then go back."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- report ---------------------------------------------------------------------


def row(name: str, samples: list[Sample], unit: str, per: str, reference: float | None) -> float:
    rates = [s.rate for s in samples]
    rate = median(rates)
    server = median([s.server_cpu / s.units * 1e6 for s in samples])
    client = median([s.client_cpu / s.seconds for s in samples])
    server_text = f"{server:,.1f} µs" if any(s.server_cpu for s in samples) else "-"
    ratio = f"{rate / reference:.0%}" if reference else "-"
    print(
        f"| {name} | {rate:,.0f} {unit}/s | {spread(rates)} | {server_text} per {per} "
        f"| {client:.0%} | {ratio} |"
    )
    return rate


def table_head() -> None:
    print("| measurement | median rate | spread | server CPU | client CPU busy | ratio |")
    print("|---|---:|---:|---:|---:|---:|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser)
    parser.add_argument("--stream-events", type=int, default=100_000, help="events per stream")
    parser.add_argument("--batch", type=int, default=BATCH, help="events per stream message")
    parser.add_argument("--inflight", type=int, default=64, help="unary calls in flight")
    parser.add_argument("--unary-seconds", type=float, default=3.0, help="per unary measurement")
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--interceptor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop is not None:
        asyncio.run(serve_noop(args.serve_noop, args.interceptor))
        return 0
    if args.quick:
        args.stream_events, args.users, args.unary_seconds, args.rounds = 20_000, 5_000, 1.0, 2

    server_cpu = start_run(f"bench_grpc  ({machine_note()})", code_note(), args)
    started = time.perf_counter()

    # Workload, serialized before any clock starts; one namespace per round.
    w = make_plain_workload(args.stream_events, args.users, args.names, args.seed)
    stream_rounds = []
    for r in range(args.rounds):
        events = [
            pb.Event(namespace=f"stream-{r}", event_name=e.event_name, user_id=e.user_id)
            for e in w.events
        ]
        stream_rounds.append(stream_messages(events, args.batch))
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

    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        kimball = ServerProcess("kimball serve", [], server_cpu, tmp)
        kimball.argv = kimball_argv(kimball.port, os.path.join(tmp, "data"))
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
            run_stream(noop.port, stream_rounds[0][:10], 0)

            n_events = len(w.events)
            results: dict[str, list[Sample]] = {}

            def add(name: str, sample: Sample) -> None:
                results.setdefault(name, []).append(sample)

            for r in range(args.rounds):
                # Streaming: in-process core (on the server's CPU), Kimball, no-op.
                with pinned(server_cpu):
                    add("core", measure(None, _counted(ours_accept(Engine, w.events)(), n_events)))
                    add("decode", measure(None, in_process_decode_accept(stream_rounds[r])))
                add(
                    "stream",
                    measure(
                        kimball, lambda r=r: run_stream(kimball.port, stream_rounds[r], n_events)
                    ),
                )
                # The no-op server is fast: send the messages 10 times for a measurable run.
                add(
                    "stream-noop",
                    measure(
                        noop,
                        lambda r=r: run_stream(noop.port, stream_rounds[r] * 10, 10 * n_events),
                    ),
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
    for label, ratio, target in (
        ("stream vs in-process core", stream / core, TARGET_STREAM_RATIO),
        ("unary vs no-op servicer", unary / ceiling, TARGET_UNARY_RATIO),
    ):
        mark = "PASS" if ratio >= target else "MISS"
        print(f"{mark}  {label}: {ratio:.0%} (target >= {target:.0%})")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def _counted(run: Callable[[], object], n: int) -> Callable[[], int]:
    def go() -> int:
        run()
        return n

    return go


if __name__ == "__main__":
    sys.exit(main())

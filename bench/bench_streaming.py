"""Streaming benchmark: Subscribe fan-out and event forwarding, ``kimball serve`` in a subprocess.

Run from the repository root:

    .venv/bin/python bench/bench_streaming.py            # defaults, about 3 minutes
    .venv/bin/python bench/bench_streaming.py --quick    # a smoke run
    # forwarding only, side by side with another checkout (a baseline), e.g. the commit
    # before a change:
    git archive b36dd8c | tar -x -C /tmp/kimball-base
    (cd /tmp/kimball-base && $PWD/.venv/bin/python protos/compile_protos.py)
    .venv/bin/python bench/bench_streaming.py --skip fanout --baseline /tmp/kimball-base

What it measures, in interleaved rounds (medians reported, min/max spread):

(1) Fan-out. One producer (this process) streams ``--events`` events with ``StreamEvents``
    (``--batch`` events per message) into ``kimball serve`` with no subscriber, with N
    subscribers that do not read (``--not-reading``, default 10 and 100) and with N
    subscribers reading every event of the run (``--reading``, default 10). Every subscription
    filters on the run's namespace (the run's events and nothing else). The subscribers are ONE
    client process (a subprocess of this script, on the load generator's CPU) running
    grpc.aio. Reading ones: one channel per subscriber, each asking for up to
    ``--per-response`` events per response (1: one event per response, as clients written
    before batches were; an older server sends one anyway). Ones that do not read: ``--per-channel``
    subscribers per channel, without BDP probing, so their flow-control windows stay at 64 KB;
    once each has received an event the process reads nothing more (the connections stay
    alive). Before such a run the producer sends ``--fill`` events of another name, which
    fill those windows, and waits until the server is idle: the run then measures what
    subscribers cost while they do not read, not their first deliveries. Reported: ingestion
    events/s against the same with none (what subscribers cost the server), server CPU per
    ingested event, and for reading subscribers events/s delivered per subscriber (events it
    received divided by the time from the producer's start to its last event; deliveries go
    on after ingestion ends, up to ``--drain`` s) and in total, the largest ``dropped`` a
    subscriber saw, and the CPU busy of the subscriber process (the client side may be the
    bottleneck).
(2) Forwarding. A ``KimballIntegration.EventStream`` target written here (a subprocess on the
    load generator's CPU, counting the events it reads as it reads them) and ``kimball
    serve`` configured with ``{external_grpc_event_targets, [{"127.0.0.1", PORT}]}``; the
    same stream of events goes in. With ``--baseline DIR``, a second such server runs the
    code in ``DIR`` (``python -m kimball_grpc.cli`` with ``DIR`` first on ``PYTHONPATH``),
    forwarding to the same target, in the same rounds. Reported per server: ingestion
    events/s against a ``kimball serve`` without a target, events/s the target received
    over the run (producer start to last event received), the server's CPU per event over
    the same span (ingesting and forwarding), and ``kimball_forward_events_sent_total`` /
    ``kimball_forward_events_dropped_total`` read from the server's ``/metrics`` (bearer
    token) after each run.

Both servers run with authentication on (as in every script), pinned to ``--server-cpu``. Each run
streams into its own namespace, so every run does the same Bloom work. Timing is only printed,
never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
import time

import grpc

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import Sample, measure, median, spread, verdict
from load import channel, run_stream
from run_options import add_parts, add_server_options, add_size, new_parser, parse, start_run
from servers import (
    AUTH,
    CHANNEL_OPTIONS,
    SERVICE,
    ServerProcess,
    finish,
    free_port,
    kimball_argv,
    pin_to,
    process_cpu_seconds,
)
from workload import Body, Workload, in_namespace, make_plain_workload, track_events_requests

from kimball_grpc.core.events import Event
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import event_target_pb2 as target_pb
from kimball_grpc.generated.kimball.v1 import event_target_pb2_grpc as target_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

WARMUP = "warmup"  # event name of the events that check every subscriber is live
# The targets: ingestion with subscribers (reading everything, or not reading) at this
# share of its rate with none; a target receiving this many events/s, with ingestion at
# this share of its rate without a target.
TARGET_WITH_SUBSCRIBERS = 0.80
TARGET_FORWARDED = 50_000
TARGET_WITH_TARGET = 0.90


# -- child processes: subscribers and the forwarding target ------------------------------
# Both talk to this script by lines: commands on stdin, JSON answers on stdout.


async def _commands() -> asyncio.Queue[str]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "quit")

    loop.run_in_executor(None, read)
    return queue


def _answer(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run_subscribers(port: int, n: int, namespace: str, per_response: int) -> None:
    """``n`` Subscribe streams on ``namespace``, asking for ``per_response`` events per
    response; answers 'ready' once each saw a warm-up event, then on 'report' each stream's
    count, last receive time and largest ``dropped``."""
    counts = [0] * n
    last = [0.0] * n
    dropped = [0] * n
    live = [False] * n
    all_live = asyncio.Event()
    channels = [channel(port) for _ in range(n)]

    async def subscriber(i: int) -> None:
        clock = time.monotonic
        try:
            async for response in subscribe(channels[i], namespace, per_response):
                # Several events per response, or (an older server) one.
                got = response.events or [response]
                if got[0].event.event_name == WARMUP:
                    if not live[i]:
                        live[i] = True
                        if all(live):
                            all_live.set()
                    continue
                counts[i] += len(got)
                last[i] = clock()
                if response.dropped > dropped[i]:
                    dropped[i] = response.dropped
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                raise

    tasks = [asyncio.ensure_future(subscriber(i)) for i in range(n)]
    commands = await _commands()
    _answer({"started": True})
    await all_live.wait()
    _answer({"ready": True})
    while (await commands.get()) != "quit":
        _answer({"counts": counts, "last": last, "dropped": dropped})
    for t in tasks:
        t.cancel()
    for c in channels:
        await c.close()


async def run_idle_subscribers(port: int, n: int, namespace: str, per_channel: int) -> None:
    """``n`` Subscribe streams on ``namespace``, ``per_channel`` to a channel; answers 'ready'
    once each saw a warm-up event, and reads nothing more until told to quit."""
    options = [*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)]  # windows stay at 64 KB
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        for _ in range(-(-n // per_channel))
    ]
    calls = [subscribe(channels[i // per_channel], namespace) for i in range(n)]
    commands = await _commands()
    _answer({"started": True})
    for call in calls:
        while (await call.read()).event.event_name != WARMUP:
            pass
    _answer({"ready": True})
    while (await commands.get()) != "quit":
        _answer({})
    for c in channels:
        await c.close()


def subscribe(
    ch: grpc.aio.Channel, namespace: str, per_response: int = 0
) -> grpc.aio.UnaryStreamCall:
    call = ch.unary_stream(
        f"{SERVICE}/Subscribe",
        request_serializer=pb.SubscribeRequest.SerializeToString,
        response_deserializer=pb.SubscribeResponse.FromString,
    )
    request = pb.SubscribeRequest(namespace=namespace, max_events_per_response=per_response)
    return call(request, metadata=AUTH)


class Target(integration_grpc.KimballIntegrationServicer, target_grpc.KimballEventTargetServicer):
    """A forwarding target that counts the events it reads, as it reads them (a stream may
    stay open for the whole run), and notes when it read the last one. It serves
    ``EventBatches`` too, as a target written for Kimball would; an older server, or
    ``--no-batches``, sends on ``EventStream``, one event per message."""

    def __init__(self, batches: bool) -> None:
        self.count = 0
        self.last = 0.0
        self.batches = batches

    async def EventBatches(self, request_iterator, context):
        if not self.batches:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no batches")
        clock = time.monotonic
        async for message in request_iterator:
            self.count += len(message.events)
            self.last = clock()
        return target_pb.EventBatchesResponse(code=0)

    async def EventStream(self, request_iterator, context):
        clock = time.monotonic
        async for _ in request_iterator:
            self.count += 1
            self.last = clock()
        return integration_pb.Response(code=0)


async def run_target(port: int, batches: bool) -> None:
    target = Target(batches)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    integration_grpc.add_KimballIntegrationServicer_to_server(target, server)
    target_grpc.add_KimballEventTargetServicer_to_server(target, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    commands = await _commands()
    _answer({"started": True})
    while (await commands.get()) != "quit":
        _answer({"count": target.count, "last": target.last})
    await server.stop(None)


class Child:
    """A child process of this script, pinned to ``cpu``, spoken to by lines."""

    def __init__(self, argv: list[str], cpu: int | None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin_to(cpu),
        )
        self.read()  # "started"

    def read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.process.args[2:]} exited")
        return json.loads(line)

    def ask(self, command: str = "report") -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Close its stdin (it ends on that); kill it if it has not after 10 s."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                self.process.kill()
            finish(self.process, timeout=10)


# -- the parent ---------------------------------------------------------------------------


def forward_metrics(server: ServerProcess) -> dict[str, float]:
    """``kimball_forward_events_*`` totals from the server's /metrics, by name and reason."""
    out: dict[str, float] = {}
    for name, value in server.metrics("kimball_forward_events_").items():
        if "_created" not in name:
            key = name.split("{")[0]
            if "reason=" in name:
                key += ":" + name.split('reason="')[1].split('"')[0]
            out[key] = out.get(key, 0.0) + value
    return out


def wait_until_quiet(poll, expected: int, drain: float) -> dict:
    """Poll a child until it has ``expected`` events or got nothing new for 0.5 s."""
    deadline = time.monotonic() + drain
    seen, since = -1, time.monotonic()
    while True:
        report = poll()
        total = report["total"]
        if total >= expected or time.monotonic() > deadline:
            return report
        if total != seen:
            seen, since = total, time.monotonic()
        elif time.monotonic() - since > 0.5:
            return report
        time.sleep(0.1)


def events_for(w: Workload, namespace: str, batch: int) -> list[Body]:
    return track_events_requests(in_namespace(w.events, namespace), batch)


def warmup_message(namespace: str) -> list[Body]:
    return track_events_requests([Event(WARMUP, "warmup-user", namespace)], 1)


def fill_messages(namespace: str, count: int, batch: int) -> list[Body]:
    """``count`` events of their own name and users, as large as names allow: they fill the
    stopped subscribers' windows and socket buffers and leave the run's Bloom work alone."""
    pad = "f" * 240
    events = [Event(f"fill-{pad}", f"fill-{i}-{pad}", namespace) for i in range(count)]
    return track_events_requests(events, batch)


def wait_until_idle(server: ServerProcess, timeout: float = 60.0) -> float:
    """Until the server's CPU is under 10% busy over 0.3 s; the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        before = server.cpu_seconds()
        time.sleep(0.3)
        if server.cpu_seconds() - before < 0.03:
            break
    return time.monotonic() - began


def rate_row(name: str, rates: list[float], extra: list[str]) -> None:
    cells = " | ".join(extra)
    print(f"| {name} | {median(rates):,.0f} | {spread(rates)} | {cells} |")


def cpu_busy(samples: list[Sample]) -> str:
    return f"{median([s.server_cpu / s.seconds for s in samples]):.0%}"


def forwarding_report(
    fwd: dict[str, list[Sample]],
    fwd_out: dict[str, list[tuple[float, int, dict[str, float], float, float]]],
    n_events: int,
) -> None:
    """The forwarding runs: ingestion against no target, then what each server delivered."""
    print("\n## (2) forwarding to one external_grpc_event_targets target\n")
    print(
        "| server | ingestion ev/s | spread | vs no target | server CPU busy | target received "
        "ev/s | spread | server CPU per event | target CPU busy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = median([s.rate for s in fwd["none"]])
    for key in fwd:
        rates = [s.rate for s in fwd[key]]
        extra = [f"{median(rates) / base:.0%}", cpu_busy(fwd[key])]
        if key == "none":
            per_event = median([s.server_cpu / s.units * 1e6 for s in fwd[key]])
            extra += ["-", "-", f"{per_event:,.1f} µs", "-"]
        else:
            out = fwd_out[key]
            received = [x[0] for x in out]
            extra += [
                f"{median(received):,.0f}",
                spread(received),
                f"{median([x[4] for x in out]) * 1e6:,.1f} µs",
                f"{median([x[3] for x in out]):.0%}",
            ]
        rate_row("no target" if key == "none" else f"one target ({key})", rates, extra)
    print(
        "\n(server CPU per event: ingestion only without a target; with one, from the "
        "producer's start until the target read the last event)\n"
    )
    out = fwd_out["ours"]
    received = median([x[0] for x in out])
    cpu = median([x[4] for x in out]) * 1e6
    verdict(
        "forwarding, events/s one target received",
        f"{received:,.0f} ev/s",
        received >= TARGET_FORWARDED,
        f">= {TARGET_FORWARDED:,} ev/s",
        cpu,
    )
    ratio = median([s.rate for s in fwd["ours"]]) / base
    verdict(
        "forwarding, ingestion with one target vs none",
        f"{ratio:.0%}",
        ratio >= TARGET_WITH_TARGET,
        f">= {TARGET_WITH_TARGET:.0%}",
        cpu,
    )
    for key, out in fwd_out.items():
        sent = [x[2].get("kimball_forward_events_sent_total", 0.0) for x in out]
        dropped: dict[str, float] = {}
        for x in out:
            for k, v in x[2].items():
                if k.startswith("kimball_forward_events_dropped_total"):
                    dropped[k] = dropped.get(k, 0.0) + v
        print(
            f"{key}: the target got {min(x[1] for x in out):,}-{max(x[1] for x in out):,} of "
            f"{n_events:,} events per run; kimball_forward_events_sent_total per run: "
            f"{', '.join(f'{v:,.0f}' for v in sent)}; dropped over all runs: "
            + (", ".join(f"{k.split(':')[-1]} {v:,.0f}" for k, v in dropped.items()) or "none")
        )


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(25_000, 5_000), rounds=(3, 2))
    add_server_options(parser, batch="events per stream message")
    add_size(parser, "--events", 30_000, 10_000, "events per run")
    add_size(parser, "--drain", 6.0, 4.0, "seconds to wait for deliveries")
    fanout, forwarding_options = add_parts(
        parser, {"fanout": "(1) Subscribe fan-out", "forwarding": "(2) forwarding"}
    )
    add_size(fanout, "--not-reading", "10,100", "10,100", "counts of subscribers that do not read")
    add_size(fanout, "--reading", "10", "10", "counts of subscribers reading every event")
    add_size(fanout, "--per-channel", 10, 10, "subscribers that do not read, per channel")
    add_size(
        fanout,
        "--per-response",
        100,
        100,
        "events per Subscribe response a reading subscriber asks for (1: one per response)",
    )
    add_size(fanout, "--fill", 2_000, 2_000, "events before a run with subscribers not reading")
    forwarding_options.add_argument(
        "--baseline", help="another checkout whose forwarding runs side by side"
    )
    forwarding_options.add_argument(
        "--no-batches",
        action="store_true",
        help="the target serves EventStream only, as targets written for the original",
    )
    parser.add_argument(
        "--subscribe", nargs=4, metavar=("PORT", "N", "NS", "K"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--subscribe-idle", nargs=4, metavar=("PORT", "N", "NS", "K"), help=argparse.SUPPRESS
    )
    parser.add_argument("--serve-target", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parse(parser, argv)
    if args.subscribe:
        port, n, ns, per_response = args.subscribe
        asyncio.run(run_subscribers(int(port), int(n), ns, int(per_response)))
        return 0
    if args.subscribe_idle:
        port, n, ns, per_channel = args.subscribe_idle
        asyncio.run(run_idle_subscribers(int(port), int(n), ns, int(per_channel)))
        return 0
    if args.serve_target is not None:
        asyncio.run(run_target(args.serve_target, not args.no_batches))
        return 0
    # A fan-out run: ("none", 0), ("not reading", n) or ("reading", n).
    fan_runs = [("none", 0)] + [
        (kind, int(n))
        for kind, counts in (("not reading", args.not_reading), ("reading", args.reading))
        for n in counts.split(",")
    ]
    if "fanout" in args.skip:
        fan_runs = []
    # The forwarding servers: ours, and the baseline's (its code first on PYTHONPATH).
    fwd_names = [] if "forwarding" in args.skip else ["ours"] + ["baseline"] * bool(args.baseline)

    server_cpu = start_run(args, "bench_streaming")
    client_cpu = args.client_cpu if server_cpu is not None else None
    started = time.perf_counter()
    w = make_plain_workload(args.events, args.users, args.names, args.seed)
    n_events = len(w.events)
    runs = 0

    def namespace() -> str:
        nonlocal runs
        runs += 1
        return f"run-{runs}"

    Run = tuple[str, int]
    fan: dict[Run, list[Sample]] = {}
    delivered: dict[Run, list[tuple[float, float, int, float]]] = {}  # per-sub, total, drop, cpu
    run_events: dict[Run, int] = {}  # events per fan-out run
    fill_seconds: list[float] = []  # filling the windows of subscribers not reading, then idle
    fwd: dict[str, list[Sample]] = {}
    # Per forwarding server: target rate, events it got, metrics, target CPU, server CPU/event.
    fwd_out: dict[str, list[tuple[float, int, dict[str, float], float, float]]] = {}

    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        target_port = free_port()
        target = Child(
            ["--serve-target", str(target_port)] + ["--no-batches"] * args.no_batches, client_cpu
        )
        plain = ServerProcess("kimball serve", [], server_cpu, tmp)
        os.makedirs(os.path.join(tmp, "a"))  # each its own app.config
        plain.argv = kimball_argv(plain, os.path.join(tmp, "a", "data"))
        forwarders: dict[str, ServerProcess] = {}
        for name in fwd_names:
            server = ServerProcess(f"kimball serve + target ({name})", [], server_cpu, tmp)
            os.makedirs(os.path.join(tmp, name))
            argv = kimball_argv(
                server,
                os.path.join(tmp, name, "data"),
                features=f'{{external_grpc_event_targets, [{{"127.0.0.1", {target_port}}}]}}',
            )
            if name == "baseline":
                server.env["PYTHONPATH"] = args.baseline
                argv = [sys.executable, "-m", "kimball_grpc.cli", *argv[argv.index("serve") :]]
            server.argv = argv
            forwarders[name] = server
        servers = [plain, *forwarders.values()]
        try:
            for s in servers:
                s.start()
            for s in servers:
                s.wait_ready()
            warm = events_for(w, "warm", args.batch)
            for s in servers:  # warm-up: a connection and the whole workload once
                run_stream(s.port, warm)

            def fan_run(run: Run) -> None:
                kind, n = run
                ns = namespace()
                # Reading subscribers slow ingestion down in proportion: fewer events.
                messages = events_for(w, ns, args.batch)
                if kind == "reading":
                    messages = messages[: fan_messages(n)]
                count = sum(k for _, k in messages)
                run_events[run] = count
                if kind == "none":
                    fan.setdefault(run, []).append(
                        measure(plain, lambda: run_stream(plain.port, messages))
                    )
                    return
                argv = ["--subscribe", str(plain.port), str(n), ns, str(args.per_response)]
                if kind == "not reading":
                    argv = ["--subscribe-idle", *argv[1:4], str(args.per_channel)]
                child = Child(argv, client_cpu)
                try:
                    while True:  # until each subscriber saw a warm-up event
                        run_stream(plain.port, warmup_message(ns))
                        ready, _, _ = select.select([child.process.stdout], [], [], 0.2)
                        if ready:
                            child.read()
                            break
                    if kind == "not reading":
                        began = time.monotonic()
                        run_stream(plain.port, fill_messages(ns, args.fill, args.batch))
                        wait_until_idle(plain)
                        fill_seconds.append(time.monotonic() - began)
                        fan.setdefault(run, []).append(
                            measure(plain, lambda: run_stream(plain.port, messages))
                        )
                        return
                    cpu_before = child.cpu_seconds()
                    t0 = time.monotonic()
                    sample = measure(plain, lambda: run_stream(plain.port, messages))

                    def poll() -> dict:
                        r = child.ask()
                        r["total"] = min(r["counts"])
                        return r

                    report = wait_until_quiet(poll, count, args.drain)
                    cpu = child.cpu_seconds() - cpu_before
                    spans = [max(t - t0, 1e-9) for t in report["last"]]
                    per_sub = [c / s for c, s in zip(report["counts"], spans, strict=True)]
                    total = sum(report["counts"]) / max(spans)
                    fan.setdefault(run, []).append(sample)
                    delivered.setdefault(run, []).append(
                        (median(per_sub), total, max(report["dropped"]), cpu / max(spans))
                    )
                finally:
                    child.stop()
                    time.sleep(0.3)  # the server ends the streams before the next run

            def fan_messages(n: int) -> int:
                return -(-max(args.events * 10 // max(n, 10), args.batch * 10) // args.batch)

            def fwd_run(name: str) -> None:
                ns = namespace()
                messages = events_for(w, ns, args.batch)
                if name == "none":
                    fwd.setdefault("none", []).append(
                        measure(plain, lambda: run_stream(plain.port, messages))
                    )
                    return
                forwarding = forwarders[name]
                before_metrics = forward_metrics(forwarding)
                before = target.ask()["count"]
                cpu_before = target.cpu_seconds()
                server_before = forwarding.cpu_seconds()
                t0 = time.monotonic()
                sample = measure(forwarding, lambda: run_stream(forwarding.port, messages))

                def poll() -> dict:
                    r = target.ask()
                    r["total"] = r["count"] - before
                    return r

                report = wait_until_quiet(poll, n_events, args.drain)
                span = max(report["last"] - t0, 1e-9)
                cpu = (target.cpu_seconds() - cpu_before) / span
                # Up to the last poll: a little idle time after the last event, no more.
                per_event = (forwarding.cpu_seconds() - server_before) / n_events
                after = forward_metrics(forwarding)
                diff = {k: v - before_metrics.get(k, 0.0) for k, v in after.items()}
                fwd.setdefault(name, []).append(sample)
                fwd_out.setdefault(name, []).append(
                    (report["total"] / span, report["total"], diff, cpu, per_event)
                )

            fwd_runs = ["none", *fwd_names] if fwd_names else []
            for r in range(args.rounds):
                for run in fan_runs if r % 2 == 0 else fan_runs[::-1]:
                    fan_run(run)
                for name in fwd_runs if r % 2 == 0 else fwd_runs[::-1]:
                    fwd_run(name)
        finally:
            for s in servers:
                s.stop()
            target.stop()

    print(
        f"\nworkload: {n_events:,} events per run ({w.distinct_users:,} users, {args.names} "
        f"names), StreamEvents with {args.batch} events per message from this process; "
        f"{args.rounds} interleaved rounds; subscribers: one grpc.aio client process on the "
        f"load generator's CPU, filtering on the run's namespace\n"
    )
    if fan_runs:
        print("## (1) Subscribe fan-out\n")
        print(
            f"subscribers reading: up to {args.per_response} events per response; "
            f"subscribers not reading: {args.per_channel} per channel, BDP probing off; before "
            f"each such run {args.fill:,} larger events filled their windows and the server went "
            f"idle (took {median(fill_seconds) if fill_seconds else 0:.1f} s, median)\n"
        )
        print(
            "| subscribers | events per run | ingestion ev/s | spread | vs none | server CPU per "
            "event | server CPU busy | delivered ev/s per subscriber | delivered ev/s total | "
            "max dropped | subscriber CPU |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = median([s.rate for s in fan[("none", 0)]])
        for run in fan_runs:
            kind, n = run
            rates = [s.rate for s in fan[run]]
            per_event = median([s.server_cpu / s.units * 1e6 for s in fan[run]])
            extra = [
                f"{median(rates) / base:.0%}",
                f"{per_event:,.1f} µs",
                cpu_busy(fan[run]),
            ]
            if kind == "reading":
                d = delivered[run]
                extra += [
                    f"{median([x[0] for x in d]):,.0f}",
                    f"{median([x[1] for x in d]):,.0f}",
                    f"{max(x[2] for x in d):,}",
                    f"{median([x[3] for x in d]):.0%}",
                ]
            else:
                extra += ["-", "-", "-", "-"]
            label = "none" if kind == "none" else f"{n} {kind}"
            rate_row(f"{label} | {run_events[run]:,}", rates, extra)
        print()
        for kind, n in fan_runs[1:]:
            ratio = median([s.rate for s in fan[(kind, n)]]) / base
            verdict(
                f"fan-out, ingestion with {n} subscribers {kind} vs none",
                f"{ratio:.0%}",
                ratio >= TARGET_WITH_SUBSCRIBERS,
                f">= {TARGET_WITH_SUBSCRIBERS:.0%}",
                median([s.server_cpu / s.units * 1e6 for s in fan[(kind, n)]]),
            )
    if fwd_names:
        forwarding_report(fwd, fwd_out, n_events)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

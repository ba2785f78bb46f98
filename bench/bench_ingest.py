"""REST ingest side by side with the original Kimball API: events/s and server CPU per event.

Run from the repository root:

    .venv/bin/python bench/bench_ingest.py            # about 2-3 minutes
    .venv/bin/python bench/bench_ingest.py --quick    # a smoke run

What it measures, in one run, in interleaved rounds (medians reported):

- ``POST /v0/analytics`` with ``{"events": [...]}`` bodies of ``--batch`` events (the
  workload of ``bench_rest.py``: namespace, user_id, event_name, ``ensure_goal`` on two
  rare names), serialized before the clock starts, sent by 1 and 4 keep-alive clients
  (``--clients``), each round into a namespace of its own;
- into ``kimball serve`` with its REST gateway in-process (``--rest-workers 0``, as
  before), ``kimball serve --rest-workers N`` (``--workers``: N REST worker processes
  beside the engine process), both with authentication on and the write-ahead log with
  fsync ``always`` (the default: a 204 means the batch is on disk);
- ``StreamEvents`` (gRPC client streaming, messages of ``--batch`` events, the same
  events) on 1 and 4 concurrent streams (as many as ``--clients``) into ``kimball serve
  --rest-workers N`` (gRPC is served by its engine process), with the same token and log;
- and the original Kimball API (Erlang, built from source by ``../shared/original``,
  ``--original``; in memory, auth off, acknowledging before counting), when present.

Nothing is pinned: each server may use both CPUs (that is the point of the worker
processes), and the load generator runs beside them, as in the issue's measurement.
Server CPU per event is the CPU time of the server's whole process tree (engine and
workers; the original's ``beam.smp``) from /proc, over the events acknowledged. Every
answer must be 204. The targets: REST at least the original's rate, gRPC streaming at least
twice the original's REST rate (with as many streams as REST clients), server CPU per event
at most 8 µs; each also printed as a verdict line (``figures.verdict``). Timing is only
printed, never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import Sample, median, spread, verdict
from load import run_posts, run_streams
from run_options import add_size, new_parser, parse, print_header
from servers import ServerProcess, free_port, kimball_argv, tree_cpu_seconds
from workload import (
    GOAL_NAMES,
    in_namespace,
    json_bodies,
    make_plain_workload,
    track_events_requests,
)

REPOSITORY = Path(__file__).resolve().parent.parent
ORIGINAL = REPOSITORY.parent / "shared" / "original"
PLACEHOLDER = "ns-placeholder"
CPU_TARGET_US = 8.0  # server CPU per event, REST 100-event batches with the log
STREAM_TARGET = 2.0  # gRPC streaming at least this times the original's REST rate


@dataclass
class Ours:
    """A ``kimball serve`` subprocess: its REST port, its process tree's CPU."""

    name: str
    server: ServerProcess

    @property
    def port(self) -> int:
        return self.server.http_port

    def cpu_seconds(self) -> float:
        return self.server.tree_cpu_seconds()

    def engine_cpu_seconds(self) -> float:
        """The engine process alone (its REST workers left out)."""
        return self.server.cpu_seconds()


class Original:
    """The original Kimball API, started by its ``start.sh`` on a free port, with its
    build kept between runs and its run directory of its own (other runs may use theirs)."""

    name = "original (Erlang, in memory)"

    def __init__(self, source: Path, run_dir: Path) -> None:
        build = Path(tempfile.gettempdir()) / f"kimball-orig-build-{os.getuid()}"
        subprocess.run(
            [str(source / "build.sh")],
            env={**os.environ, "KIMBALL_ORIG_DIR": str(build)},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        run_dir.mkdir(parents=True)
        (run_dir / "lib").symlink_to(build / "lib")
        (run_dir / ".built").write_text((build / ".built").read_text())
        self.port = free_port()
        self._env = {
            **os.environ,
            "KIMBALL_ORIG_DIR": str(run_dir),
            "KIMBALL_ORIG_PORT": str(self.port),
        }
        self._source = source
        subprocess.run(
            [str(source / "start.sh")], env=self._env, check=True, stdout=subprocess.DEVNULL
        )
        self._pid = int((run_dir / "run" / "orig.pid").read_text())

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self._pid)

    def engine_cpu_seconds(self) -> float:
        return self.cpu_seconds()  # one process

    def stop(self) -> None:
        subprocess.run([str(self._source / "stop.sh")], env=self._env, check=False)


@dataclass
class Streams:
    """gRPC ``StreamEvents`` into one of ours (its engine process serves gRPC)."""

    of: Ours

    @property
    def name(self) -> str:
        return f"{self.of.name}: gRPC StreamEvents"

    def cpu_seconds(self) -> float:
        return self.of.cpu_seconds()

    def engine_cpu_seconds(self) -> float:
        return self.of.engine_cpu_seconds()


def posts(
    target: Ours | Original | Streams, bodies: list, clients: int, seconds: float
) -> tuple[Sample, float]:
    """One measurement: the bodies posted by ``clients`` connections (for ``Streams``: the
    messages sent on ``clients`` streams), with the server's CPU; and the engine process's
    CPU per event alone (the one process that cannot be spread)."""
    before, engine_before = target.cpu_seconds(), target.engine_cpu_seconds()
    client_before = time.process_time()
    start = time.perf_counter()
    if isinstance(target, Streams):
        events = run_streams(target.of.server.port, bodies, clients)
    else:
        events = run_posts(target.port, bodies, clients, seconds)
    elapsed = time.perf_counter() - start
    engine = (target.engine_cpu_seconds() - engine_before) / events * 1e6
    sample = Sample(
        elapsed, events, target.cpu_seconds() - before, time.process_time() - client_before
    )
    return sample, engine


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(25_000, 2_500), rounds=(3, 1))
    parser.add_argument("--batch", type=int, default=100, help="events per POST")
    add_size(parser, "--events", 100_000, 10_000, "events per measurement")
    add_size(parser, "--max-seconds", 6.0, 2.0, "cap per measurement")
    parser.add_argument("--clients", default="1,4", help="keep-alive clients, a comma list")
    parser.add_argument("--workers", type=int, default=2, help="REST worker processes (N)")
    parser.add_argument("--original", type=Path, default=ORIGINAL, help="its build scripts")
    parser.add_argument("--no-original", action="store_true", help="ours only")
    parser.add_argument(
        "--wal-fsync", default="always", help="ours: the log's fsync policy (always)"
    )
    args = parse(parser, argv)
    clients = [int(c) for c in args.clients.split(",")]
    print_header("bench_ingest", "gateway")
    print("not pinned: servers and load generator share the machine's CPUs")
    started = time.perf_counter()

    w = make_plain_workload(args.events, args.users, args.names, args.seed)
    # Serialized once; each measurement gets its own namespace by a byte replace.
    template = json_bodies(in_namespace(w.events, PLACEHOLDER, GOAL_NAMES), args.batch)
    warm = template[:20]
    # The same events as StreamEvents messages (a namespace is a length-delimited field: the
    # byte replace keeps the messages valid as names keep the placeholder's length).
    messages = track_events_requests(in_namespace(w.events, PLACEHOLDER, GOAL_NAMES), args.batch)

    def bodies(namespace: str, of: list) -> list:
        name = namespace.ljust(len(PLACEHOLDER), "x").encode()
        return [(body.replace(PLACEHOLDER.encode(), name), n) for body, n in of]

    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        targets: list[Ours | Original] = []
        ours = []
        for workers in (0, args.workers):
            name = f"kimball serve --rest-workers {workers}"
            server = ServerProcess(name, [], None, tmp)
            data = os.path.join(tmp, f"data-{workers}")
            flags = ("--rest-workers", str(workers), "--wal-fsync", args.wal_fsync)
            server.argv = kimball_argv(server, data, *flags)
            ours.append(Ours(name, server))
        targets.extend(ours)
        streams = Streams(ours[-1])
        targets.append(streams)
        original = None
        try:
            for target in ours:
                target.server.start()
            for target in ours:
                target.server.wait_serving()
            if not args.no_original and (args.original / "start.sh").exists():
                original = Original(args.original, Path(tmp) / "original")
                targets.append(original)
            elif not args.no_original:
                print(f"no original at {args.original}: ours only")
            for target in targets:  # warm-up: imports, first connections, JIT-free but cold
                if target is streams:
                    run_streams(streams.of.server.port, bodies("warm-up", messages[:20]), 4)
                else:
                    run_posts(target.port, bodies("warm-up", warm), 4, 30.0)
            results: dict[tuple[str, int], list[Sample]] = {}
            engine_us: dict[tuple[str, int], list[float]] = {}
            for r in range(args.rounds):
                for c in clients:
                    order = targets[r % len(targets) :] + targets[: r % len(targets)]
                    for i, target in enumerate(order):
                        namespace = f"r{r}-c{c}-{i}"
                        of = messages if target is streams else template
                        sample, engine = posts(target, bodies(namespace, of), c, args.max_seconds)
                        results.setdefault((target.name, c), []).append(sample)
                        engine_us.setdefault((target.name, c), []).append(engine)
        finally:
            for target in ours:
                target.server.stop()
            if original is not None:
                original.stop()

    print(
        f"\nworkload: {args.events:,} events per measurement at most {args.max_seconds:g} s, "
        f"{args.batch} events per POST, {args.rounds} rounds; fsync {args.wal_fsync} (ours)"
    )
    print(
        "\n| clients | server | events/s | spread | server CPU per event "
        "| of which the engine process | cores used | vs original |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for c in clients:
        reference = None
        if original is not None:
            reference = median([s.rate for s in results[(original.name, c)]])
        for target in targets:
            samples = results[(target.name, c)]
            rate = median([s.rate for s in samples])
            cpu = median([s.server_cpu / s.units * 1e6 for s in samples])
            cores = median([s.server_cpu / s.seconds for s in samples])
            ratio = f"{rate / reference:.2f}x" if reference else "-"
            engine = median(engine_us[(target.name, c)])
            print(
                f"| {c} | {target.name} | {rate:,.0f} | {spread([s.rate for s in samples])} "
                f"| {cpu:.1f} µs | {engine:.1f} µs | {cores:.2f} | {ratio} |"
            )
            if target is ours[-1] or target is streams:
                verdicts.append((target, c, rate, reference, cpu))
    print("\n| target | result | verdict |")
    print("|---|---|---|")
    lines = []
    for target, c, rate, reference, cpu in verdicts:
        if target is streams:
            what, floor = f"gRPC StreamEvents, {c} stream(s)", STREAM_TARGET
        else:
            what, floor = f"REST, {c} client(s), --rest-workers {args.workers}", 1.0
        if reference:
            lines.append(
                (
                    f"{what} vs the original's REST",
                    f"{rate / reference:.2f}x",
                    rate >= floor * reference,
                    f">= {floor:g}x",
                    cpu,
                )
            )
        if target is not streams:
            lines.append(
                (
                    f"server CPU per event, {what}",
                    f"{cpu:.1f} µs",
                    cpu <= CPU_TARGET_US,
                    f"<= {CPU_TARGET_US:g} µs",
                    None,
                )
            )
    for label, result, passed, target_text, _ in lines:
        print(f"| {label} {target_text} | {result} | {'PASS' if passed else 'MISS'} |")
    print()
    for label, result, passed, target_text, cpu_us in lines:
        verdict(label, result, passed, target_text, cpu_us)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

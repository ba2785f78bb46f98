"""Limits benchmark: the memory and snapshot time of an api server at its growth limits.

Run from the repository root:

    .venv/bin/python bench/bench_limits.py            # the default limits, about 3 minutes
    .venv/bin/python bench/bench_limits.py --quick    # a tenth of each limit, about 30 s

Each scenario runs in a fresh subprocess, so the resident memory (RSS) it reports is its
own: a real api server (``start_server``: gRPC, the write-ahead log, snapshots to a local
directory) started in the process, its engine filled with the records that accepted
requests would have added (applied as the log replays them: the same state, without
paying for the requests), one event accepted through the log, then:

- RSS once filled, and its difference from the empty server's;
- ``Persistence.snapshot()``: capture, encode and store (local directory, fsync), in
  seconds, the object's size, and the highest RSS seen during it (sampled every 10 ms);
- the restore: the server stopped, a new one started on the same data, seconds to ready.

Scenarios, at the limits given (defaults: ``core.limits``): ``empty``; ``namespaces``
(that many namespaces, one event each); ``event_names`` (one namespace with that many);
``counters`` (that many counters, in full namespaces); ``goals`` (that many goals in one
namespace); ``feature_specs`` (that many specs, filling the fixed 3 MiB for the set);
``all`` (every limit at once: every namespace made, the counters spread over them, every
namespace full of goals, every spec). Names are 256 characters, the longest allowed (the
worst case), and each counter holds one user (its initial size). Last, the bytes of one
counter of the default rule as it grows, to read the state's cost with real users.

Then the check's cost on the ingestion path, in this process: ``GrowthLimits.admit`` on
batches of 100 events whose names exist (what nearly every request is; nothing to
reserve) and on batches that each bring 100 new event names (reserved), against
``Engine.apply`` and the whole ``Ingestor.accept`` (no log) of the same batches, in
interleaved rounds (medians, with the min/max spread).

Prints figures, asserts nothing; the verdict is against 2 GiB and 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# figures, load, run_options and workload: bench modules next to this script.
from figures import median, spread, timed, verdict
from load import ours_accept
from run_options import add_size, parse, print_header
from workload import BATCH, batches, make_plain_workload

from kimball_grpc.app import start_server
from kimball_grpc.codec.proto_mapping import spec_message_size
from kimball_grpc.config.settings import Settings
from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.counter_config import DEFAULT_RULE
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event
from kimball_grpc.core.feature_flags import FeatureSpec, UserCondition
from kimball_grpc.core.growth_limits import GrowthLimits
from kimball_grpc.core.limits import (
    COUNTERS,
    EVENT_NAMES,
    FEATURE_SPEC_BYTES,
    FEATURE_SPECS,
    GOALS,
    MAX_NAME_LENGTH,
    NAMESPACES,
    StateLimits,
)
from kimball_grpc.core.records import EventRecord, FeatureSpecRecord, GoalRecord
from kimball_grpc.metrics import resident_bytes
from storage.wal import FsyncPolicy

SCENARIOS = ("empty", "namespaces", "event_names", "counters", "goals", "feature_specs", "all")
LIMIT_BYTES = 2 * 1024**3
LIMIT_SECONDS = 5.0
MB = 1024 * 1024
USER = hash_key("one-user")


def long_name(kind: str, number: int) -> str:
    """A distinct name of the longest length allowed."""
    return f"{kind}-{number:09d}-".ljust(MAX_NAME_LENGTH, "x")


# -- the state of each scenario ----------------------------------------------------------


def fill(engine: Engine, scenario: str, args: argparse.Namespace) -> str:
    """Put the scenario's state into ``engine``; returns what it holds, in words."""
    if scenario == "namespaces":
        for n in range(args.namespaces):
            _event(engine, long_name("ns", n), long_name("event", 0))
        return f"{args.namespaces:,} namespaces, one event each"
    if scenario == "event_names":
        namespace = long_name("ns", 0)
        for e in range(args.event_names):
            _event(engine, namespace, long_name("event", e))
        return f"1 namespace of {args.event_names:,} event names"
    if scenario == "counters":
        for c in range(args.counters):
            _event(engine, long_name("ns", c // args.event_names), long_name("event", c))
        spaces = -(-args.counters // args.event_names)
        return f"{args.counters:,} counters in {spaces:,} namespaces"
    if scenario == "goals":
        namespace = long_name("ns", 0)
        _event(engine, namespace, long_name("event", 0))
        for g in range(args.goals):
            engine.apply(GoalRecord(namespace, long_name("goal", g)))
        return f"1 namespace of {args.goals:,} goals"
    if scenario == "feature_specs":
        return _specs(engine, args.feature_specs)
    if scenario == "all":
        # Every namespace exists (one counter each); the rest of the counters fill whole
        # namespaces; every namespace holds its full count of goals; every spec.
        spare = args.counters - args.namespaces
        for n in range(args.namespaces):
            namespace = long_name("ns", n)
            names = 1 + min(max(spare, 0), args.event_names - 1)
            spare -= names - 1
            for e in range(names):
                _event(engine, namespace, long_name("event", e))
            for g in range(args.goals):
                engine.apply(GoalRecord(namespace, long_name("goal", g)))
        specs = _specs(engine, args.feature_specs)
        return (
            f"{args.namespaces:,} namespaces, {engine.counter_count:,} counters, "
            f"{args.goals:,} goals in each namespace, {specs}"
        )
    return "nothing"


def _event(engine: Engine, namespace: str, name: str) -> None:
    engine.apply(EventRecord(namespace, name, USER, 2024, 10))


def _specs(engine: Engine, count: int) -> str:
    """``count`` specs as large as the fixed limit on the set allows, evenly."""
    if count == 0:
        return "no specs"
    per_spec = FEATURE_SPEC_BYTES.default // count
    values: list[object] = []
    spec = FeatureSpec(long_name("spec", 0))
    # Numbers in an "in" condition until one spec takes its share of the set's bytes.
    while spec_message_size(spec) < per_spec - 16:
        values.append(float(len(values)))
        spec = FeatureSpec(spec.name, user=(UserCondition("n", "in", list(values)),))
    total = 0
    for s in range(count):
        condition = (UserCondition("n", "in", list(values)),) if values else ()
        spec = FeatureSpec(long_name("spec", s), user=condition)
        total += spec_message_size(spec)
        engine.apply(FeatureSpecRecord(spec.name, spec))
    return f"{count:,} feature specs ({total / MB:.2f} MiB)"


# -- one scenario, in its own process -------------------------------------------------------


class PeakRss:
    """The highest RSS seen while running, sampled every 10 ms from a thread."""

    def __init__(self) -> None:
        self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


async def run_scenario(scenario: str, args: argparse.Namespace, data_dir: Path) -> dict:
    settings = Settings(
        grpc_host="127.0.0.1",
        grpc_port=0,
        api_auth=False,
        data_dir=data_dir,
        wal_fsync=FsyncPolicy.ALWAYS,
        snapshot_interval_s=3600,  # only the snapshot measured here
        max_namespaces=args.namespaces,
        max_event_names=args.event_names,
        max_counters=args.counters,
        max_goals=args.goals,
        max_feature_specs=args.feature_specs,
    )
    server = await start_server(settings)
    await server.wait_ready()
    gc.collect()
    empty_rss = resident_bytes()
    started = time.perf_counter()
    described = fill(server.engine, scenario, args)
    fill_seconds = time.perf_counter() - started
    # One event through the log (a name every scenario has, or room for it), so the
    # snapshot covers a logged record as in service.
    await server.ingestor.accept([Event(long_name("event", 0), "u", long_name("ns", 0))])
    gc.collect()
    filled_rss = resident_bytes()
    with PeakRss() as peak:
        started = time.perf_counter()
        await server.persistence.snapshot()
        snapshot_seconds = time.perf_counter() - started
    snapshot_bytes = sum(path.stat().st_size for path in (data_dir / "objects").rglob("*.snapshot"))
    counters = server.engine.counter_count
    await server.stop(grace=None)
    del server
    gc.collect()
    started = time.perf_counter()
    again = await start_server(settings)
    await again.wait_ready()
    restore_seconds = time.perf_counter() - started
    assert again.engine.counter_count == counters, "the restore lost counters"
    await again.stop(grace=None)
    return {
        "scenario": scenario,
        "state": described,
        "counters": counters,
        "fill_seconds": fill_seconds,
        "empty_rss": empty_rss,
        "rss": filled_rss,
        "snapshot_seconds": snapshot_seconds,
        "snapshot_bytes": snapshot_bytes,
        "snapshot_peak_rss": peak.peak,
        "restore_seconds": restore_seconds,
    }


def in_subprocess(scenario: str, argv: list[str]) -> dict:
    """Run one scenario in a fresh interpreter; its figures, as JSON on its last line."""
    result = subprocess.run(
        [sys.executable, __file__, *argv, "--scenario", scenario],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"scenario {scenario} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- a counter with real users -------------------------------------------------------------


def counter_sizes(sizes: list[int]) -> list[tuple[int, int]]:
    """(users, filter bytes) of one counter of the default rule as users arrive."""
    bloom = DEFAULT_RULE.new_filter()
    out = [(0, bloom.nbytes)]
    users = 0
    for size in sizes:
        while users < size:
            bloom.add_new(hash_key(f"user-{users}"))
            users += 1
        out.append((users, bloom.nbytes))
    return out


# -- the check on the ingestion path ----------------------------------------------------------


def check_cost(args: argparse.Namespace) -> None:
    """ns per event of ``admit`` (known names; new names), ``Engine.apply``, ``accept``."""
    workload = make_plain_workload(args.events, 50_000, 20, seed=20240515)
    chunks = batches(workload.records, BATCH)
    loaded = Engine()
    for record in workload.records:
        loaded.apply(record)
    fresh_names = [
        [r._replace(event_name=f"new_{i:07d}") for i, r in enumerate(chunk, start=n * BATCH)]
        for n, chunk in enumerate(chunks)
    ]
    unlimited = StateLimits(10**9, 10**9, 10**9, 10**9, 10**9)

    def admit_known() -> None:
        limits = GrowthLimits(loaded, unlimited)
        for chunk in chunks:
            limits.admit(chunk)

    def admit_new() -> None:
        limits = GrowthLimits(loaded, unlimited)
        for chunk in fresh_names:
            limits.release(limits.admit(chunk))

    def apply() -> None:
        for record in workload.records:
            loaded.apply(record)  # the state is all there: the Bloom work of repeat events

    accept = ours_accept(lambda: loaded, workload.events)
    passes = {
        "admit, known names": admit_known,
        "admit, 100 new names per batch": admit_new,
        "Engine.apply": apply,
        "Ingestor.accept (no log)": lambda: None,
    }
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for round_number in range(args.rounds):
        order = list(passes)
        order = order[round_number % len(order) :] + order[: round_number % len(order)]
        for name in order:
            run = accept() if name.startswith("Ingestor") else passes[name]
            seconds[name].append(timed(run))
    n = len(workload.records)
    accept_ns = median(seconds["Ingestor.accept (no log)"]) * 1e9 / n
    print(
        f"\nthe check on the ingestion path: {n:,} events in batches of {BATCH}, "
        f"{args.rounds} interleaved rounds"
    )
    print("| pass | ns per event | spread | share of Ingestor.accept |")
    print("|---|---|---|---|")
    for name, xs in seconds.items():
        ns = median(xs) * 1e9 / n
        print(f"| {name} | {ns:,.0f} | {spread(xs)} | {ns / accept_ns:.1%} |")


# -- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of each limit")
    for limit in (NAMESPACES, EVENT_NAMES, COUNTERS, GOALS, FEATURE_SPECS):
        flag = "--" + limit.name.replace("_", "-")
        add_size(parser, flag, limit.default, limit.default // 10, f"the {limit.noun} limit")
    add_size(parser, "--events", 200_000, 20_000, "events in the check's cost")
    add_size(parser, "--rounds", 5, 2, "interleaved rounds of the check's cost")
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help="comma list of scenarios to run (all)"
    )
    args = parse(parser, argv)
    if args.scenario:
        with tempfile.TemporaryDirectory(prefix="kimball-bench-limits-") as data_dir:
            figures = asyncio.run(run_scenario(args.scenario, args, Path(data_dir)))
        print(json.dumps(figures))
        return

    print_header("bench_limits.py")
    limits = (
        f"namespaces {args.namespaces:,}, event names per namespace {args.event_names:,}, "
        f"counters {args.counters:,}, goals per namespace {args.goals:,}, "
        f"feature specs {args.feature_specs:,}"
    )
    print(f"limits: {limits}; names of {MAX_NAME_LENGTH} characters; one user per counter\n")
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    forwarded += [
        f"--namespaces={args.namespaces}",
        f"--event-names={args.event_names}",
        f"--counters={args.counters}",
        f"--goals={args.goals}",
        f"--feature-specs={args.feature_specs}",
    ]
    results = []
    print(
        "| scenario | state | RSS | over empty | snapshot() | snapshot size | "
        "peak RSS in snapshot() | restore |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scenario in args.only.split(","):
        r = in_subprocess(scenario, forwarded)
        results.append(r)
        print(
            f"| {scenario} | {r['state']} | {r['rss'] / MB:,.0f} MiB | "
            f"{(r['rss'] - r['empty_rss']) / MB:,.0f} MiB | {r['snapshot_seconds']:.2f} s | "
            f"{r['snapshot_bytes'] / MB:,.1f} MiB | {r['snapshot_peak_rss'] / MB:,.0f} MiB | "
            f"{r['restore_seconds']:.2f} s |",
            flush=True,
        )
    by_name = {r["scenario"]: r for r in results}
    print()
    for scenario, per in (
        ("namespaces", "namespace"),
        ("event_names", "counter"),
        ("counters", "counter"),
        ("goals", "goal"),
        ("feature_specs", "spec"),
    ):
        r = by_name.get(scenario)
        if r is None:
            continue
        count = {
            "namespaces": args.namespaces,
            "event_names": args.event_names,
            "counters": args.counters,
            "goals": args.goals,
            "feature_specs": args.feature_specs,
        }[scenario]
        grown = r["rss"] - r["empty_rss"]
        seconds = (
            r["snapshot_seconds"]
            - by_name.get("empty", {"snapshot_seconds": 0.0})["snapshot_seconds"]
        )
        print(
            f"{scenario}: {grown / count:,.0f} bytes of RSS per {per}, "
            f"{seconds / count * 1e6:,.1f} us of snapshot() per {per} (over the empty one's)"
        )
    print("\none counter of the default rule (bloom_scalable from 16 users at p = 0.001):")
    print("| users | filter bytes |")
    print("|---|---|")
    for users, nbytes in counter_sizes([16, 1_000, 10_000, 100_000, 1_000_000]):
        print(f"| {users:,} | {nbytes:,} |")
    check_cost(args)
    everything = by_name.get("all")
    if everything is not None:
        peak = max(everything["rss"], everything["snapshot_peak_rss"])
        fits = peak < LIMIT_BYTES
        fast = everything["snapshot_seconds"] < LIMIT_SECONDS
        print(
            f"\nevery limit at once: peak RSS {peak / MB:,.0f} MiB, snapshot "
            f"{everything['snapshot_seconds']:.2f} s, restore {everything['restore_seconds']:.2f} s"
        )
        verdict(
            "every limit at once, peak RSS",
            f"{peak / MB:,.0f} MiB",
            fits,
            f"< {LIMIT_BYTES / MB:,.0f} MiB",
            None,
        )
        verdict(
            "every limit at once, snapshot",
            f"{everything['snapshot_seconds']:.2f} s",
            fast,
            f"< {LIMIT_SECONDS:g} s",
            None,
        )


if __name__ == "__main__":
    main()

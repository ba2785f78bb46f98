"""Durability benchmark: write-ahead log acknowledgements, snapshots and log replay, in-process.

Run from the repository root:

    .venv/bin/python bench/bench_storage.py            # defaults, about 2 minutes
    .venv/bin/python bench/bench_storage.py --quick    # a smoke run, about 15 s
    .venv/bin/python bench/bench_storage.py --grpc     # adds (4), kimball serve: ~45 s more

What it measures, in one run (medians of interleaved rounds, with the min/max spread):

(1) Acknowledged events/s: ``--clients`` concurrent writers (coroutines on one event loop),
    each awaiting ``Ingestor.accept`` on batches of 100 events and of 1 event, for
    ``--seconds`` per measurement, into an ``Ingestor`` whose ``WriteAheadLog`` is in a fresh
    directory under ``--dir`` (default: the system's temporary directory). Side by side, in
    rotating order: fsync ``always`` with group commit (the default) and without it (each
    append written and synced alone), ``interval`` (200 ms) and ``never`` as references,
    and no log at all (the ceiling). Also fsyncs per acknowledged batch and the median and
    99th percentile time to acknowledge a batch. The engine is loaded with the whole
    workload first, so every measurement does the same Bloom work (repeat users: the state
    does not change) whatever it reaches.
(2) Snapshots of 10,000 counters (one namespace; and 100 namespaces of 100) and of 20
    counters holding 50,000 users: ``Engine.freeze`` (holds the event loop), the encoding
    (``state_in_steps``, each step between requests in the server: all of them, and the
    longest), ``SnapshotStore.write`` into a ``LocalBlobStore`` (fsync included),
    ``load_newest(decode_state)``, the object size; then ``Persistence.snapshot()`` on a
    running loop while a client ingests batches of 100 on the same loop: the longest wait
    between two acknowledgements and the share of the ingestion rate kept (what ingestion
    feels).
(3) Replay: ``--replay-events`` events written to a log in batches of 100, then
    ``Persistence.restore()`` into a fresh engine (no snapshot: open and check the log,
    read, decode, apply), against each step alone (``open``, ``entries``,
    ``decode_records``, ``Engine.apply``) and the in-process ingestion of the same events
    (``Ingestor.accept`` x100 without a log).
(4) Optional (``--grpc``): unary ``TrackEvents`` (100 events, and 1 event) with many calls
    in flight into ``kimball serve --wal-fsync always`` and ``--wal-fsync never``.

The in-process parts run pinned to ``--server-cpu`` (the fsync worker threads too). Disk
figures depend on the machine's storage (a virtual disk here): the run prints the log
directory's device and a raw fsync latency. Files just written are read back from the page
cache. Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import (
    measure,
    median,
    percentile,
    row,
    spread,
    table_head,
    timed,
    verdict,
    with_range,
)
from load import ours_accept, run_track_events
from run_options import (
    add_parts,
    add_server_options,
    add_size,
    new_parser,
    parse,
    pinned,
    start_run,
)
from servers import ServerProcess, kimball_argv
from workload import (
    BATCH,
    GOAL_NAMES,
    batches,
    in_namespace,
    make_plain_workload,
    prepare,
    track_events_requests,
    user_ids,
)

from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.codec.state_codec import (
    decode_records,
    decode_state,
    encode_records,
    state_in_steps,
)
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event
from kimball_grpc.core.records import Record
from kimball_grpc.metrics import Metrics
from kimball_grpc.persistence import Persistence
from kimball_grpc.streaming.subscriptions import SubscriptionHub
from storage.local_store import LocalBlobStore
from storage.snapshots import SnapshotStore
from storage.wal import FsyncPolicy, LogEntry, WriteAheadLog

FSYNC_INTERVAL = 0.2  # seconds, the server's default (KIMBALL_WAL_FSYNC_INTERVAL_MS=200)
SNAPSHOT_BASELINE = 0.25  # seconds of ingestion alone before each snapshot under load


# -- where the log goes -----------------------------------------------------------------


def mount_of(path: str) -> str:
    """'device (type, mounted at X)' of the filesystem holding ``path`` (from /proc/mounts)."""
    real = os.path.realpath(path)
    best = ("?", "?", "")
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            device, point, kind = line.split()[:3]
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[2]):
                best = (device, kind, point)
    return f"{best[0]} ({best[1]}, mounted at {best[2] or '?'})"


def raw_fsync_ms(directory: str, n: int = 100) -> tuple[float, float]:
    """Median and 90th percentile of ``fsync`` after a 4 KB append, in ms: the disk alone."""
    times = []
    with tempfile.TemporaryDirectory(dir=directory, prefix="kimball-fsync-") as tmp:
        fd = os.open(os.path.join(tmp, "probe"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(n):
                os.write(fd, b"x" * 4096)
                start = time.perf_counter()
                os.fsync(fd)
                times.append(time.perf_counter() - start)
        finally:
            os.close(fd)
    return median(times) * 1e3, percentile(times, 0.9) * 1e3


def paired(a: Sequence[float], b: Sequence[float]) -> str:
    """The per-round ratios a/b: their median and range."""
    return with_range([x / y for x, y in zip(a, b, strict=True)])


# -- (1) acknowledged events/s ----------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    policy: FsyncPolicy | None  # None: an Ingestor without a log
    group_commit: bool = True


NO_LOG = Mode("no log (ceiling)", None)
NEVER = Mode("fsync never", FsyncPolicy.NEVER)
INTERVAL = Mode(f"fsync interval {FSYNC_INTERVAL * 1000:g} ms", FsyncPolicy.INTERVAL)
GROUP = Mode("fsync always, group commit", FsyncPolicy.ALWAYS)
ALONE = Mode("fsync always, no group commit", FsyncPolicy.ALWAYS, group_commit=False)
MODES = [GROUP, ALONE, INTERVAL, NEVER, NO_LOG]


@dataclass
class Acks:
    """One measurement: acknowledged events and batches, fsyncs, per-batch latencies."""

    seconds: float
    events: int
    batches: int
    syncs: int
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def _drive(ingestor: Ingestor, batches: list[list[Event]], clients: int, seconds: float):
    """``clients`` writers awaiting ``accept`` on the next batch until the deadline."""
    next_batch = random.randrange(len(batches))  # start anywhere: rounds differ a little
    events = acks = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal next_batch, events, acks
        accept, clock = ingestor.accept, time.perf_counter
        while clock() < deadline:
            batch = batches[next_batch % len(batches)]
            next_batch += 1
            start = clock()
            accepted = await accept(batch)  # not `events += await ...`: that loses updates
            latencies.append(clock() - start)
            events += accepted
            acks += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return events, acks, latencies


def run_acks(
    mode: Mode, engine: Engine, batches: list[list[Event]], clients: int, seconds: float, root: str
) -> Acks:
    """One measurement of ``mode``: a fresh log directory, the shared (loaded) engine."""

    async def go() -> Acks:
        with tempfile.TemporaryDirectory(dir=root, prefix="kimball-wal-") as tmp:
            wal = None
            if mode.policy is not None:
                wal = WriteAheadLog(
                    Path(tmp),
                    mode.policy,
                    fsync_interval=FSYNC_INTERVAL,
                    group_commit=mode.group_commit,
                )
                wal.open()
            ingestor = Ingestor(engine, SubscriptionHub(), log=wal)
            start = time.perf_counter()
            events, acks, latencies = await _drive(ingestor, batches, clients, seconds)
            elapsed = time.perf_counter() - start
            syncs = wal.syncs if wal else 0
            if wal is not None:
                await wal.close()
            return Acks(elapsed, events, acks, syncs, latencies)

    return asyncio.run(go())


def bench_acks(args: argparse.Namespace, root: str) -> None:
    w = make_plain_workload(args.ack_events, args.users, args.names, args.seed)
    engine = Engine()
    for record in w.records:  # every later event is a repeat: the state stays the same
        engine.apply(record)
    shapes = {size: batches(w.events, size) for size in (BATCH, 1)}
    print(
        f"workload: {len(w.events):,} events ({w.distinct_users:,} users, {args.names} names), "
        f"loaded into the engine first; {args.seconds:g} s per measurement, {args.rounds} "
        f"interleaved rounds; clients {', '.join(map(str, args.clients))}\n"
    )
    results: dict[tuple[int, int, str], list[Acks]] = {}
    cells = [(size, clients) for size in shapes for clients in args.clients]
    for mode in MODES:  # warm-up: imports, the executor's threads, the disk
        run_acks(mode, engine, shapes[BATCH], 4, 0.05, root)
    for r in range(args.rounds):
        for size, clients in cells:
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                sample = run_acks(mode, engine, shapes[size], clients, args.seconds, root)
                results.setdefault((size, clients, mode.name), []).append(sample)

    for size in shapes:
        print(f"### batches of {size} event{'s' if size > 1 else ''}\n")
        print(
            "| clients | log | events/s | spread | fsyncs per ack | ack p50 | ack p99 "
            "| vs no log (per round) |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for clients in args.clients:
            ceiling = [s.rate for s in results[(size, clients, NO_LOG.name)]]
            for mode in MODES:
                samples = results[(size, clients, mode.name)]
                rates = [s.rate for s in samples]
                per_ack = median([s.syncs / max(1, s.batches) for s in samples])
                p50 = median([percentile(s.latencies, 0.5) for s in samples]) * 1e3
                p99 = median([percentile(s.latencies, 0.99) for s in samples]) * 1e3
                syncs = f"{per_ack:.3f}" if mode.policy is not None else "-"
                versus = paired(rates, ceiling) if mode is not NO_LOG else "-"
                print(
                    f"| {clients} | {mode.name} | {median(rates):,.0f} | {spread(rates)} "
                    f"| {syncs} | {p50:.2f} ms | {p99:.2f} ms | {versus} |"
                )
        print()

    print("### fsync always: group commit against without (same run)\n")
    print("Ratios are medians of per-round ratios (range in brackets); rates are medians.\n")
    print(
        "| batch | clients | group commit events/s | without events/s | group / without "
        "| acks per fsync (group) | group / never | group / no log |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, clients in cells:
        rates = {mode.name: [s.rate for s in results[(size, clients, mode.name)]] for mode in MODES}
        group = results[(size, clients, GROUP.name)]
        per_sync = median([s.batches / max(1, s.syncs) for s in group])
        print(
            f"| {size} | {clients} | {median(rates[GROUP.name]):,.0f} "
            f"| {median(rates[ALONE.name]):,.0f} "
            f"| **{paired(rates[GROUP.name], rates[ALONE.name])}** | {per_sync:.1f} "
            f"| {paired(rates[GROUP.name], rates[NEVER.name])} "
            f"| {paired(rates[GROUP.name], rates[NO_LOG.name])} |"
        )
    print()


# -- (2) snapshots ----------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    engine: Engine
    counters: int
    users: int


def counters_scenario(
    name: str, n_counters: int, namespaces: int, users_per_counter: int, seed: int
) -> Scenario:
    """``n_counters`` named counters spread over ``namespaces``, a few users in each."""
    rng = random.Random(seed)
    pool = user_ids(rng, max(1000, n_counters // 5))
    engine = Engine()
    for i in range(n_counters):
        namespace = f"ns-{i % namespaces:03d}" if namespaces > 1 else "bench"
        for user in rng.sample(pool, users_per_counter):
            engine.apply(prepare(Event(f"event_{i:05d}", user, namespace)))
    users = sum(ns.global_counter.count for ns in engine.namespace_objects())
    return Scenario(name, engine, count_counters(engine), users)


def users_scenario(name: str, n_events: int, n_users: int, n_names: int, seed: int) -> Scenario:
    w = make_plain_workload(n_events, n_users, n_names, seed, namespace="bench")
    engine = Engine()
    for record in w.records:
        engine.apply(record)
    return Scenario(name, engine, count_counters(engine), w.distinct_users)


def count_counters(engine: Engine) -> int:
    return sum(len(ns.counters()) for ns in engine.namespace_objects())


@dataclass
class SnapshotRound:
    freeze: float  # seconds: Engine.freeze, one event-loop pause
    encode: float  # every step of state_in_steps
    longest_step: float  # the longest of them: one event-loop pause
    store: float
    load: float
    size: int
    under_load: tuple[float, ...] = ()  # snapshot_under_load's figures


def snapshot_round(scenario: Scenario, blobs_root: Path, sequence: int) -> SnapshotRound:
    """freeze, encode (each step timed), store, load of one scenario, each timed alone."""
    store = SnapshotStore(LocalBlobStore(blobs_root))
    engine = scenario.engine
    gc.collect()  # as ``timed`` does; collections the encoding itself triggers are counted
    start = time.perf_counter()
    steps = state_in_steps(engine.freeze())
    frozen = time.perf_counter() - start
    pauses = []
    while True:
        start = time.perf_counter()
        try:
            next(steps)
        except StopIteration as done:
            state = b"".join(done.value)
            break
        finally:
            pauses.append(time.perf_counter() - start)
    engine.thaw()
    stored = timed(lambda: store.write(sequence, state))
    loaded = timed(lambda: store.load_newest(decode_state))
    return SnapshotRound(frozen, sum(pauses), max(pauses), stored, loaded, len(state))


@dataclass
class Load:
    """Ingestion running next to the snapshots: its own engine, loaded with its workload."""

    engine: Engine
    batches: list[list[Event]]


def make_load(events: int, users: int, names: int, seed: int) -> Load:
    w = make_plain_workload(events, users, names, seed, namespace="load")
    engine = Engine()
    for record in w.records:  # repeat users from here on: the load's work stays the same
        engine.apply(record)
    return Load(engine, batches(w.events, BATCH))


def snapshot_under_load(scenario: Scenario, load: Load, blobs_root: Path, wal_root: str):
    """``Persistence.snapshot()`` while one client ingests batches of 100 (no log) on the same
    loop: (snapshot seconds, longest gap between two acknowledgements during it, median gap
    before it, events/s during it, events/s before it). The gap is what a request feels."""

    async def go() -> tuple[float, float, float, float, float]:
        with tempfile.TemporaryDirectory(dir=wal_root, prefix="kimball-wal-") as tmp:
            wal = WriteAheadLog(Path(tmp), FsyncPolicy.NEVER)
            wal.open()
            engine = scenario.engine
            persistence = Persistence(
                engine, wal, SnapshotStore(LocalBlobStore(blobs_root)), Metrics(engine)
            )
            ingestor = Ingestor(load.engine, SubscriptionHub())
            acks: list[float] = []
            stop = False

            async def ingest() -> None:
                i = 0
                while not stop:
                    await ingestor.accept(load.batches[i % len(load.batches)])
                    acks.append(time.perf_counter())
                    i += 1
                    await asyncio.sleep(0)  # as a server does between requests

            gc.collect()
            task = asyncio.get_running_loop().create_task(ingest())
            await asyncio.sleep(SNAPSHOT_BASELINE)
            start = time.perf_counter()
            await persistence.snapshot()
            end = time.perf_counter()
            await asyncio.sleep(0.02)  # a few acknowledgements after it
            stop = True
            await task
            await wal.close()
        before = [t for t in acks if t <= start]
        during = [t for t in acks if start < t <= end]
        # The gaps that overlap the snapshot: from the last ack before it to the first after.
        edges = [before[-1], *during, next((t for t in acks if t > end), end)]
        gap = max(b - a for a, b in itertools.pairwise(edges))
        usual = median([b - a for a, b in itertools.pairwise(before)])
        rate_before = (len(before) - 1) * BATCH / (before[-1] - before[0])
        return end - start, gap, usual, len(during) * BATCH / (end - start), rate_before

    return asyncio.run(go())


def bench_snapshots(args: argparse.Namespace, root: str) -> None:
    n = args.counters
    t = time.perf_counter()
    scenarios = [
        counters_scenario(f"{n:,} counters, 1 namespace", n, 1, args.users_per_counter, 1),
        counters_scenario(f"{n:,} counters, 100 namespaces", n, 100, args.users_per_counter, 2),
        users_scenario(
            f"{args.names} counters, {args.snapshot_users:,} users",
            2 * args.snapshot_users,
            args.snapshot_users,
            args.names,
            3,
        ),
    ]
    load = make_load(10_000, 3_000, args.names, 4)
    print(f"(engines built in {time.perf_counter() - t:.1f} s, untimed)\n")
    rounds: dict[str, list[SnapshotRound]] = {s.name: [] for s in scenarios}
    with tempfile.TemporaryDirectory(dir=root, prefix="kimball-blobs-") as tmp:
        for r in range(args.snapshot_rounds):
            for s in scenarios[r % len(scenarios) :] + scenarios[: r % len(scenarios)]:
                blobs = Path(tmp) / s.name.replace(" ", "-").replace(",", "")
                sample = snapshot_round(s, blobs, r + 1)
                sample.under_load = snapshot_under_load(s, load, blobs, root)
                rounds[s.name].append(sample)

    print(
        "| engine | counters | users (sum of namespaces) | object | freeze (loop paused) "
        "| encode (in steps) | µs per counter | longest step (loop paused) | store | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in scenarios:
        rs = rounds[s.name]

        def ms(values: list[float]) -> str:
            return f"{median(values) * 1e3:,.1f} ms ({spread(values)})"

        print(
            f"| {s.name} | {s.counters:,} | {s.users:,} "
            f"| {median([x.size for x in rs]) / 1e6:.2f} MB "
            f"| {ms([x.freeze for x in rs])} | {ms([x.encode for x in rs])} "
            f"| {median([x.encode for x in rs]) / s.counters * 1e6:.1f} "
            f"| {ms([x.longest_step for x in rs])} | {ms([x.store for x in rs])} "
            f"| {ms([x.load for x in rs])} |"
        )
    print()
    print(
        f"`Persistence.snapshot()` while one client ingests batches of {BATCH} (no log, its own "
        "engine) on the same loop; a gap is the time between two acknowledgements. The encode "
        "runs in steps of up to 64 counters or 1 MiB between requests; the join and the store "
        "in worker threads.\n"
    )
    print(
        "| engine | snapshot() | longest gap during it | usual gap "
        "| ingestion during it | ingestion before it | during / before |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in scenarios:
        figures = list(zip(*(x.under_load for x in rounds[s.name]), strict=True))
        seconds, gap, usual, during, before = (median(f) for f in figures)
        print(
            f"| {s.name} | {seconds * 1e3:,.0f} ms ({spread(figures[0])}) "
            f"| {gap * 1e3:,.0f} ms ({spread(figures[1])}) "
            f"| {usual * 1e3:.1f} ms | {during:,.0f} ev/s | {before:,.0f} ev/s "
            f"| {median([d / b for d, b in zip(figures[3], figures[4], strict=True)]):.0%} |"
        )
    print()


# -- (3) replay -------------------------------------------------------------------------

TARGET_REPLAY = 200_000  # events/s a restore replays from the log


def write_log(directory: Path, records: list[Record]) -> float:
    """The records into a log in entries of ``BATCH`` (fsync never, then one at close)."""

    async def go() -> None:
        wal = WriteAheadLog(directory, FsyncPolicy.NEVER)
        wal.open()
        for chunk in batches(records, BATCH):
            await wal.append(encode_records(chunk), len(chunk), lambda sequence: None)
        await wal.close()

    return timed(lambda: asyncio.run(go()))


def restore_pass(directory: Path, blobs_root: Path, expected: int) -> float:
    async def go() -> float:
        engine = Engine()
        wal = WriteAheadLog(directory, FsyncPolicy.NEVER)
        persistence = Persistence(
            engine, wal, SnapshotStore(LocalBlobStore(blobs_root)), Metrics(engine)
        )
        start = time.perf_counter()
        restored = await persistence.restore()
        seconds = time.perf_counter() - start
        await wal.close()
        if restored.replayed_records != expected:
            raise RuntimeError(f"replayed {restored.replayed_records} of {expected}")
        return seconds

    return asyncio.run(go())


def replay_round(log_dir: Path, blobs: Path, events: list[Event]) -> dict[str, float]:
    """Seconds of restore, then of each of its steps alone, then of ingesting the events."""
    n = len(events)
    times = {"restore": restore_pass(log_dir, blobs, n)}
    reader = WriteAheadLog(log_dir, FsyncPolicy.NEVER)
    times["open"] = timed(reader.open)
    entries: list[LogEntry] = []
    times["entries"] = timed(lambda: entries.extend(reader.entries()))
    asyncio.run(reader.close())

    def decode() -> None:  # one entry's records at a time, as restore does
        for entry in entries:
            decode_records(entry.payload)

    times["decode"] = timed(decode)
    # Fresh records for the apply (untimed): a key hash caches derived words.
    records: list[Record] = [r for entry in entries for r in decode_records(entry.payload)]
    engine = Engine()

    def apply() -> None:
        for record in records:
            engine.apply(record)

    times["apply"] = timed(apply)
    times["accept"] = timed(ours_accept(Engine, events)())
    return times


def bench_replay(args: argparse.Namespace, root: str) -> None:
    w = make_plain_workload(args.replay_events, args.replay_users, args.names, args.seed + 7)
    n = len(w.records)
    with tempfile.TemporaryDirectory(dir=root, prefix="kimball-replay-") as tmp:
        log_dir, blobs = Path(tmp) / "wal", Path(tmp) / "objects"
        written = write_log(log_dir, w.records)
        log_bytes = sum(p.stat().st_size for p in log_dir.iterdir())
        print(
            f"log: {n:,} events ({w.distinct_users:,} users, {args.names} names, new user "
            f"{w.new_user_share:.0%} of events) in {n // BATCH:,} entries of {BATCH}, "
            f"{log_bytes / 1e6:.1f} MB ({log_bytes / n:.1f} bytes per event), written in "
            f"{written:.2f} s (fsync never; {n / written:,.0f} events/s); no snapshot\n"
        )
        rounds = [replay_round(log_dir, blobs, w.events) for _ in range(args.rounds)]

    def rates(key: str) -> list[float]:
        return [n / r[key] for r in rounds]

    rows = [
        ("restore", "`Persistence.restore()`: open + read + decode + apply"),
        ("open", "`WriteAheadLog.open()` alone (reads and checks every entry)"),
        ("entries", "`entries()` alone (reads the segments again)"),
        ("decode", "`decode_records` alone"),
        ("apply", "`Engine.apply` alone (decoded records)"),
        ("accept", f"ingestion of the same events: `Ingestor.accept` x{BATCH}, no log"),
    ]
    restore = [r["restore"] for r in rounds]
    print("| step | events/s | µs per event | spread | seconds / restore's (per round) |")
    print("|---|---:|---:|---:|---:|")
    for key, label in rows:
        rate = median(rates(key))
        share = paired([r[key] for r in rounds], restore) if key != "restore" else "-"
        print(f"| {label} | {rate:,.0f} | {1e6 / rate:.2f} | {spread(rates(key))} | {share} |")
    print()
    rate = median(rates("restore"))
    # In this process, one thread: the time per event is its CPU per event.
    verdict(
        "replay, Persistence.restore(), no snapshot",
        f"{rate:,.0f} ev/s",
        rate >= TARGET_REPLAY,
        f">= {TARGET_REPLAY:,} ev/s",
        1e6 / rate,
    )


# -- (4) optional: over gRPC ------------------------------------------------------------


def bench_grpc_fsync(args: argparse.Namespace, server_cpu: int | None) -> None:
    w = make_plain_workload(args.grpc_events, args.users, args.names, args.seed)
    shapes = [(BATCH, args.grpc_inflight_batch), (1, args.grpc_inflight_single)]
    single_events = int(args.grpc_seconds * 10_000)  # unary calls of 1 event: ~2,000/s here
    with tempfile.TemporaryDirectory(prefix="kimball-bench-") as tmp:
        servers = {}
        for policy in ("always", "never"):
            s = ServerProcess(f"kimball serve --wal-fsync {policy}", [], server_cpu, tmp)
            s.argv = kimball_argv(s, os.path.join(tmp, f"data-{policy}"), "--wal-fsync", policy)
            servers[policy] = s
        results: dict[str, list] = {}
        try:
            for s in servers.values():
                s.start()
            for s in servers.values():
                s.wait_ready()
                warm = track_events_requests(in_namespace(w.events[:2000], "warm-up"), BATCH)
                run_track_events(s.port, warm, 4, 5.0)
            for r in range(args.rounds):
                order = list(servers.items())
                order = order if r % 2 == 0 else order[::-1]
                for size, inflight in shapes:
                    for policy, s in order:
                        events = w.events if size > 1 else w.events[:single_events]
                        ns = f"{policy}-{size}-{r}"
                        messages = track_events_requests(in_namespace(events, ns, GOAL_NAMES), size)
                        sample = measure(
                            s,
                            lambda s=s, m=messages, k=inflight: run_track_events(
                                s.port, m, k, args.grpc_seconds
                            ),
                        )
                        results.setdefault(f"{policy}-{size}", []).append(sample)
        finally:
            for s in servers.values():
                s.stop()
    print(
        f"workload: {len(w.events):,} events per round and server, each round in its own "
        f"namespace; {args.grpc_seconds:g} s per measurement (or until the events run out)\n"
    )
    table_head()
    for size, inflight in shapes:
        never = row(
            f"TrackEvents x{size}, {inflight} in flight, fsync never",
            results[f"never-{size}"],
            "ev",
            "event",
            None,
        )
        row(
            f"TrackEvents x{size}, {inflight} in flight, fsync always",
            results[f"always-{size}"],
            "ev",
            "event",
            never,
        )
    print("\n(ratio: fsync always against fsync never)\n")


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(25_000, 5_000), rounds=(3, 2))
    add_server_options(parser, servers="the servers' CPU, and of the in-process parts")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where logs and blobs go")
    parts = {"1": "(1) acknowledged events/s", "2": "(2) snapshots", "3": "(3) replay"}
    acks, snapshots, replay = add_parts(parser, parts)
    add_size(acks, "--ack-events", 50_000, 10_000, "events")
    add_size(acks, "--clients", "1,4,16,64", "1,16", "concurrent writers, a list")
    add_size(acks, "--seconds", 0.35, 0.15, "seconds per measurement")
    add_size(snapshots, "--counters", 10_000, 2_000, "counters")
    snapshots.add_argument("--users-per-counter", type=int, default=3, help="users per counter")
    add_size(snapshots, "--snapshot-users", 50_000, 10_000, "users, 20 names")
    add_size(snapshots, "--snapshot-rounds", 5, 2, "rounds")
    add_size(replay, "--replay-events", 200_000, 20_000, "events in the log")
    add_size(replay, "--replay-users", 50_000, 5_000, "users")
    grpc = parser.add_argument_group("(4) over gRPC, optional")
    grpc.add_argument("--grpc", action="store_true", help="run it (~45 s more)")
    add_size(grpc, "--grpc-events", 100_000, 20_000, "events per round")
    add_size(grpc, "--grpc-seconds", 3.0, 1.0, "seconds per measurement")
    grpc.add_argument("--grpc-inflight-batch", type=int, default=16, help="x100 calls in flight")
    grpc.add_argument("--grpc-inflight-single", type=int, default=64, help="x1 calls in flight")
    args = parse(parser, argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    random.seed(args.seed)

    server_cpu = start_run(args, "bench_storage", "storage")
    fsync_p50, fsync_p90 = raw_fsync_ms(args.dir)
    print(
        f"logs and snapshots under {os.path.realpath(args.dir)} on {mount_of(args.dir)}; "
        f"raw fsync after a 4 KB append: {fsync_p50:.2f} ms median, {fsync_p90:.2f} ms p90"
    )
    print(f"in-process parts pinned to CPU {server_cpu}\n" if server_cpu is not None else "")
    started = time.perf_counter()

    with pinned(server_cpu):
        if "1" not in args.skip:
            print("## (1) acknowledged events/s, concurrent writers, in-process\n")
            bench_acks(args, args.dir)
        if "2" not in args.skip:
            print(f"## (2) snapshot write and load, {args.counters:,} counters\n")
            bench_snapshots(args, args.dir)
        if "3" not in args.skip:
            print("## (3) write-ahead log replay, no snapshot\n")
            bench_replay(args, args.dir)
    if args.grpc:
        print("## (4) over gRPC: kimball serve, fsync always against never\n")
        bench_grpc_fsync(args, server_cpu)

    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Core engine benchmark, in-process: our cost per event against an rbloom floor, and memory.

Run from the repository root:

    .venv/bin/python bench/bench_core.py            # defaults, about 1.5-2 minutes
    .venv/bin/python bench/bench_core.py --quick    # smaller sizes, a smoke run
    .venv/bin/python bench/bench_core.py --profile  # also cProfile one pass of workload (a)

Workloads (all data generated from a seeded RNG before any timed region):

(a) plain events: N events over U users and 20 event names, users and names drawn with
    skewed (Zipf-like) weights so that repeats happen as in real traffic;
(b) goal events in a namespace with 100 named events already populated;
(c) ``Engine.predict_for_user`` in a namespace with 1,000 named events.

The floor is rbloom (a Rust Bloom filter) doing the same Bloom operations the engine does
for the same events (same global/named/weekly logic), fed a stable 64-bit hash of the key
(``mmh3.hash64``), as persistence needs; rbloom's built-in hash is salted per process and
cannot be persisted. Its filters are sized for the final number of distinct users of each
counter at the default error rate. A stricter floor hashes each key once per event and gives
rbloom the integer (``hash_func=int``); it is shown for information.

Ours and the floor run interleaved, ``--rounds`` times; medians are reported. Timing is
only printed, never asserted.
"""

from __future__ import annotations

import copy
import cProfile
import gc
import io
import math
import os
import pstats
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mmh3

# The shared bench modules sit next to this script (the script's folder is on sys.path).
from figures import median, spread, timed
from load import ours_accept
from rbloom import Bloom
from run_options import add_parts, add_size, new_parser, parse, print_header
from workload import BATCH, Workload, make_plain_workload, prepare, user_ids, zipf_weights

from kimball_grpc.core import bloom as kbloom
from kimball_grpc.core.bloom import hash_key, optimal_bits
from kimball_grpc.core.counter_config import (
    DEFAULT_RULE,
    CounterConfig,
    CounterRule,
    DateCohort,
    FilterType,
)
from kimball_grpc.core.counters import Counter, CounterKind
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, prepare_goal
from kimball_grpc.core.records import EventRecord

TARGET_FLOOR_RATIO = 3.0  # our ns/event at most 3x the floor's
TARGET_MEMORY_RATIO = 2.0  # filter bytes at most 2x the optimal Bloom size
ERROR_PROBABILITY = DEFAULT_RULE.error_probability


def stable_hash(key: str) -> int:
    """The floor's hash: stable across processes (persistable), fits rbloom's int128 range."""
    return mmh3.hash64(key, signed=False)[0]


# -- timing -------------------------------------------------------------------


def interleave(runs: dict[str, Callable[[], Callable[[], object]]], rounds: int) -> dict:
    """Run each (setup -> timed pass) once per round, rotating the order; seconds per pass."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name]()))
    return times


# -- ours ---------------------------------------------------------------------


def ours_apply(engine_factory: Callable[[], Engine], events: list[Event]):
    """A timed pass of Engine.apply_event over records prepared (hashed) before the clock.

    Records are prepared afresh for every pass: a key hash may cache derived words, and a
    record reused from an earlier pass would carry them in for free.
    """

    def setup():
        engine = engine_factory()
        apply = engine.apply_event
        records = [prepare(e) for e in events]

        def run():
            for record in records:
                apply(record)

        return run

    return setup


# -- the floor: rbloom, same operations ---------------------------------------


def rbloom_filter(capacity: int, hash_func: Callable) -> Bloom:
    # Sized like our counters: for the users it ends up holding, at our error rate.
    return Bloom(max(16, capacity), ERROR_PROBABILITY, hash_func)


def floor_plain(w: Workload, *, weekly: bool, strict: bool):
    """rbloom doing what apply_event does: global test(+add), named and weekly test-and-add.

    A user new to the namespace is added to every counter without a test (as the engine does).
    ``strict``: hash once per event and give rbloom the integer; else rbloom hashes the key
    with ``stable_hash`` on every operation.
    """
    keys, names, weeks = w.keys, w.names, w.weeks
    week_sizes: dict[tuple[str, int, int], int] = {}
    if weekly:
        per_week: dict[tuple[str, int, int], set[str]] = {}
        for k, n, (y, wk) in zip(keys, names, weeks, strict=True):
            per_week.setdefault((n, y, wk), set()).add(k)
        week_sizes = {key: len(v) for key, v in per_week.items()}
    hash_func = int if strict else stable_hash

    def setup():
        g = rbloom_filter(w.distinct_users, hash_func)
        named = {n: rbloom_filter(c, hash_func) for n, c in w.distinct.items()}
        weekly_filters = {key: rbloom_filter(c, hash_func) for key, c in week_sizes.items()}

        def run_plain():
            for key, name in zip(keys, names, strict=True):
                if strict:
                    key = stable_hash(key)
                b = named[name]
                if key not in g:
                    g.add(key)
                    b.add(key)
                elif key not in b:
                    b.add(key)

        def run_weekly():
            for key, name, (y, wk) in zip(keys, names, weeks, strict=True):
                if strict:
                    key = stable_hash(key)
                b = named[name]
                c = weekly_filters[(name, y, wk)]
                if key not in g:
                    g.add(key)
                    b.add(key)
                    c.add(key)
                else:
                    if key not in b:
                        b.add(key)
                    if key not in c:
                        c.add(key)

        return run_weekly if weekly else run_plain

    return setup


# -- (a) plain events ---------------------------------------------------------


def weekly_config() -> CounterConfig:
    return CounterConfig(
        [CounterRule(".*", FilterType.SCALABLE, 16, ERROR_PROBABILITY, DateCohort.WEEKLY)]
    )


def bench_plain(w: Workload, rounds: int, *, weekly: bool) -> dict[str, float]:
    factory = (lambda: Engine(weekly_config())) if weekly else Engine
    runs = {
        "ours: Engine.apply_event": ours_apply(factory, w.events),
        "floor: rbloom, stable hash per op": floor_plain(w, weekly=weekly, strict=False),
        f"ours: Ingestor.accept x{BATCH}": ours_accept(factory, w.events),
        "floor, strict: hash once per event": floor_plain(w, weekly=weekly, strict=True),
    }
    times = interleave(runs, rounds)
    n = len(w.records)
    return print_rates(times, n, "event")


def print_rates(times: dict[str, list[float]], n: int, unit: str) -> dict[str, float]:
    per = {name: median(ts) / n * 1e9 for name, ts in times.items()}
    floor = next(v for k, v in per.items() if k.startswith("floor:"))
    print(f"| path | ns/{unit} | {unit}s/s | spread | x floor |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        ns = per[name]
        print(f"| {name} | {ns:,.0f} | {1e9 / ns:,.0f} | {spread(ts)} | {ns / floor:.2f} |")
    return per


def verdict(per: dict[str, float], label: str) -> None:
    """After a blank line, PASS or MISS for each of our paths against the floor."""
    print()
    floor = next(v for k, v in per.items() if k.startswith("floor:"))
    for name, ns in per.items():
        if not name.startswith("ours"):
            continue
        ratio = ns / floor
        mark = "PASS" if ratio <= TARGET_FLOOR_RATIO else "MISS"
        print(f"{mark}  {label}: {name} = {ratio:.1f}x floor (target <= {TARGET_FLOOR_RATIO:g}x)")


# -- (b) goal events ----------------------------------------------------------


@dataclass
class Populated:
    """A namespace populated with named events, as engine state and as the floor's filters."""

    engine: Engine
    namespace: str
    users: list[str]
    membership: dict[str, set[str]]  # event name -> users (to size and fill the floor)
    goals: list[str]


def populate(
    n_names: int, n_users: int, events_per_user: int, goals: Sequence[str], seed: int
) -> Populated:
    """A namespace of ``n_names`` named events and ``goals`` (untimed; says how long it took)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    namespace = "bench"
    users = user_ids(rng, n_users)
    names = [f"event_{i:04d}" for i in range(n_names)]
    weights = zipf_weights(n_names, 0.8)
    engine = Engine()
    for goal in goals:
        engine.apply_goal(prepare_goal(namespace, goal))
    membership: dict[str, set[str]] = {n: set() for n in names}
    for u in users:
        done = set(rng.choices(names, weights, k=rng.randint(1, 2 * events_per_user)))
        for name in sorted(done):
            engine.apply_event(prepare(Event(name, u, namespace)))
            membership[name].add(u)
    print(f"(populated in {time.perf_counter() - started:.1f} s, untimed)")
    return Populated(engine, namespace, users, membership, list(goals))


def floor_filters(p: Populated, hash_func: Callable) -> tuple[Bloom, dict[str, Bloom]]:
    g = rbloom_filter(len(p.users), hash_func)
    named = {}
    for name, members in p.membership.items():
        b = named[name] = rbloom_filter(len(members), hash_func)
        for u in members:
            b.add(stable_hash(u) if hash_func is int else u)
            g.add(stable_hash(u) if hash_func is int else u)
    return g, named


def bench_goals(p: Populated, n_events: int, rounds: int, seed: int) -> dict[str, float]:
    """Goal events from already-known users (and a few new ones) in the populated namespace."""
    rng = random.Random(seed)
    goal = p.goals[0]
    pool = p.users + user_ids(rng, max(1, len(p.users) // 20))  # 5% brand-new users
    keys = rng.choices(pool, zipf_weights(len(pool), 0.5), k=n_events)
    events = [Event(goal, k, p.namespace) for k in keys]
    print(
        f"{n_events:,} goal events, {len(set(keys)):,} distinct users, into a namespace with "
        f"{len(p.membership)} named events ({len(p.users):,} users, "
        f"{sum(len(m) for m in p.membership.values()):,} user-event pairs)"
    )
    goal_size = len(set(keys))

    def fresh_engine() -> Engine:
        return copy.deepcopy(p.engine)

    def floor(strict: bool):
        hash_func = int if strict else stable_hash
        g0, named0 = floor_filters(p, hash_func)
        goal0 = rbloom_filter(goal_size, hash_func)

        def setup():
            g = g0.copy()
            named = {n: b.copy() for n, b in named0.items()}
            goal_b = goal0.copy()
            items = list(named.items())

            def run():
                for key in keys:
                    if strict:
                        key = stable_hash(key)
                    if key not in g:
                        g.add(key)
                        goal_b.add(key)
                        continue
                    # the engine's prior events: a test in every other named counter
                    tuple(sorted(n for n, b in items if key in b))
                    if key not in goal_b:
                        goal_b.add(key)

            return run

        return setup

    runs = {
        "ours: Engine.apply_event": ours_apply(fresh_engine, events),
        "floor: rbloom, stable hash per op": floor(False),
        f"ours: Ingestor.accept x{BATCH}": ours_accept(fresh_engine, events),
        "floor, strict: hash once per event": floor(True),
    }
    times = interleave(runs, rounds)
    return print_rates(times, n_events, "event")


# -- (c) predictions for a user -----------------------------------------------


def bench_predict(p: Populated, n_calls: int, rounds: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    users = rng.choices(p.users, k=n_calls)
    engine = p.engine
    ns = p.namespace
    done = [sum(1 for m in p.membership.values() if u in m) for u in users]
    print(
        f"{n_calls:,} predict_for_user calls, namespace with {len(p.membership)} named events "
        f"and {len(p.goals)} goals; the users did {statistics.mean(done):.1f} events on average"
    )

    def ours():
        def run():
            for u in users:
                engine.predict_for_user(ns, u)

        return run

    def floor(strict: bool):
        hash_func = int if strict else stable_hash
        _, named = floor_filters(p, hash_func)
        items = list(named.items())

        def setup():
            def run():
                for u in users:
                    key = stable_hash(u) if strict else u
                    sorted(n for n, b in items if key in b)

            return run

        return setup

    runs = {
        "ours: Engine.predict_for_user": ours,
        "floor: rbloom, stable hash per op": floor(False),
        "floor, strict: hash once per call": floor(True),
    }
    times = interleave(runs, rounds)
    return print_rates(times, n_calls, "call")


# -- memory -------------------------------------------------------------------


def optimal_bytes(n: int) -> float:
    return optimal_bits(n, ERROR_PROBABILITY) / 8


def bench_memory(sizes: Sequence[int], sweep_points: int, fp_probes: int, seed: int) -> None:
    """One default-config filter fed up to max(sizes) distinct keys, read at checkpoints."""
    top = max(sizes)
    sweep = sorted(
        {
            round(10 ** (1 + i * (math.log10(top) - 1) / (sweep_points - 1)))
            for i in range(sweep_points)
        }
    )
    checkpoints = set(sizes) | set(sweep)
    f = DEFAULT_RULE.new_filter()
    at: dict[int, int] = {}
    fp: dict[int, tuple[int, int]] = {}
    slices: dict[int, int] = {}
    growth: list[int] = []  # sizes at which the filter grew (the worst case for bytes per user)
    count = 1
    added = 0
    for i in range(1, top + 1):
        if f.add_if_absent(hash_key(f"member-{seed}-{i}")):
            added += 1
        grown = getattr(f, "slice_count", 1)
        if grown != count:
            count = grown
            growth.append(i)
        if i in checkpoints or (growth and growth[-1] == i):
            at[i] = f.nbytes
            slices[i] = grown
        if i in sizes:
            hits = sum(1 for j in range(fp_probes) if hash_key(f"probe-{seed}-{j}") in f)
            fp[i] = (hits, fp_probes)
    heap = {n: python_heap_bytes(n) for n in sizes if n <= 10_000}

    print(
        f"default rule: {DEFAULT_RULE.filter_type.value}, initial size {DEFAULT_RULE.size}, "
        f"p = {ERROR_PROBABILITY:g}; optimal = optimal_bits(n, p) / 8"
    )
    print(
        "| users | slices | filter bytes | optimal bytes | ratio | false positives (measured) "
        "| Python heap per counter |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        hits, probes = fp[n]
        heap_text = f"{heap[n]:,} B" if n in heap else "-"
        print(
            f"| {n:,} | {slices[n]} | {at[n]:,} | {optimal_bytes(n):,.0f} | "
            f"{at[n] / optimal_bytes(n):.2f} | {hits / probes:.5f} ({hits}/{probes:,}) "
            f"| {heap_text} |"
        )
    for label, points in (("log sweep", sweep), ("just after each growth", growth or sweep)):
        worst = max(points, key=lambda n: at[n] / optimal_bytes(n))
        best = min(points, key=lambda n: at[n] / optimal_bytes(n))
        print(
            f"{label} ({len(points)} sizes, 10..{top:,}): "
            f"worst {at[worst] / optimal_bytes(worst):.2f}x at n = {worst:,}, "
            f"best {at[best] / optimal_bytes(best):.2f}x at n = {best:,}"
        )
    if growth:
        print(
            "just after each growth, n: ratio = "
            + ", ".join(f"{n:,}: {at[n] / optimal_bytes(n):.2f}" for n in growth)
        )
    worst_all = max(at, key=lambda n: at[n] / optimal_bytes(n))
    ratio = at[worst_all] / optimal_bytes(worst_all)
    mark = "PASS" if ratio <= TARGET_MEMORY_RATIO else "MISS"
    print(
        f"{mark}  memory: worst {ratio:.2f}x optimal (n = {worst_all:,}) "
        f"(target <= {TARGET_MEMORY_RATIO:g}x at every size)"
    )
    print(f"({added:,} of {top:,} keys reported new; the rest were false positives on insert)")


def scalable_design_worst(first: int, growth: float, tightening: float, top: int) -> tuple:
    """(worst bits / optimal over 10..top keys, at n; slices at top) of a scalable filter
    whose slices hold ``first`` keys, then ``growth - 1`` times the keys held so far, at
    errors ``p (1 - r) r**i``: its formulas, the code's rounding, no keys added."""
    p = ERROR_PROBABILITY
    capacity, error = first, p * (1 - tightening)
    total = optimal_bits(capacity, error)
    worst = (total / optimal_bits(10, p), 10) if first > 10 else (0.0, 0)
    held, slices = 0, 1
    while held + capacity < top:
        held += capacity
        capacity, error = max(1, round((growth - 1) * held)), error * tightening
        total += optimal_bits(capacity, error)
        slices += 1
        worst = max(worst, (total / optimal_bits(held + 1, p), held + 1))
    return worst[0], worst[1], slices


def print_scalable_designs(top: int) -> None:
    """The least worst case of bits / optimal that any growth and tightening reach, by the
    slices an absent key would visit at ``top`` keys (a search of their formulas)."""
    designs = [
        (*scalable_design_worst(first, growth, r, top), first, growth, r)
        for first in (10, 16)
        for growth in (1.2, 1.25, 1.3, 1.4, 1.5, 1.6, 2.0, 3.0)
        for r in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
    ]
    print(f"\nscalable designs up to {top:,} keys: least worst bits / optimal by slices at the top")
    print("| slices at most | worst x optimal | at n | first slice | growth | tightening |")
    print("|---:|---:|---:|---:|---:|---:|")
    for limit in (17, 26, 35, 50, 70):
        fits = [d for d in designs if d[2] <= limit]
        if fits:
            worst, at, slices, first, growth, r = min(fits)
            print(f"| {limit} ({slices}) | {worst:.2f} | {at:,} | {first} | {growth:g} | {r:g} |")


def python_heap_bytes(n: int, copies: int = 50) -> int:
    """Python heap held per named counter (Counter + filter + bits) with n users, tracemalloc."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = []
    for c in range(copies):
        counter = Counter(f"event_{c}", CounterKind.NAMED, DEFAULT_RULE.new_filter())
        for i in range(n):
            if counter.filter.add_if_absent(hash_key(f"heap-{c}-{i}")):
                counter.record_first(None, None)
        held.append(counter)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return round((after - before - sys.getsizeof(held)) / copies)


# -- diagnostics ----------------------------------------------------------------


def count_slice_probes(events: list[Event], factory: Callable[[], Engine]) -> None:
    """Filter membership tests per event and the slices they visit (untimed, instrumented).

    A scalable filter tests its slices newest first until one holds the key, so an absent key
    visits every slice: the count of slices visited is what the Bloom work scales with.
    """
    cls = kbloom.ScalableBloomFilter
    original = cls.__contains__
    tests = negatives = visited = 0

    def contains(self, key_hash):
        nonlocal tests, negatives, visited
        found = original(self, key_hash)
        tests += 1
        slices = list(reversed(getattr(self, "_slices", [])))
        if not found:
            negatives += 1
            visited += len(slices)
        else:
            visited += next((i + 1 for i, s in enumerate(slices) if key_hash in s), 1)
        return found

    records = [prepare(e) for e in events]
    cls.__contains__ = contains
    try:
        engine = factory()
        for r in records:
            engine.apply_event(r)
    finally:
        cls.__contains__ = original
    n = len(records)
    counters = engine.counters(records[0].namespace)
    sizes = [getattr(c.filter, "slice_count", 1) for c in counters[1:]]
    print(
        f"per event: {tests / n:.2f} filter membership tests ({negatives / max(1, tests):.0%} "
        f"for absent keys), {visited / n:.2f} Bloom slices visited; the global filter ended "
        f"with {getattr(counters[0].filter, 'slice_count', 1)} slices, named ones with "
        f"{min(sizes)}-{max(sizes)}"
    )


def profile_apply(records: list[EventRecord], top: int = 14) -> None:
    engine = Engine()
    profiler = cProfile.Profile()
    profiler.enable()
    for r in records:
        engine.apply_event(r)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(out.getvalue())


# -- main -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(50_000, 5_000), rounds=(5, 3))
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    parts = {"a": "(a) plain events", "b": "(b) goal events", "c": "(c) predict_for_user"}
    plain, goals, predict, memory = add_parts(parser, {**parts, "memory": "memory"})
    add_size(plain, "--events", 200_000, 20_000, "events per pass")
    plain.add_argument("--weekly", action="store_true", help="also with weekly counters")
    plain.add_argument("--profile", action="store_true", help="cProfile one pass")
    add_size(goals, "--goal-events", 2_000, 500, "events")
    add_size(goals, "--goal-users", 10_000, 2_000, "users populated")
    add_size(predict, "--predict-calls", 300, 50, "calls per pass")
    add_size(predict, "--predict-users", 5_000, 2_000, "users populated")
    add_size(memory, "--memory-max", 1_000_000, 100_000, "users in the largest counter")
    add_size(memory, "--fp-probes", 200_000, 20_000, "absent keys probed")
    args = parse(parser, argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    started = time.perf_counter()
    print_header("bench_core")
    print()

    if "a" not in args.skip:
        w = make_plain_workload(args.events, args.users, args.names, args.seed)
        print(
            f"## (a) plain events: {len(w.records):,} events, {w.distinct_users:,} distinct users "
            f"of {args.users:,}, {args.names} names; new user {w.new_user_share:.0%} of events, "
            f"new (user, name) {w.new_pair_share:.0%}; {args.rounds} interleaved rounds\n"
        )
        verdict(bench_plain(w, args.rounds, weekly=False), "(a) plain")
        count_slice_probes(w.events, Engine)
        if args.profile:
            profile_apply([prepare(e) for e in w.events])
        if args.weekly:
            ww = make_plain_workload(args.events, args.users, args.names, args.seed, weeks=4)
            print("\n## (a') plain events with a weekly cohort rule on every name (4 weeks)\n")
            verdict(bench_plain(ww, args.rounds, weekly=True), "(a') weekly")
        print()

    if "b" not in args.skip:
        print("## (b) goal events, namespace with 100 named events\n")
        p = populate(100, args.goal_users, 6, ["event_0050"], args.seed + 1)
        verdict(bench_goals(p, args.goal_events, args.rounds, args.seed + 2), "(b) goals")
        print()

    if "c" not in args.skip:
        print("## (c) predict_for_user, namespace with 1,000 named events\n")
        names = [f"event_{i:04d}" for i in (3, 40, 200, 500, 900)]
        p = populate(1000, args.predict_users, 12, names, args.seed + 3)
        verdict(bench_predict(p, args.predict_calls, args.rounds, args.seed + 4), "(c) predict")
        print()

    if "memory" not in args.skip:
        print("## memory: one counter under the default configuration\n")
        sizes = sorted({10, 1_000, args.memory_max})
        bench_memory(sizes, 50, args.fp_probes, args.seed)
        print_scalable_designs(max(sizes))
        print()

    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

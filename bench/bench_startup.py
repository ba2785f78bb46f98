"""Start-up with a large write-ahead log: a log of ``--events`` events (10 M by default) and no
snapshot, restored the way ``kimball serve`` does at start (``Persistence.restore()``) in a
fresh process; with ``--baseline DIR`` also by another checkout, side by side.

    .venv/bin/python bench/bench_startup.py                  # ~6 min: 10 M events
    .venv/bin/python bench/bench_startup.py --baseline /tmp/kimball-base   # + the same restore
    .venv/bin/python bench/bench_startup.py --quick          # smoke run: 200,000 events

The log is written once, streaming (the events are never all in memory): users drawn
Zipf-like (weight 1/rank^0.7) from ``--users``, 20 names (1/rank), 100 events per entry,
fsync never. Each restore runs in its own process pinned to ``--cpu``, and reports its wall
time, its CPU time and its peak RSS; replayed records are checked against the log.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_options import add_size, new_parser, parse, print_header
from workload import BATCH, prepare, user_ids, zipf_weights

from kimball_grpc.codec.state_codec import encode_records
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event
from kimball_grpc.metrics import Metrics
from kimball_grpc.persistence import Persistence
from storage.local_store import LocalBlobStore
from storage.snapshots import SnapshotStore
from storage.wal import FsyncPolicy, WriteAheadLog

CHUNK = 100_000  # events generated at a time


def write_log(directory: Path, n_events: int, n_users: int, n_names: int, seed: int) -> float:
    """The log, written in chunks; seconds taken."""
    rng = random.Random(seed)
    users = user_ids(rng, n_users)
    user_weights = list(itertools.accumulate(zipf_weights(n_users, 0.7)))
    names = [f"event_{i:03d}" for i in range(n_names)]
    name_weights = list(itertools.accumulate(zipf_weights(n_names, 1.0)))

    async def go() -> None:
        wal = WriteAheadLog(directory, FsyncPolicy.NEVER)
        wal.open()
        for start in range(0, n_events, CHUNK):
            size = min(CHUNK, n_events - start)
            keys = rng.choices(users, cum_weights=user_weights, k=size)
            picked = rng.choices(names, cum_weights=name_weights, k=size)
            records = [prepare(Event(n, k)) for k, n in zip(keys, picked, strict=True)]
            for i in range(0, size, BATCH):
                chunk = records[i : i + BATCH]
                await wal.append(encode_records(chunk), len(chunk), lambda sequence: None)
        await wal.close()

    started = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - started


def restore(directory: str, blobs: str) -> None:
    """In the child: one ``Persistence.restore()``; prints its figures as JSON."""

    async def go() -> dict[str, float]:
        engine = Engine()
        wal = WriteAheadLog(Path(directory), FsyncPolicy.NEVER)
        persistence = Persistence(
            engine, wal, SnapshotStore(LocalBlobStore(Path(blobs))), Metrics(engine)
        )
        wall, cpu = time.perf_counter(), time.process_time()
        restored = await persistence.restore()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await wal.close()
        return {"wall": wall, "cpu": cpu, "replayed": restored.replayed_records}

    figures = asyncio.run(go())
    figures["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def restore_in_child(
    code: str | None, directory: Path, blobs: Path, cpu: int | None
) -> dict[str, float]:
    """``restore`` in a fresh process, with ``code`` (a checkout) first on the path if given."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code
    argv = [sys.executable, __file__, "--restore", str(directory), str(blobs)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--restore"]:
        restore(sys.argv[2], sys.argv[3])
        return 0
    parser = new_parser(__doc__, users=(1_000_000, 50_000), rounds=(1, 1))
    add_size(parser, "--events", 10_000_000, 200_000, "events in the log")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the log goes")
    parser.add_argument("--cpu", type=int, default=1, help="the restoring process's CPU")
    parser.add_argument("--baseline", help="another checkout to restore with, side by side")
    args = parse(parser, argv)
    print_header("bench_startup", "storage")
    runs = {"ours": None} | ({"baseline": args.baseline} if args.baseline else {})
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kimball-startup-") as tmp:
        log_dir, blobs = Path(tmp) / "wal", Path(tmp) / "objects"
        seconds = write_log(log_dir, args.events, args.users, args.names, args.seed)
        size = sum(p.stat().st_size for p in log_dir.iterdir())
        print(
            f"log: {args.events:,} events ({args.users:,} users drawn, {args.names} names) in "
            f"entries of {BATCH}, {size / 1e6:,.0f} MB, written in {seconds:.0f} s; no snapshot\n"
        )
        results: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, code in runs.items():
                results[name].append(restore_in_child(code, log_dir, blobs, args.cpu))
    print("| code | start-up (restore) | events/s | CPU per event | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for name, figures in results.items():
        for f in figures:
            if f["replayed"] != args.events:
                raise RuntimeError(f"{name} replayed {f['replayed']} of {args.events}")
            print(
                f"| {name} | {f['wall']:.1f} s | {args.events / f['wall']:,.0f} | "
                f"{f['cpu'] / args.events * 1e6:.2f} µs | {f['max_rss_mib']:,.0f} MiB |"
            )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

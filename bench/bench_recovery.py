"""Recovery benchmark: what reading a snapshot back costs, and what a damaged one adds at start.

Run from the repository root:

    .venv/bin/python bench/bench_recovery.py            # defaults, about 3.5 minutes
    .venv/bin/python bench/bench_recovery.py --quick    # a smoke run, a few seconds

What it measures, in one run (medians of interleaved rounds, with the min/max spread), for
encoded states of ``--sizes`` megabytes (random bytes: storing and checking a snapshot
costs by its size, not by what it holds), into a ``LocalBlobStore`` under ``--dir``:

(1) Writing a snapshot: ``SnapshotStore.write`` (encode, store with fsync, read back,
    check length, checksum and sequence) against what writing cost without the check
    (encode and ``BlobStore.put``), side by side in each round: wall time and this
    process's CPU time, and their ratio.
(2) Start-up: ``SnapshotStore.load_newest`` when the newest snapshot is whole, and when it
    is damaged (one flipped byte: read, found damaged, moved aside, then the one before
    it read), with the decoding of the state left out: the time damage adds.

The part runs pinned to ``--server-cpu``. Files just written are read back from the page
cache: on S3 or GCS the read-back is a download of the object. Timing is only printed.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# figures and run_options: bench modules next to this script.
from figures import median, spread, with_range
from run_options import add_server_options, add_size, new_parser, parse, pinned, start_run

from storage.local_store import LocalBlobStore
from storage.snapshots import SnapshotStore, encode_snapshot, snapshot_key

MB = 1_000_000


def clocked(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_write(size: int, rounds: int, root: Path) -> None:
    state = os.urandom(size * MB)
    blobs = LocalBlobStore(root / f"write-{size}")
    store = SnapshotStore(blobs, keep=rounds * 2 + 1)  # deletes nothing while measured
    plain: list[tuple[float, float]] = []
    checked: list[tuple[float, float]] = []
    for r in range(rounds):
        steps = [
            (plain, lambda r=r: blobs.put(snapshot_key(2 * r + 1), encode_snapshot(1, state))),
            (checked, lambda r=r: store.write(2 * r + 2, state)),
        ]
        for samples, step in steps if r % 2 == 0 else steps[::-1]:
            samples.append(clocked(step))
    for name, samples in (("encode and put", plain), ("write: put, read back, check", checked)):
        walls, cpus = [s[0] for s in samples], [s[1] for s in samples]
        print(
            f"| {size} MB | {name} | {median(walls) * 1e3:,.0f} ms ({spread(walls)}) "
            f"| {median(cpus) * 1e3:,.0f} ms | {median(cpus) / size * 1e3:.2f} ms |"
        )
    ratios = [c[0] / p[0] for p, c in zip(plain, checked, strict=True)]
    cpu_ratios = [c[1] / p[1] for p, c in zip(plain, checked, strict=True)]
    print(f"| {size} MB | ratio, write / put | {with_range(ratios)} | {with_range(cpu_ratios)} | |")


def bench_start_up(size: int, rounds: int, root: Path) -> None:
    state = os.urandom(size * MB)
    whole, damaged = [], []
    for r in range(rounds):
        blobs = LocalBlobStore(root / f"start-{size}-{r}")
        store = SnapshotStore(blobs)
        store.write(1, state)
        store.write(2, state)
        whole.append(clocked(lambda store=store: store.load_newest(bytes))[0])
        path = blobs.root / snapshot_key(2)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(data)
        del data
        damaged.append(clocked(lambda store=store: store.load_newest(bytes))[0])
        assert store.moved_aside == 1
    pairs = list(zip(whole, damaged, strict=True))
    print(
        f"| {size} MB | {median(whole) * 1e3:,.0f} ms ({spread(whole)}) "
        f"| {median(damaged) * 1e3:,.0f} ms ({spread(damaged)}) "
        f"| {median([d - w for w, d in pairs]) * 1e3:,.0f} ms "
        f"| {with_range([d / w for w, d in pairs])} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=None, rounds=(5, 2))
    add_server_options(parser, servers="the CPU the measured code runs on")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where snapshots go")
    add_size(parser, "--sizes", "16,128,512", "4,16", "encoded state sizes in MB, a list")
    args = parse(parser, argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    logging.getLogger("storage").setLevel(logging.CRITICAL)  # snapshots moved aside, on purpose
    cpu = start_run(args, "bench_recovery", "storage")
    print(f"snapshots under {os.path.realpath(args.dir)}\n")
    started = time.perf_counter()
    with pinned(cpu), tempfile.TemporaryDirectory(dir=args.dir, prefix="kimball-") as tmp:
        print("## (1) writing a snapshot, with and without reading it back\n")
        print("| state | what | wall | CPU | CPU per MB |")
        print("|---|---|---:|---:|---:|")
        for size in sizes:
            bench_write(size, args.rounds, Path(tmp))
        print("\n## (2) start-up: the newest snapshot whole, and damaged (decoding left out)\n")
        print("| state | newest whole | newest damaged | added | ratio |")
        print("|---|---:|---:|---:|---:|")
        for size in sizes:
            bench_start_up(size, args.rounds, Path(tmp))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

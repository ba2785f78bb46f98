"""Two builds of Kimball side by side: StreamEvents ingest into this checkout and into another
commit, at once, in alternating rounds.

Run from the repository root:

    .venv/bin/python bench/bench_builds.py --base HEAD~1          # about 2 minutes
    .venv/bin/python bench/bench_builds.py --base HEAD~1 --quick  # a smoke run

What a change to the ingest path is worth, measured so that the machine's load falls on
both alike: the other commit is checked out in a temporary git worktree (its gRPC code
generated and its C modules built there), and ``kimball serve --rest-workers 2`` runs
from each tree (the other's by ``PYTHONPATH``), both with authentication on and the
write-ahead log with fsync ``always``. Each round sends the same ``--events`` events, in
``StreamEvents`` messages of ``--batch``, on ``--streams`` concurrent streams, into each
server in turn (the order alternating), each round into a namespace of its own. Printed:
the median events/s of each, the median CPU of its engine process per event, and the
ratios (this checkout over the base). Timing is only printed, never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import median
from load import run_streams
from run_options import ROOT, add_size, new_parser, parse, print_header
from servers import ServerProcess, kimball_argv
from workload import GOAL_NAMES, in_namespace, make_plain_workload, track_events_requests

PLACEHOLDER = "ns-placeholder"


def base_tree(commit: str, directory: Path) -> Path:
    """``commit`` checked out in ``directory`` with its generated code and C modules built."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(directory), commit],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for step in (["protos/compile_protos.py"], ["setup.py", "-q", "build_ext", "--inplace"]):
        subprocess.run(
            [sys.executable, *step], cwd=directory, check=True, stdout=subprocess.DEVNULL
        )
    return directory


def server_of(name: str, tree: Path, tmp: str) -> ServerProcess:
    """``kimball serve --rest-workers 2`` from the sources of ``tree``."""
    server = ServerProcess(name, [], None, tmp)
    flags = ("--rest-workers", "2", "--wal-fsync", "always")
    command = kimball_argv(server, os.path.join(tmp, f"data-{name}"), *flags)
    server.argv = [sys.executable, "-m", "kimball_grpc.cli", *command[1:]]
    server.env = {"PYTHONPATH": str(tree)}
    server.cwd = str(tree)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=(25_000, 2_500), rounds=(8, 2))
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--batch", type=int, default=100, help="events per message")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    add_size(parser, "--events", 100_000, 10_000, "events per round")
    args = parse(parser, argv)
    print_header("bench_builds", "gateway", "storage", note=f"; base {args.base}")
    w = make_plain_workload(args.events, args.users, args.names, args.seed)
    messages = track_events_requests(in_namespace(w.events, PLACEHOLDER, GOAL_NAMES), args.batch)

    def bodies(namespace: str) -> list:
        name = namespace.ljust(len(PLACEHOLDER), "x").encode()
        return [(body.replace(PLACEHOLDER.encode(), name), n) for body, n in messages]

    rates: dict[str, list[float]] = {"base": [], "this checkout": []}
    engine_us: dict[str, list[float]] = {"base": [], "this checkout": []}
    with tempfile.TemporaryDirectory(prefix="kimball-builds-") as tmp:
        tree = Path(tmp) / "base"
        try:
            servers = {
                "base": server_of("base", base_tree(args.base, tree), tmp),
                "this checkout": server_of("this", ROOT, tmp),
            }
            try:
                for server in servers.values():
                    server.start()
                for name, server in servers.items():
                    server.wait_serving()
                    run_streams(server.port, bodies(f"warm-{name[:4]}"), args.streams)
                for r in range(args.rounds):
                    order = list(servers) if r % 2 == 0 else list(reversed(servers))
                    for name in order:
                        server = servers[name]
                        cpu, start = server.cpu_seconds(), time.perf_counter()
                        events = run_streams(server.port, bodies(f"r{r}-{name[:4]}"), args.streams)
                        elapsed = time.perf_counter() - start
                        rates[name].append(events / elapsed)
                        engine_us[name].append((server.cpu_seconds() - cpu) / events * 1e6)
            finally:
                for server in servers.values():
                    server.stop()
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )

    print(
        f"\n{args.rounds} rounds of {args.events:,} events, {args.batch} per message, "
        f"{args.streams} streams; fsync always"
    )
    print("\n| build | events/s (median) | rounds, thousands | engine CPU per event |")
    print("|---|---:|---|---:|")
    for name in rates:
        rounds = ", ".join(f"{rate / 1000:.0f}" for rate in rates[name])
        print(
            f"| {name} | {median(rates[name]):,.0f} | {rounds} | {median(engine_us[name]):.2f} µs |"
        )
    ratio = median(rates["this checkout"]) / median(rates["base"])
    cpu = median(engine_us["this checkout"]) / median(engine_us["base"])
    print(f"\nthis checkout / base: events/s {ratio:.3f}x, engine CPU per event {cpu:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

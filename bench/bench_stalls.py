"""Stalls: what a large state costs other requests while it is snapshotted, while a large
answer is built, and when the server is stopped.

Run from the repository root:

    .venv/bin/python bench/bench_stalls.py            # about 4 minutes
    .venv/bin/python bench/bench_stalls.py --quick    # a smoke run, smaller states
    # side by side with another checkout (a baseline), e.g. the commit before a change:
    git archive 004a20d | tar -x -C /tmp/kimball-base
    (cd /tmp/kimball-base && $PWD/.venv/bin/python protos/compile_protos.py)
    .venv/bin/python bench/bench_stalls.py --baseline /tmp/kimball-base

Each server is ``kimball serve`` in a subprocess pinned to ``--server-cpu`` (authentication
on, fsync ``--wal-fsync``, ``always`` by default), the load generator this script, pinned to
``--client-cpu``. With ``--baseline DIR`` every measurement runs on both servers, one after
the other in each round: ``ours`` (this checkout) and ``baseline`` (``python -m
kimball_grpc.cli`` with ``DIR`` first on ``PYTHONPATH``). The share of the server's CPU that
other processes took during each measurement is printed: on a shared machine it explains
outliers.

The large states are not built through the API (a 500 MB state takes minutes that way): the
script applies one event per counter to an engine in this process, encodes it as a snapshot
does (``state_codec.state_in_steps``) and stores it with ``SnapshotStore`` into each
server's data directory, as record 1; the server restores it at start-up like any snapshot.

(1) A snapshot of a large state under load: ``--namespaces`` namespaces with a global counter
    (9 KB of Bloom filter) and one named counter each (``--state-mb`` MB of snapshot), snapshots
    every ``--interval`` s. TrackEvent (1 event, ``--inflight`` calls in flight, repeat users
    in a namespace of their own, so the state does not grow) runs until a snapshot taken under
    that load is stored. Reported: the snapshot's duration and its encoding's (the server's
    log line), TrackEvent latency p50/p99/max for calls that overlapped the snapshot, its
    encoding, its storing, and for calls before it, calls/s during and before, the server's
    peak RSS against its RSS before (what the copies and the stored bytes cost).
(2) ``/alive`` while a large answer is built: one namespace of ``--event-names`` event names (a
    25 MB JSON answer); ``GET /v0/analytics`` for it, while a second client asks ``/alive``
    every 10 ms. Reported: ``/alive`` latency p50/p99/max during the answer, the answer's
    time and size.
(3) SIGTERM with the large state of (1), 1,000 events after the last snapshot: seconds from
    the signal to the exit, (a) before any periodic snapshot and (b) after one, and whether a
    snapshot was stored at shutdown.

Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

# figures, load, run_options, servers and workload: bench modules next to this script.
from figures import percentile, verdict
from load import rpc
from run_options import add_parts, add_server_options, add_size, new_parser, parse, start_run
from servers import AUTH, BENCH_TOKEN, ServerProcess, cpu_busy_seconds, finish, kimball_argv
from workload import prepare

from kimball_grpc.codec.state_codec import state_in_steps
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event
from kimball_grpc.core.steps import finish as finish_steps
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from storage.local_store import LocalBlobStore
from storage.snapshots import SnapshotStore

HEADERS = {"Authorization": f"Bearer {BENCH_TOKEN}"}
LOAD_NAMESPACE = "load"


# -- states written as snapshots ------------------------------------------------------------


def write_state(engine: Engine, data_dir: Path) -> int:
    """``engine`` as the snapshot of record 1 in ``data_dir``'s default storage; its bytes."""
    freeze = engine.freeze()
    try:
        state = b"".join(finish_steps(state_in_steps(freeze)))
    finally:
        engine.thaw()
    SnapshotStore(LocalBlobStore(data_dir / "objects")).write(1, state)
    return len(state)


def many_namespaces(count: int) -> Engine:
    """``count`` namespaces, each with its global counter and one named counter."""
    engine = Engine()
    for i in range(count):
        engine.apply(prepare(Event("signup", f"user-{i}", f"tenant-{i:07d}")))
    return engine


def many_names(count: int) -> Engine:
    """One namespace, ``big``, with ``count`` event names of one user each."""
    engine = Engine()
    for i in range(count):
        engine.apply(prepare(Event(f"event_{i:07d}", f"user-{i % 1000}", "big")))
    return engine


# -- the servers ------------------------------------------------------------------------------


@dataclass
class Server:
    """One server under test: a subprocess started on a copy of a data directory."""

    name: str
    process: ServerProcess
    data_dir: Path
    log: Path
    rounds: list[dict] = field(default_factory=list)

    def newest_snapshot(self) -> str:
        """The newest snapshot's name (they sort by sequence)."""
        return max(p.name for p in (self.data_dir / "objects" / "snapshots").glob("*.snapshot"))


def make_server(
    name: str, template: Path, root: Path, args: argparse.Namespace, cpu: int | None, env: dict
) -> Server:
    data_dir = root / name / "data"
    if data_dir.parent.exists():
        shutil.rmtree(data_dir.parent)
    data_dir.parent.mkdir(parents=True)
    shutil.copytree(template, data_dir)
    log = data_dir.parent / "server.log"
    # The large state holds 55,000 namespaces, past the default limit: a restored state is
    # kept whatever the limits, but the load's own namespace would be refused.
    limits = {"KIMBALL_MAX_NAMESPACES": "100000"}
    process = ServerProcess(
        name, [], cpu, str(root), env={"LOG_LEVEL": "INFO", **limits, **env}, log=log
    )
    argv = kimball_argv(process, str(data_dir), "--wal-fsync", args.wal_fsync)
    if name == "baseline":
        process.env["PYTHONPATH"] = args.baseline
        argv = [sys.executable, "-m", "kimball_grpc.cli", *argv[argv.index("serve") :]]
    process.argv = argv
    return Server(name, process, data_dir, log)


def start(server: Server) -> float:
    """Start it, wait until it serves; seconds it took (the restore, mostly)."""
    started = time.monotonic()
    server.process.start()
    server.process.wait_serving(timeout=600)
    server.process.wait_http("/alive")
    return time.monotonic() - started


def rss_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def snapshots_stored(port: int) -> float:
    """``kimball_snapshots_total{result="ok"}`` from the server's ``/metrics``."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=HEADERS)
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith('kimball_snapshots_total{result="ok"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- (1) a snapshot under load --------------------------------------------------------------


def track_event_requests(n: int) -> list[bytes]:
    """TrackEvent requests of repeat users: the state does not grow."""
    events = [
        pb.Event(event_name=f"load_{i % 10}", user_id=f"user-{i % 500}", namespace=LOAD_NAMESPACE)
        for i in range(n)
    ]
    return [pb.TrackEventRequest(event=e).SerializeToString() for e in events]


STORED = re.compile(
    r"^(\S+ \S+) INFO kimball_grpc.persistence: snapshot up to record \d+ stored in \S+ "
    r"(?:and read back )?"
    r"\(\d+ bytes, ([\d.]+) s(?:, of which ([\d.]+) s to encode)?\)"
)


def last_snapshot_window(log: Path) -> tuple[float, float | None, float]:
    """(start, end of its encoding if the server says, end), wall-clock, of the last snapshot
    the server's log reports."""
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if match := STORED.match(line):
            found = match
    if found is None:
        raise RuntimeError(f"no stored snapshot in {log}")
    stamp, millis = found.group(1).split(",")
    end = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    begin = end - float(found.group(2))
    encoded = begin + float(found.group(3)) if found.group(3) else None
    return begin, encoded, end


async def load_until_snapshot(server: Server, inflight: int, timeout: float) -> dict:
    """TrackEvent calls until a snapshot that started after the load did is stored."""
    port, http = server.process.port, server.process.http_port
    requests = track_event_requests(5000)
    calls: list[tuple[float, float]] = []  # (start, end), wall clock: the log's
    stop = asyncio.Event()
    stored_before = await asyncio.to_thread(snapshots_stored, http)
    load_started = time.time()
    cpu = f"cpu{server.process.cpu}" if server.process.cpu is not None else "all"
    busy_before, own_before = cpu_busy_seconds()[cpu], server.process.cpu_seconds()

    async with rpc(port, "TrackEvent") as call:

        async def worker(k: int) -> None:
            i = k
            while not stop.is_set():
                begin = time.time()
                await call(requests[i % len(requests)], metadata=AUTH)
                calls.append((begin, time.time()))
                i += inflight

        async def watch() -> None:
            deadline = time.monotonic() + timeout
            while await asyncio.to_thread(snapshots_stored, http) <= stored_before:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name}: no snapshot within {timeout:g} s")
                await asyncio.sleep(0.05)

        workers = [asyncio.ensure_future(worker(k)) for k in range(inflight)]
        try:
            await watch()
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*workers)
    elapsed = time.time() - load_started
    others = cpu_busy_seconds()[cpu] - busy_before - (server.process.cpu_seconds() - own_before)
    begin, encoded, end = last_snapshot_window(server.log)
    if begin < load_started + 1.0:
        raise RuntimeError(f"{server.name}: the snapshot began before the load was warm")

    def window(a: float, b: float) -> list[float]:
        return [e - s for s, e in calls if s < b and e > a]

    before = [e - s for s, e in calls if load_started + 1.0 <= s and e <= begin]
    result = {
        "snapshot_s": end - begin,
        "encode_s": encoded - begin if encoded else None,
        "during": window(begin, end),
        "encoding": window(begin, encoded) if encoded else [],
        "storing": window(encoded, end) if encoded else [],
        "before": before,
        "rate_during": len(window(begin, end)) / (end - begin),
        "rate_before": len(before) / (begin - (load_started + 1.0)),
        "others": others / elapsed,  # other processes' share of the server's CPU
    }
    return result


def part_snapshot(servers: list[Server], args: argparse.Namespace) -> None:
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else servers[::-1]:
            os.sync()  # no writeback left from copying the state or from the last round
            start(server)
            pid = server.process.process.pid
            rss_before = rss_kb(pid, "VmRSS")
            result = asyncio.run(load_until_snapshot(server, args.inflight, args.timeout))
            result["rss_before_mb"] = rss_before / 1024
            result["rss_peak_mb"] = rss_kb(pid, "VmHWM") / 1024
            server.rounds.append(result)
            stop(server)

    print(
        "TrackEvent latency p50 / p99 / max, from calls that overlapped each window; the "
        "encoding and storing windows from the server's log line (the baseline does not "
        "split them).\n"
    )
    print(
        "| server | round | snapshot (encoding) | during the snapshot | while encoding "
        "| while storing | before it | calls/s during / before | RSS before -> peak "
        "| other processes on its CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for server in servers:
        for i, x in enumerate(server.rounds, start=1):
            encode = f" ({x['encode_s']:.2f} s)" if x["encode_s"] is not None else ""
            print(
                f"| {server.name} | {i} | {x['snapshot_s']:.2f} s{encode} "
                f"| {latencies(x['during'])} | {latencies(x['encoding'])} "
                f"| {latencies(x['storing'])} | {latencies(x['before'])} "
                f"| {x['rate_during']:,.0f} / {x['rate_before']:,.0f} "
                f"| {x['rss_before_mb']:,.0f} -> {x['rss_peak_mb']:,.0f} MB | {x['others']:.0%} |"
            )
    print()
    during = [percentile(x["during"], 0.99) for x in servers[0].rounds if x["during"]]
    if during:
        p99 = max(during)
        verdict(
            f"stalls, TrackEvent p99 during a snapshot ({servers[0].name}, worst round)",
            f"{p99 * 1e3:.0f} ms",
            p99 < 0.05,
            "< 50 ms",
            None,
        )


def latencies(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f} / {max(values) * 1e3:.0f} ms"


# -- (2) /alive while a large answer is built --------------------------------------------------


async def alive_during_answer(server: Server) -> dict:
    base = f"http://127.0.0.1:{server.process.http_port}"
    cpu = f"cpu{server.process.cpu}" if server.process.cpu is not None else "all"
    busy_before, own_before = cpu_busy_seconds()[cpu], server.process.cpu_seconds()
    measured_from = time.perf_counter()
    alive: list[tuple[float, float]] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession(base) as poll, aiohttp.ClientSession(base) as client:

        async def poller() -> None:
            while not done.is_set():
                begin = time.perf_counter()
                async with poll.get("/alive") as answer:
                    await answer.read()
                alive.append((begin, time.perf_counter()))
                await asyncio.sleep(0.01)

        polling = asyncio.ensure_future(poller())
        await asyncio.sleep(0.3)
        begin = time.perf_counter()
        async with client.get("/v0/analytics?namespace=big", headers=HEADERS) as answer:
            body = await answer.read()
            status = answer.status
        end = time.perf_counter()
        done.set()
        await polling
    if status != 200:
        raise RuntimeError(f"{server.name}: GET /v0/analytics answered {status}: {body[:200]!r}")
    during = [e - b for b, e in alive if b < end and e > begin]
    others = cpu_busy_seconds()[cpu] - busy_before - (server.process.cpu_seconds() - own_before)
    return {
        "answer_s": end - begin,
        "bytes": len(body),
        "alive": during,
        "others": others / (time.perf_counter() - measured_from),
    }


def part_answer(servers: list[Server], args: argparse.Namespace) -> None:
    results: dict[str, list[dict]] = {s.name: [] for s in servers}
    for server in servers:
        start(server)
    try:
        for r in range(args.rounds):
            for server in servers if r % 2 == 0 else servers[::-1]:
                results[server.name].append(asyncio.run(alive_during_answer(server)))
    finally:
        for server in servers:
            stop(server)
    print(
        "| server | round | answer | time | /alive p50 / p99 / max meanwhile | /alive asked "
        "| other processes on its CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for server in servers:
        for i, x in enumerate(results[server.name], start=1):
            print(
                f"| {server.name} | {i} | {x['bytes'] / 1e6:.1f} MB | {x['answer_s']:.2f} s "
                f"| {latencies(x['alive'])} | {len(x['alive'])} | {x['others']:.0%} |"
            )
    print()
    worst = max(max(x["alive"], default=0.0) for x in results[servers[0].name])
    verdict(
        f"stalls, /alive while a large answer is built ({servers[0].name}, max)",
        f"{worst * 1e3:.0f} ms",
        worst < 0.1,
        "< 100 ms",
        None,
    )


# -- (3) SIGTERM ------------------------------------------------------------------------------


async def track_some(port: int, n: int) -> None:
    requests = track_event_requests(n)
    async with rpc(port, "TrackEvent") as call:
        for data in requests:
            await call(data, metadata=AUTH)


def sigterm_seconds(server: Server) -> float:
    process = server.process.process
    assert process is not None
    begin = time.monotonic()
    process.send_signal(signal.SIGTERM)
    finish(process, timeout=120)
    return time.monotonic() - begin


def part_sigterm(servers: list[Server], args: argparse.Namespace) -> None:
    rows = []
    for server in servers:
        for case in ("before any periodic snapshot", "after a periodic snapshot"):
            start(server)
            if case.startswith("after"):
                stored = snapshots_stored(server.process.http_port)
                asyncio.run(track_some(server.process.port, 100))
                deadline = time.monotonic() + args.timeout
                while snapshots_stored(server.process.http_port) <= stored:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{server.name}: no periodic snapshot")
                    time.sleep(0.1)
            asyncio.run(track_some(server.process.port, 1000))
            before = server.newest_snapshot()
            seconds = sigterm_seconds(server)
            stored_at_exit = server.newest_snapshot() != before
            rows.append((server.name, case, seconds, stored_at_exit))
    print("| server | SIGTERM | seconds to exit | snapshot stored at shutdown |")
    print("|---|---|---:|---|")
    for name, case, seconds, stored in rows:
        print(f"| {name} | {case} | {seconds:.2f} s | {'yes' if stored else 'no'} |")
    print()
    slowest = max(seconds for name, _, seconds, _ in rows if name == servers[0].name)
    verdict(
        f"stalls, SIGTERM to exit ({servers[0].name}, slowest)",
        f"{slowest:.2f} s",
        slowest < 5,
        "< 5 s",
        None,
    )


def stop(server: Server) -> None:
    process = server.process.process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        finish(process, timeout=120)


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__, users=None, rounds=(2, 1))
    add_server_options(parser)
    parser.add_argument("--baseline", help="another checkout to run side by side")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where data directories go")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one")
    parser.add_argument(
        "--wal-fsync", default="always", help="the servers' fsync policy (always: the default)"
    )
    parts = {
        "1": "(1) a snapshot under load",
        "2": "(2) /alive while a large answer is built",
        "3": "(3) SIGTERM",
    }
    snapshot, answer, _ = add_parts(parser, parts)
    add_size(snapshot, "--namespaces", 55_000, 5_000, "namespaces of the large state, (1) and (3)")
    snapshot.add_argument("--interval", type=float, default=8.0, help="seconds between snapshots")
    snapshot.add_argument("--inflight", type=int, default=8, help="TrackEvent calls in flight")
    add_size(answer, "--event-names", 200_000, 20_000, "event names in the namespace")
    args = parse(parser, argv)
    skip = args.skip
    server_cpu = start_run(args, "bench_stalls", "gateway", "storage")
    names = ["ours"] + (["baseline"] if args.baseline else [])
    env = {"KIMBALL_SNAPSHOT_INTERVAL": f"{args.interval:g}"}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kimball-stalls-") as tmp:
        root = Path(tmp)
        if not {"1", "3"} <= skip:
            t = time.perf_counter()
            engine = many_namespaces(args.namespaces)
            size = write_state(engine, root / "large")
            counters = engine.all_counter_count
            del engine
            print(
                f"\nlarge state: {args.namespaces:,} namespaces, {counters:,} counters, "
                f"a {size / 1e6:,.0f} MB snapshot (built and written in "
                f"{time.perf_counter() - t:.1f} s, untimed)\n"
            )

            def large() -> list[Server]:
                return [make_server(n, root / "large", root, args, server_cpu, env) for n in names]

            servers = large()
            if "1" not in skip:
                print(f"## (1) a snapshot of {size / 1e6:,.0f} MB under TrackEvent load\n")
                part_snapshot(servers, args)
            if "3" not in skip:
                print(f"## (3) SIGTERM with the {size / 1e6:,.0f} MB state\n")
                servers = large()
                part_sigterm(servers, args)
            shutil.rmtree(root / "large")
        if "2" not in skip:
            engine = many_names(args.event_names)
            write_state(engine, root / "names")
            del engine
            print(f"## (2) /alive while GET /v0/analytics answers {args.event_names:,} counters\n")
            servers = [make_server(n, root / "names", root, args, server_cpu, env) for n in names]
            part_answer(servers, args)
        for server in servers:
            print(f"{server.name}: server log in {server.log} (removed with {tmp})")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

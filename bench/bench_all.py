"""Every benchmark in a quick run, and one table of their verdicts (``make bench``).

Run from the repository root:

    .venv/bin/python bench/bench_all.py            # every script with --quick, a few minutes
    .venv/bin/python bench/bench_all.py --only core,streaming --full   # some, at full size

Runs each ``bench/bench_*.py`` script in turn (``--quick`` unless ``--full``), its whole
output kept in ``--out`` (one file per script), and collects the verdict lines the scripts
print (``PASS``, ``MISS`` or ``info``, a figure, its result and target, and the server CPU
per event behind a rate: ``figures.verdict``). Then, when the original service's build
kit is next to the repository (``../shared/original``, its ``start.sh`` and ``stop.sh``),
a side by side in the same run: 100-event ``POST /v0/analytics`` on keep-alive
connections (``--connections``) into the original (in memory, acknowledging before it
counts) and into ``kimball serve`` (defaults: the write-ahead log with fsync ``always``),
and ``StreamEvents`` into ``kimball serve``, in interleaved rounds, each with its server's
CPU per event (the original: its ``beam.smp``). Nothing is pinned there: both services may
use both cores. Prints one table: figure, target, result, PASS/MISS, server CPU per event.
Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# figures, load, servers and workload: bench modules next to this script.
from figures import Sample, cpu_per_unit, measure, median
from load import run_posts, run_stream
from run_options import ROOT, print_header
from servers import ServerProcess, kimball_argv, process_cpu_seconds
from workload import in_namespace, json_bodies, make_plain_workload, track_events_requests

SCRIPTS = (
    "core",
    "grpc",
    "rest",
    "storage",
    "streaming",
    "sidecar",
    "limits",
    "paging",
    "recovery",
    "stalls",
    "cluster",
    "cluster_subscribe",
)
ORIGINAL = ROOT.parent / "shared" / "original"
ORIGINAL_PORT = 7480  # where its start.sh serves
ORIGINAL_PID = Path("/tmp/kimball-orig/run/orig.pid")
# The targets of the side by side: our REST ingest at least the original's, our gRPC stream
# at least twice the original's REST.
TARGET_REST_VS_ORIGINAL = 1.0
TARGET_STREAM_VS_ORIGINAL = 2.0

VERDICT = re.compile(
    r"^(?P<mark>PASS|MISS|info)\s+(?P<figure>.+?): (?P<result>.+) \(target (?P<target>[^)]*)\)"
    r"(?: \[server CPU (?P<cpu>[\d.,]+) µs/event\])?\s*$"
)


@dataclass
class Row:
    script: str
    figure: str
    target: str
    result: str
    mark: str
    cpu: str


def run_script(name: str, full: bool, out: Path) -> tuple[list[Row], float, int]:
    """One script's run: its verdicts, seconds taken and exit code; its output in ``out``."""
    log = out / f"bench_{name}.txt"
    argv = [sys.executable, str(ROOT / "bench" / f"bench_{name}.py")] + (
        [] if full else ["--quick"]
    )
    began = time.monotonic()
    with open(log, "w") as output:
        code = subprocess.run(argv, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - began
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        if m := VERDICT.match(line):
            cpu = f"{m['cpu']} µs" if m["cpu"] else "-"
            rows.append(Row(name, m["figure"], m["target"], m["result"], m["mark"], cpu))
    return rows, seconds, code


def original_side_by_side(args: argparse.Namespace, out: Path) -> list[Row]:
    """The original against ``kimball serve``, same load, interleaved rounds."""
    started_here = not _original_alive()
    if started_here:
        subprocess.run([str(ORIGINAL / "start.sh")], check=True, stdout=subprocess.DEVNULL)
    original = _Original(int(ORIGINAL_PID.read_text().split()[0]))
    w = make_plain_workload(args.events, args.users, 20, 20240515)
    samples: dict[str, list[Sample]] = {"original": [], "rest": [], "stream": []}
    with tempfile.TemporaryDirectory(prefix="kimball-bench-all-") as tmp:
        ours = ServerProcess("kimball serve", [], None, tmp, log=out / "kimball_serve.log")
        ours.argv = kimball_argv(ours, os.path.join(tmp, "data"))
        ours.start()
        try:
            ours.wait_serving()
            for r in range(args.rounds):
                events = w.events
                bodies = {
                    key: json_bodies(in_namespace(events, f"all-{key}-{r}"), 100)
                    for key in ("original", "rest")
                }
                stream = track_events_requests(in_namespace(events, f"all-stream-{r}"), 100)
                keys = ("original", "rest", "stream")
                for key in keys[r % 3 :] + keys[: r % 3]:  # each first in turn
                    if key == "stream":
                        sample = measure(ours, lambda m=stream: run_stream(ours.port, m))
                    else:
                        server, port = (
                            (original, ORIGINAL_PORT)
                            if key == "original"
                            else (ours, ours.http_port)
                        )
                        sample = measure(
                            server,
                            lambda p=port, b=bodies[key]: run_posts(p, b, args.connections, 60.0),
                        )
                    samples[key].append(sample)
        finally:
            ours.stop()
            if started_here:
                subprocess.run([str(ORIGINAL / "stop.sh")], check=False, stdout=subprocess.DEVNULL)
    rate = {key: median([s.rate for s in xs]) for key, xs in samples.items()}
    cpu = {key: f"{cpu_per_unit(xs):,.1f} µs" for key, xs in samples.items()}
    rest, stream = rate["rest"] / rate["original"], rate["stream"] / rate["original"]
    where = "original side by side"
    return [
        Row(
            where,
            "original: REST POST x100",
            "-",
            f"{rate['original']:,.0f} ev/s",
            "info",
            cpu["original"],
        ),
        Row(
            where,
            "ours: REST POST x100 vs the original",
            f">= {TARGET_REST_VS_ORIGINAL:.1f}x",
            f"{rest:.2f}x ({rate['rest']:,.0f} ev/s)",
            "PASS" if rest >= TARGET_REST_VS_ORIGINAL else "MISS",
            cpu["rest"],
        ),
        Row(
            where,
            "ours: gRPC StreamEvents x100 vs the original's REST",
            f">= {TARGET_STREAM_VS_ORIGINAL:.1f}x",
            f"{stream:.2f}x ({rate['stream']:,.0f} ev/s)",
            "PASS" if stream >= TARGET_STREAM_VS_ORIGINAL else "MISS",
            cpu["stream"],
        ),
    ]


class _Original:
    """The original's process, for its CPU time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


def _original_alive() -> bool:
    try:
        pid = int(ORIGINAL_PID.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma list of scripts to run ({','.join(SCRIPTS)})")
    parser.add_argument("--full", action="store_true", help="full sizes, not --quick")
    parser.add_argument("--out", default="/tmp/kimball-bench", help="where the outputs go")
    parser.add_argument("--no-original", action="store_true", help="skip the side by side")
    side = parser.add_argument_group("the side by side with the original")
    side.add_argument("--events", type=int, default=50_000, help="events per run (50,000)")
    side.add_argument("--users", type=int, default=25_000, help="users in the workload")
    side.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    side.add_argument("--connections", type=int, default=4, help="keep-alive clients (4)")
    args = parser.parse_args(argv)
    scripts = args.only.split(",") if args.only else list(SCRIPTS)
    if unknown := set(scripts) - set(SCRIPTS):
        parser.error(f"no such script: {', '.join(sorted(unknown))}; they are {','.join(SCRIPTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print_header("bench_all")
    started = time.perf_counter()
    rows: list[Row] = []
    for name in scripts:
        found, seconds, code = run_script(name, args.full, out)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(
            f"bench_{name}: {seconds:.0f} s, {len(found)} figures, {status}; "
            f"output in {out}/bench_{name}.txt"
        )
        rows += found or [Row(name, "(figures only: see its output)", "-", "-", "info", "-")]
        if code != 0:
            rows.append(Row(name, "the run", "exit 0", f"exit {code}", "MISS", "-"))
    if not args.no_original:
        if (ORIGINAL / "start.sh").exists():
            print("the original side by side ...")
            rows += original_side_by_side(args, out)
        else:
            print(f"no {ORIGINAL}: no side by side with the original")
    print("\n| script | figure | target | result | verdict | server CPU per event |")
    print("|---|---|---|---|---|---:|")
    for r in rows:
        print(f"| {r.script} | {r.figure} | {r.target} | {r.result} | {r.mark} | {r.cpu} |")
    marks = [r.mark for r in rows]
    print(
        f"\n{marks.count('PASS')} PASS, {marks.count('MISS')} MISS; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

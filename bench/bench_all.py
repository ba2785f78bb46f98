"""Every benchmark in a quick run, and one table of their verdicts (``make bench``).

Run from the repository root:

    .venv/bin/python bench/bench_all.py            # every script with --quick, a few minutes
    .venv/bin/python bench/bench_all.py --only core,streaming --full   # some, at full size

Runs each ``bench/bench_*.py`` script in turn (``--quick`` unless ``--full``), its whole
output kept in ``--out`` (one file per script), and collects the verdict lines the scripts
print (``PASS``, ``MISS`` or ``info``, a figure, its result and target, and the server CPU
per event behind a rate: ``figures.verdict``). The side by side with the original service
(``bench_ingest.py``: REST and ``StreamEvents`` into ``kimball serve`` and REST into the
original, built from ``../shared/original`` when it is there) always runs at its own
sizes, since its quick run is too short to compare rates (about 40 s); ``--no-original``
leaves the original out of it. Prints one table: figure, target, result, PASS/MISS,
server CPU per event. Timing is only printed, never asserted.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# run_options: a bench module next to this script.
from run_options import ROOT, print_header

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
    "ingest",
)
# Scripts run at their own sizes whatever ``--full`` says: the side by side with the
# original compares rates, which a quick run's few milliseconds cannot.
FULL_SIZE = frozenset({"ingest"})

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


def run_script(
    name: str, full: bool, out: Path, options: list[str]
) -> tuple[list[Row], float, int]:
    """One script's run with ``options``: its verdicts, seconds taken and exit code; its
    output in ``out``."""
    log = out / f"bench_{name}.txt"
    quick = [] if full or name in FULL_SIZE else ["--quick"]
    argv = [sys.executable, str(ROOT / "bench" / f"bench_{name}.py"), *quick, *options]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma list of scripts to run ({','.join(SCRIPTS)})")
    parser.add_argument("--full", action="store_true", help="full sizes, not --quick")
    parser.add_argument("--out", default="/tmp/kimball-bench", help="where the outputs go")
    parser.add_argument(
        "--no-original", action="store_true", help="leave the original out of bench_ingest"
    )
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
        options = ["--no-original"] if name == "ingest" and args.no_original else []
        found, seconds, code = run_script(name, args.full, out, options)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(
            f"bench_{name}: {seconds:.0f} s, {len(found)} figures, {status}; "
            f"output in {out}/bench_{name}.txt"
        )
        rows += found or [Row(name, "(figures only: see its output)", "-", "-", "info", "-")]
        if code != 0:
            rows.append(Row(name, "the run", "exit 0", f"exit {code}", "MISS", "-"))
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

"""The cluster benchmark (``bench/bench_cluster.py``) in a small run: it starts its NATS
clusters and replicas, and reports every part (ingest with the CPU per event and the
projection, fanned-out query latency, takeover after SIGTERM and SIGKILL). The figures of
docs/benchmarks.md come from its full run, a documented command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_cluster.py"


def test_the_cluster_benchmark_runs_every_part(tmp_path: Path) -> None:
    small = {
        "--events": 2000,
        "--users": 500,
        "--replicas": 2,
        "--rounds": 1,
        "--query-replicas": 2,
        "--queries": 10,
        "--takeover-events": 2000,
        "--lease-seconds": 2,
        "--snapshot-interval": 1,
    }
    run = subprocess.run(
        [sys.executable, str(BENCH), *(str(part) for item in small.items() for part in item)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    out = run.stdout
    assert "cluster ingest, 2 replica(s):" in out
    assert "| machines N | N / C events/s |" in out
    assert "GetAnalytics p50/p99 fanned out over 2 replicas" in out
    assert "owner SIGTERM:" in out
    assert "owner SIGKILL:" in out

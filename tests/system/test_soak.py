"""A minute of mixed load with a kill -9 halfway (``bench/soak.py``): nothing acknowledged is
lost, and no call fails while the server is up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_a_minute_of_mixed_load_with_a_kill_loses_nothing(tmp_path: Path) -> None:
    summary_file = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--seconds",
            "60",
            "--events-per-second",
            "3000",
            "--snapshot-interval",
            "10",
            "--rss-every",
            "5",
            "--json",
            str(summary_file),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(summary_file.read_text())
    assert summary["failed_checks"] == []
    for name, calls in summary["calls"].items():
        assert calls["errors"] == 0, name
        assert calls["ok"] > 0, name
    for name, counter in summary["counters"].items():
        # Everything acknowledged is there; what was in flight at the kill may or may not be.
        assert counter["acked"] <= counter["present"] <= counter["sent"], name
        assert counter["acked"] > 0, name
    assert len(summary["outage_seconds"]) == 1  # the kill happened and the server came back
    assert summary["subscription_events"] > 0

"""``make bench``'s table: the verdict lines the benchmark scripts print are the ones
``bench/bench_all.py`` collects, with their figure, result, target and CPU per event."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import each other by name
    return importlib.import_module("figures"), importlib.import_module("bench_all")


def test_a_verdict_line_is_read_back_whole(bench, capsys) -> None:
    figures, bench_all = bench
    figures.verdict(
        "fan-out, ingestion with 10 subscribers reading vs none", "81%", True, ">= 80%", 13.3
    )
    figures.verdict("memory", "worst 3.56x optimal (n = 17)", False, "<= 2x at every size", None)
    figures.verdict("replay", "1,000 ev/s", None, "-", None)
    lines = capsys.readouterr().out.splitlines()
    found = [bench_all.VERDICT.match(line) for line in lines]
    assert [(m["mark"], m["figure"], m["result"], m["target"], m["cpu"]) for m in found] == [
        ("PASS", "fan-out, ingestion with 10 subscribers reading vs none", "81%", ">= 80%", "13.3"),
        ("MISS", "memory", "worst 3.56x optimal (n = 17)", "<= 2x at every size", None),
        ("info", "replay", "1,000 ev/s", "-", None),
    ]


def test_lines_that_are_not_verdicts_are_left_out(bench) -> None:
    _, bench_all = bench
    for line in (
        "info  REST gateway vs no-op aiohttp server: 27%",
        "| none | 30,000 | 78,630 | -21/+2% | 100% | 10.7 µs |",
        "PASS: under 2048 MiB",
    ):
        assert bench_all.VERDICT.match(line) is None, line

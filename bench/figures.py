"""How the benchmark scripts time a pass and print what they found: medians with their
spread, samples with the CPU a server and this process spent, the rate table."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    """min-max around the median, in percent."""
    m = median(xs)
    return f"{(min(xs) / m - 1) * 100:+.0f}/{(max(xs) / m - 1) * 100:+.0f}%"


def with_range(xs: Sequence[float], fmt: str = ".2f") -> str:
    """The median, then min-max in brackets; for per-round ratios, where drift between rounds
    cancels out of each ratio (both sides were measured in the same round)."""
    return f"{median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def percentile(xs: Sequence[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], object]) -> float:
    """Seconds for one call of ``fn`` (a full pass), after a collection."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- samples with CPU ---------------------------------------------------------------------


class HasCpu(Protocol):
    def cpu_seconds(self) -> float: ...


@dataclass
class Sample:
    seconds: float
    units: int  # events or calls completed
    server_cpu: float  # seconds
    client_cpu: float  # seconds

    @property
    def rate(self) -> float:
        return self.units / self.seconds


def measure(server: HasCpu | None, run: Callable[[], int]) -> Sample:
    """One ``run`` (it returns the events or calls done), with the server's CPU and ours."""
    server_before = server.cpu_seconds() if server else 0.0
    client_before = time.process_time()
    start = time.perf_counter()
    units = run()
    seconds = time.perf_counter() - start
    client = time.process_time() - client_before
    server_cpu = server.cpu_seconds() - server_before if server else 0.0
    return Sample(seconds, units, server_cpu, client)


def table_head() -> None:
    print("| measurement | median rate | spread | server CPU | client CPU busy | ratio |")
    print("|---|---:|---:|---:|---:|---:|")


def row(name: str, samples: list[Sample], unit: str, per: str, reference: float | None) -> float:
    """A row of ``table_head``'s table; returns the median rate."""
    rates = [s.rate for s in samples]
    rate = median(rates)
    server = median([s.server_cpu / s.units * 1e6 for s in samples])
    client = median([s.client_cpu / s.seconds for s in samples])
    server_text = f"{server:,.1f} µs per {per}" if any(s.server_cpu for s in samples) else "-"
    ratio = f"{rate / reference:.0%}" if reference else "-"
    print(
        f"| {name} | {rate:,.0f} {unit}/s | {spread(rates)} | {server_text} "
        f"| {client:.0%} | {ratio} |"
    )
    return rate


# -- verdicts -------------------------------------------------------------------------------


def verdict(
    label: str, result: str, passed: bool | None, target: str, cpu_us: float | None
) -> None:
    """One line ``bench/bench_all.py`` collects into its table: ``PASS``, ``MISS`` or (no
    target: ``passed`` None) ``info``, the figure, its result and target, and the server's
    CPU per event behind a rate (``cpu_us``, when the figure is one). ``label`` holds no
    ": " (the first one ends it)."""
    mark = "info" if passed is None else "PASS" if passed else "MISS"
    cpu = "" if cpu_us is None else f" [server CPU {cpu_us:,.1f} µs/event]"
    print(f"{mark}  {label}: {result} (target {target}){cpu}")


def cpu_per_unit(samples: list[Sample]) -> float:
    """The median server CPU per event (or call) of ``samples``, in µs."""
    return median([s.server_cpu / s.units * 1e6 for s in samples])

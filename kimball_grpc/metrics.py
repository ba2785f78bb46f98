"""Prometheus metrics, in registries owned by one app instance.

``Metrics.registry`` is ``/metrics``: process metrics, request counts and
latencies per gRPC method, and Kimball's own series. ``counters_registry``
(``/metrics/counters``) and ``predictions_registry`` (``/metrics/predictions``)
are read from the engine when scraped. A fresh ``Metrics`` per server (and per
test) shares nothing with any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from kimball_grpc.core.counters import CounterKind
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import KimballError, LimitExceeded
from kimball_grpc.core.limits import LIMITS
from storage.snapshots import SnapshotStore
from storage.wal import WriteAheadLog

log = logging.getLogger(__name__)


# The paths the REST server serves metrics on: everything, then one sample per counter and
# per prediction (large: scraped apart, or not at all).
METRICS_PATHS = ("/metrics", "/metrics/counters", "/metrics/predictions")


class Metrics:
    """Every metric of one Kimball instance."""

    def __init__(self, engine: Engine | None, memory_limit_bytes: int | None = None) -> None:
        """``engine``: None on a sidecar, which keeps no counters."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "kimball_grpc_requests",
            "gRPC calls handled, by method and final status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "kimball_grpc_request_duration_seconds",
            "Time to handle a gRPC call, by method.",
            ["method"],
            registry=self.registry,
        )
        self.streams_open = Gauge(
            "kimball_streams_open",
            "Long-lived streams open (subscriptions, spec watches, event streams, relays), "
            "by gRPC method.",
            ["method"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "kimball_http_requests",
            "REST requests handled, by route, HTTP method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_request_seconds = Histogram(
            "kimball_http_request_duration_seconds",
            "Time to handle a REST request, by route.",
            ["route"],
            registry=self.registry,
        )
        self.http_connections = Gauge(
            "kimball_http_connections",
            "REST connections open now.",
            registry=self.registry,
        )
        self.http_connections_refused = Counter(
            "kimball_http_connections_refused",
            "REST connections refused (503) because KIMBALL_HTTP_MAX_CONNECTIONS were open.",
            registry=self.registry,
        )
        self.http_timeouts = Counter(
            "kimball_http_timeouts",
            "REST requests ended because their headers or body came too slowly, by phase.",
            ["phase"],
            registry=self.registry,
        )
        self.unauthenticated = Counter(
            "kimball_unauthenticated_requests",
            "Calls refused for a missing, wrong or repeated token, by API (grpc, rest).",
            ["api"],
            registry=self.registry,
        )
        self.api_tokens = Gauge(
            "kimball_api_tokens",
            "API tokens accepted now, from every source (app.config, KIMBALL_API_TOKENS, the "
            "token file).",
            registry=self.registry,
        )
        self.api_token_reloads = Counter(
            "kimball_api_token_reloads",
            "Re-reads of the API token file (on change or SIGHUP), by result: ok, or failed "
            "(the tokens of before are kept).",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "failed"):
            self.api_token_reloads.labels(result)
        self.event_add = Summary(
            "kimball_event_add_duration_microseconds",
            "Time to apply an event to its counters, in microseconds (averaged per batch).",
            registry=self.registry,
        )
        self.persist_counters_managed = Gauge(
            "kimball_persist_counters_managed",
            "Counters written in the last persist run (0 until storage runs).",
            registry=self.registry,
        )
        self.snapshots = Counter(
            "kimball_snapshots",
            "Snapshots attempted, by result: ok (stored and read back whole), failed (the "
            "backend failed), unverified (stored but did not read back whole: moved aside).",
            ["result"],
            registry=self.registry,
        )
        self.snapshot_sequence = Gauge(
            "kimball_snapshot_last_sequence",
            "Log sequence number the newest stored snapshot is complete up to.",
            registry=self.registry,
        )
        self.snapshot_seconds = Histogram(
            "kimball_snapshot_duration_seconds",
            "Time to take and store a snapshot.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.feature_usage_lost = Counter(
            "kimball_feature_usage_lost",
            "Feature usages not counted because their event could not be stored, by status.",
            ["code"],
            registry=self.registry,
        )
        self.limit_refusals = Counter(
            "kimball_limit_refusals",
            "Requests (and batches relayed by sidecars) refused because they would pass a "
            "limit, by limit.",
            ["limit"],
            registry=self.registry,
        )
        for limit in LIMITS:  # every limit's series from the start, at 0: ready to alert on
            self.limit_refusals.labels(limit.name)
        self.storage_up = Gauge(
            "kimball_snapshot_storage_up",
            "1 if the last call to the snapshot storage worked, 0 if it failed.",
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine, memory_limit_bytes))
        self.counters_registry = CollectorRegistry()
        self.predictions_registry = CollectorRegistry()
        if engine is not None:
            self.counters_registry.register(_CounterCollector(engine))
            self.predictions_registry.register(_PredictionCollector(engine))

    def exposition(self, path: str) -> bytes:
        """The text a scrape of ``path`` (one of ``METRICS_PATHS``) gets. A sample per
        counter: seconds for a large state; callers run it in a worker thread, which lets
        the event loop run every few ms (the GIL's switch interval); the collectors only
        read the engine, whose dicts and sets are copied in single C calls and only grow."""
        registries = {
            "/metrics": self.registry,
            "/metrics/counters": self.counters_registry,
            "/metrics/predictions": self.predictions_registry,
        }
        return generate_latest(registries[path])

    def watch_log(self, wal: WriteAheadLog) -> None:
        """Expose the write-ahead log's figures (read when scraped)."""
        self.registry.register(_WalCollector(wal))

    def watch_snapshots(self, snapshots: SnapshotStore) -> None:
        """Expose the snapshot store's figures (read when scraped)."""
        self.registry.register(_SnapshotsCollector(snapshots))

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        """One gRPC call finished with status ``code`` after ``seconds``."""
        self.requests.labels(method, code).inc()
        self.request_seconds.labels(method).observe(seconds)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """One REST request to ``route`` (its declared path) answered ``status``."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_request_seconds.labels(route).observe(seconds)

    def refuse_unauthenticated(self, api: str) -> None:
        """A call to ``api`` (grpc, rest) was refused for its token."""
        self.unauthenticated.labels(api).inc()

    def count_api_tokens(self, count: Callable[[], int]) -> None:
        """``kimball_api_tokens`` reads ``count()`` when scraped."""
        self.api_tokens.set_function(count)

    def observe_token_reload(self, result: str) -> None:
        """The token file was re-read: ``result`` ok or failed."""
        self.api_token_reloads.labels(result).inc()

    def lose_feature_usage(self, error: KimballError) -> None:
        """A flag evaluation was answered, but its usage event could not be stored."""
        self.feature_usage_lost.labels(error.grpc_code).inc()
        log.warning("a feature usage was not counted: %s", error.message)

    def refuse(self, error: LimitExceeded) -> None:
        """A request was refused by a limit."""
        self.limit_refusals.labels(error.limit).inc()

    def observe_events(self, count: int, seconds: float) -> None:
        """``count`` events were applied in ``seconds``."""
        if count:
            self.event_add.observe(seconds * 1e6 / count)


class _EngineCollector(Collector):
    """``kimball_counters``, the flag histories' changes and size, and
    ``memory_remaining_bytes``, computed when scraped."""

    def __init__(self, engine: Engine | None, memory_limit_bytes: int | None) -> None:
        self._engine = engine
        self._limit = memory_limit_bytes

    def collect(self) -> Iterator[Metric]:
        if self._engine is not None:
            yield GaugeMetricFamily(
                "kimball_counters",
                "Counters registered (global, named and weekly).",
                value=self._engine.all_counter_count,
            )
            yield GaugeMetricFamily(
                "kimball_feature_spec_history_changes",
                "Feature spec changes held in the flags' histories (the last 100 per flag; "
                "the histories of the last 1,000 deleted flags).",
                value=self._engine.flags.history_changes,
            )
            yield GaugeMetricFamily(
                "kimball_feature_spec_history_size_bytes",
                "About the bytes the flags' histories take (at most 16 MiB: past it, the "
                "oldest changes are dropped).",
                value=self._engine.flags.history_size,
            )
        if self._limit is not None:
            yield GaugeMetricFamily(
                "memory_remaining_bytes",
                "KUBERNETES_MEMORY_LIMIT minus this process's resident memory.",
                value=self._limit - resident_bytes(),
            )


class _WalCollector(Collector):
    """The write-ahead log: last record, segments on disk, fsyncs, refused appends."""

    def __init__(self, wal: WriteAheadLog) -> None:
        self._wal = wal

    def collect(self) -> Iterator[Metric]:
        wal = self._wal
        yield GaugeMetricFamily(
            "kimball_wal_last_sequence",
            "Sequence number of the last logged record.",
            value=wal.last_sequence,
        )
        yield GaugeMetricFamily(
            "kimball_wal_segments",
            "Write-ahead log segment files on disk.",
            value=wal.segment_count(),
        )
        yield CounterMetricFamily(
            "kimball_wal_fsyncs", "fsyncs of the write-ahead log.", value=wal.syncs
        )
        yield CounterMetricFamily(
            "kimball_wal_refused_appends",
            "Batches refused because the write-ahead log could not be written (disk error).",
            value=wal.refused,
        )
        yield CounterMetricFamily(
            "kimball_wal_skipped_records",
            "Records lost at start-up to a damaged write-ahead log or snapshot, skipped "
            "because the operator chose --wal-skip-damaged.",
            value=wal.skipped_records,
        )


class _SnapshotsCollector(Collector):
    """The snapshot store: damaged snapshots moved aside."""

    def __init__(self, snapshots: SnapshotStore) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "kimball_snapshots_moved_aside",
            "Snapshots that did not read back whole (at start-up or right after being "
            "written), moved to snapshots/damaged/.",
            value=self._snapshots.moved_aside,
        )


class _CounterCollector(Collector):
    """``kimball_counter`` and ``kimball_counter_weekly``: unique users per counter."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        named = GaugeMetricFamily(
            "kimball_counter", "Unique users of an event.", labels=["kimball_namespace", "name"]
        )
        weekly = GaugeMetricFamily(
            "kimball_counter_weekly",
            "Unique users of an event in one ISO week.",
            labels=["kimball_namespace", "name", "year", "week"],
        )
        for namespace in self._engine.namespaces():
            for counter in self._engine.counters(namespace):
                if counter.kind is CounterKind.WEEKLY:
                    labels = [namespace, counter.name, str(counter.iso_year), str(counter.iso_week)]
                    weekly.add_metric(labels, counter.count)
                else:
                    named.add_metric([namespace, counter.name], counter.count)
        yield named
        yield weekly


class _PredictionCollector(Collector):
    """``kimball_bayes_prediction``: P(goal | event) per goal and prior event."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kimball_bayes_prediction",
            "Probability that users who did the event reach the goal.",
            labels=["kimball_namespace", "goal", "event"],
        )
        for namespace in self._engine.namespaces():
            for goal, per_event in self._engine.event_predictions(namespace).items():
                for event, bayes in per_event.items():
                    family.add_metric([namespace, goal, event], bayes)
        yield family


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0

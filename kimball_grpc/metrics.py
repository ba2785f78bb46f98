"""Prometheus metrics, in registries owned by one app instance.

``Metrics.registry`` is ``/metrics``: process metrics, the gRPC server metrics under
the grpc-ecosystem names, REST request metrics, and Kimball's own series, all in
Prometheus's conventions (``promtool check metrics`` finds nothing). ``counters_registry``
(``/metrics/counters``) and ``predictions_registry`` (``/metrics/predictions``) are read
from the engine when scraped, under the original service's names (with its two other
names that the conventions flag). A fresh ``Metrics`` per server (and per test) shares
nothing with any other.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Protocol

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

GRPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
INGESTING_APIS = ("rest", "grpc", "sidecar")  # the api label of kimball_events_ingested_total
# The reason label of kimball_events_refused_total: a bounded set, as every label's.
REFUSAL_REASONS = ("invalid", "limit", "unauthenticated", "too_large", "unavailable")
# What the status of a refused ingestion call says, for calls refused before their events
# reached the ingestion path (which counts the others itself, with their events): by gRPC
# status code name, and by REST status.
REFUSAL_BY_GRPC_CODE = {
    "INVALID_ARGUMENT": "invalid",
    "OUT_OF_RANGE": "invalid",
    "RESOURCE_EXHAUSTED": "limit",  # a limit on open streams
    "UNAUTHENTICATED": "unauthenticated",
    "UNAVAILABLE": "unavailable",
}
REFUSAL_BY_HTTP_STATUS = {
    400: "invalid",
    401: "unauthenticated",
    413: "too_large",
    429: "limit",
    503: "unavailable",
}


# The paths the REST server serves metrics on: everything, then one sample per counter and
# per prediction (large: scraped apart, or not at all).
METRICS_PATHS = ("/metrics", "/metrics/counters", "/metrics/predictions")


class HttpMetrics(Protocol):
    """What the REST gateway counts: ``Metrics`` in the server process; in a REST worker
    process, a recorder that hands each count to the server process (``HTTP_METRICS``)."""

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None: ...
    def refuse_request(self, status: int) -> None: ...
    def refuse_events(self, code: str, count: int = 1) -> None: ...
    def open_http_connections(self, change: int) -> None: ...
    def refuse_http_connection(self) -> None: ...
    def time_out_http(self, phase: str) -> None: ...


# The methods of ``HttpMetrics``: the counts a REST worker process may hand over.
HTTP_METRICS = frozenset(
    name
    for name in vars(HttpMetrics)
    if not name.startswith("_") and callable(vars(HttpMetrics)[name])
)


class Metrics:
    """Every metric of one Kimball instance."""

    def __init__(self, engine: Engine | None, memory_limit_bytes: int | None = None) -> None:
        """``engine``: None on a sidecar, which keeps no counters."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.build_info = Gauge(
            "kimball_build_info",
            "1, labelled with the version of Kimball and of Python this server runs.",
            ["version", "python_version"],
            registry=self.registry,
        )
        self.build_info.labels(_version(), platform.python_version()).set(1)
        # gRPC server metrics under the names of the grpc-ecosystem interceptors
        # (go-grpc-prometheus, py-grpc-prometheus), so their dashboards and alerts work.
        # grpc_code is the status code's name as Python's grpc spells it (INVALID_ARGUMENT).
        self.grpc_started = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            GRPC_LABELS,
            registry=self.registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*GRPC_LABELS, "grpc_code"],
            registry=self.registry,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            GRPC_LABELS,
            registry=self.registry,
        )
        self.grpc_received = Counter(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server (streaming calls).",
            GRPC_LABELS,
            registry=self.registry,
        )
        self.grpc_sent = Counter(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server (streaming calls).",
            GRPC_LABELS,
            registry=self.registry,
        )
        # Events are counted where they are applied: on an api server (a sidecar's are
        # counted there when relayed, api="sidecar"; its spool has its own metrics).
        self.counts_events = engine is not None
        if self.counts_events:
            self._events_metrics()
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
        self.rest_worker_restarts = Counter(
            "kimball_rest_worker_restarts",
            "REST worker processes started again in the place of one that died.",
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
        self.event_add = Histogram(
            "kimball_event_add_duration_seconds",
            "Time to apply an event to its counters (averaged over each batch).",
            buckets=(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2),
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
        if engine is not None:
            self.registry.register(_EngineCollector(engine))
        self.counters_registry = CollectorRegistry()
        self.predictions_registry = CollectorRegistry()
        # The original service's names that Prometheus's conventions flag (a unit other
        # than seconds, no kimball_ prefix) are kept where its users scrape them beside
        # kimball_counter (itself flagged: the type in its name), on /metrics/counters;
        # /metrics has the same figures under names that follow the conventions.
        self.event_add_microseconds = Summary(
            "kimball_event_add_duration_microseconds",
            "Time to apply an event to its counters, in microseconds (averaged per batch); "
            "the original service's name (/metrics: kimball_event_add_duration_seconds).",
            registry=self.counters_registry,
        )
        if memory_limit_bytes is not None:
            self.registry.register(
                _MemoryCollector("kimball_memory_remaining_bytes", memory_limit_bytes)
            )
            self.counters_registry.register(
                _MemoryCollector("memory_remaining_bytes", memory_limit_bytes)
            )
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

    def _events_metrics(self) -> None:
        self.events_ingested = Counter(
            "kimball_events_ingested",
            "Events accepted into the state, by the API they came through: rest, grpc, or "
            "sidecar (relayed by sidecars).",
            ["api"],
            registry=self.registry,
        )
        self.events_refused = Counter(
            "kimball_events_refused",
            "Events refused, by reason: invalid, limit, unauthenticated, too_large, "
            "unavailable. A request refused before its events were read counts as one.",
            ["reason"],
            registry=self.registry,
        )
        for api in INGESTING_APIS:  # every series from the start, at 0: ready for rate()
            self.events_ingested.labels(api)
        for reason in REFUSAL_REASONS:
            self.events_refused.labels(reason)

    def watch_log(self, wal: WriteAheadLog) -> None:
        """Expose the write-ahead log's figures (read when scraped)."""
        self.registry.register(_WalCollector(wal))

    def watch_snapshots(self, snapshots: SnapshotStore) -> None:
        """Expose the snapshot store's figures (read when scraped)."""
        self.registry.register(_SnapshotsCollector(snapshots))

    def watch_ownership(self) -> OwnershipMetrics:
        """The partition ownership series of a cluster replica (registered only there)."""
        return OwnershipMetrics(self.registry)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """One REST request to ``route`` (its declared path) answered ``status``."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_request_seconds.labels(route).observe(seconds)

    def open_http_connections(self, change: int) -> None:
        """``change`` REST connections opened (closed, if negative)."""
        self.http_connections.inc(change)

    def refuse_http_connection(self) -> None:
        """A REST connection was refused: ``KIMBALL_HTTP_MAX_CONNECTIONS`` were open."""
        self.http_connections_refused.inc()

    def time_out_http(self, phase: str) -> None:
        """A REST request was ended because its ``phase`` (headers, body) came too slowly."""
        self.http_timeouts.labels(phase).inc()

    def restart_rest_worker(self) -> None:
        """A REST worker process died and another was started in its place."""
        self.rest_worker_restarts.inc()

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
            self.event_add.observe(seconds / count)
            self.event_add_microseconds.observe(seconds * 1e6 / count)

    def ingest_events(self, api: str, count: int) -> None:
        """``count`` events came in through ``api`` (one of ``INGESTING_APIS``)."""
        if self.counts_events:
            self.events_ingested.labels(api).inc(count)

    def refuse_events(self, code: str, count: int = 1) -> None:
        """``count`` events were refused with the gRPC status named ``code``. A status that
        is no refusal (the caller cancelled, its deadline passed) is not counted."""
        reason = REFUSAL_BY_GRPC_CODE.get(code)
        if reason is not None and self.counts_events:
            self.events_refused.labels(reason).inc(count)

    def refuse_request(self, status: int) -> None:
        """A REST request carrying events was answered ``status`` before its events were
        read (or reached the ingestion path): one refused event, if ``status`` refuses."""
        reason = REFUSAL_BY_HTTP_STATUS.get(status)
        if reason is not None and self.counts_events:
            self.events_refused.labels(reason).inc()


class OwnershipMetrics:
    """A cluster replica's partitions: how many it applies, moves, lease losses, and the
    time from gaining a partition to having applied the stream up to where it stood."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.owned = Gauge(
            "kimball_partitions_owned",
            "Partitions this replica applies now.",
            registry=registry,
        )
        self.moves = Counter(
            "kimball_partition_moves",
            "Partitions this replica gained or lost, by direction.",
            ["direction"],
            registry=registry,
        )
        for direction in ("gained", "lost"):
            self.moves.labels(direction)
        self.lease_losses = Counter(
            "kimball_lease_losses",
            "Times this replica's membership lease lapsed or was found gone (it then stops "
            "applying every partition).",
            registry=registry,
        )
        self.takeover_seconds = Histogram(
            "kimball_partition_takeover_seconds",
            "From gaining a partition to having applied its stream up to the last message "
            "there when it was gained (snapshot loaded, the rest replayed).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )


class _EngineCollector(Collector):
    """``kimball_counters`` and the flag histories' changes and size, computed when
    scraped."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
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


class _MemoryCollector(Collector):
    """The memory left below ``KUBERNETES_MEMORY_LIMIT``, as ``name``, read when scraped."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        self._name = name
        self._limit = limit_bytes

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            self._name,
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


def _version() -> str:
    """The installed distribution's version ("unknown" when run from a source tree)."""
    try:
        return metadata.version("kimball")
    except metadata.PackageNotFoundError:
        return "unknown"


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0

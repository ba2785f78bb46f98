"""Server start-up and shutdown: the engine behind gRPC (api mode), or a sidecar; and ``serve``,
which runs either with the REST gateway until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.process import BaseProcess
from typing import Any

import grpc

from gateway.server import (
    BACKLOG,
    RunningGateway,
    listening_sockets,
    network_channel,
    start_gateway,
)
from kimball_grpc.api.auth import TokenChecker, load_api_tokens
from kimball_grpc.api.batch_intake import IntakeChannel, IntakeServer
from kimball_grpc.api.cluster_events import ClusterKimballService
from kimball_grpc.api.cluster_service import ClusterService
from kimball_grpc.api.grpc_front import (
    API_SERVICE,
    CLUSTER_SERVICE,
    INTEGRATION_SERVICE,
    RELAY_SERVICE,
    SHUTDOWN_GRACE_SECONDS,
    GrpcFront,
    RunningFront,
)
from kimball_grpc.api.ingest import Ingestor, RecordLog
from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.api.servicers import KimballIntegration, KimballRelay, KimballService
from kimball_grpc.cluster import event_log
from kimball_grpc.cluster.event_feed import ClusterEventFeed
from kimball_grpc.cluster.event_log import JetStreamLog, NatsOptions
from kimball_grpc.cluster.jetstream_start import (
    JetStreamUnavailable,
    reason,
    when_jetstream_answers,
)
from kimball_grpc.cluster.membership import LeaseMismatch, Membership
from kimball_grpc.cluster.name_store import NameStore
from kimball_grpc.cluster.partition_state import PartitionEngines
from kimball_grpc.cluster.record_buckets import ReplicatedRecords
from kimball_grpc.cluster.spec_store import SpecStore
from kimball_grpc.config.garbage_collection import configure_garbage_collection
from kimball_grpc.config.logs import configure_logging
from kimball_grpc.config.settings import FeatureSpecStore, Mode, Settings, storage_config
from kimball_grpc.config.tls import ServerTls, load_server_tls
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import cluster_pb2_grpc as cluster_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.generated.kimball.v1 import relay_pb2_grpc as relay_grpc
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.channels import target_address
from kimball_grpc.outbound.cluster_fanout import ClusterFanOut, Owners
from kimball_grpc.outbound.external_predictions import ExternalPredictions
from kimball_grpc.outbound.kubernetes import ConfigMaps, KubernetesAccess
from kimball_grpc.persistence import Persistence
from kimball_grpc.sidecar.server import RunningSidecar, start_sidecar
from kimball_grpc.streaming.event_forwarding import EventForwarding
from kimball_grpc.streaming.spec_configmaps import (
    ConfigMapRef,
    SpecConfigMapMetrics,
    SpecConfigMaps,
)
from kimball_grpc.streaming.subscriptions import SubscriptionHub
from storage.blob_store import StorageError
from storage.location import open_blob_store
from storage.snapshots import SnapshotStore
from storage.wal import DamagedLog, WriteAheadLog

log = logging.getLogger(__name__)

FORWARD_DRAIN_SECONDS = 2.0
API_SERVICES = (API_SERVICE, INTEGRATION_SERVICE, RELAY_SERVICE)
# In the data directory: the home ConfigMap's resourceVersion as this server last wrote it.
SPEC_CONFIGMAP_MARKER = "feature-specs-configmap.json"


@dataclass
class RunningServer(RunningFront):
    """A started api-mode server and the parts behind it."""

    engine: Engine
    ingestor: Ingestor
    hub: SubscriptionHub
    persistence: Persistence
    external: ExternalPredictions
    forwarding: EventForwarding
    spec_configmaps: SpecConfigMaps | None = None  # the configmap feature spec store

    @property
    def state_location(self) -> str:
        """Where the state lives, for the start-up log line."""
        return (
            f"restoring the state from {self.persistence.snapshots.blobs.uri} "
            f"and {self.persistence.wal.directory}"
        )

    async def stop(self, grace: float | None = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop accepting calls, let in-flight ones finish (up to ``grace`` seconds), then
        take a last snapshot and close the write-ahead log."""
        await self.front.stop(grace)  # live streams end first: they do not hold the grace
        # After the last call: what it accepted is queued; a little time to deliver it.
        await self.forwarding.stop(drain_timeout=FORWARD_DRAIN_SECONDS if grace else 0.0)
        await self.external.close()
        if self.spec_configmaps is not None:
            await self.spec_configmaps.stop()
        if not self.ready.done():
            self.persistence.abandon_restore()  # the worker thread stops at its next counter
            self.ready.cancel()  # still restoring: nothing new to keep
        elif not self.ready.cancelled() and self.ready.exception() is None:
            await self.persistence.close()


async def start_server(
    settings: Settings, *, owners: Owners | None = None
) -> RunningServer | RunningReplica:
    """Build and start the gRPC server. It answers at once; health says NOT_SERVING and the
    API answers UNAVAILABLE until the state is restored (``RunningServer.ready``). With NATS
    URLs set, a cluster replica (``start_replica``, asking ``owners`` if given)."""
    if settings.cluster_mode:
        return await start_replica(settings, owners=owners)
    configmaps = None
    if settings.feature_spec_store is FeatureSpecStore.CONFIGMAP:
        configmaps = await ConfigMaps.connect(
            KubernetesAccess(
                settings.kubeconfig,
                settings.kubernetes_service_host,
                settings.kubernetes_service_port,
            )
        )
    engine = Engine(settings.counter_config)
    metrics = Metrics(engine, settings.kubernetes_memory_limit)
    wal = WriteAheadLog(
        settings.wal_dir,
        settings.wal_fsync,
        fsync_interval=settings.wal_fsync_interval_ms / 1000,
        skip_damaged=settings.wal_skip_damaged,
    )
    metrics.watch_log(wal)
    try:
        blobs = open_blob_store(settings.storage or storage_config(settings))
    except (ValueError, StorageError) as exc:
        raise ConfigError(f"storage: {exc}") from None
    snapshots = SnapshotStore(blobs, keep=settings.snapshots_kept)
    metrics.watch_snapshots(snapshots)
    persistence = Persistence(
        engine,
        wal,
        snapshots,
        metrics,
        interval=settings.snapshot_interval_s,
        counter_startup_delay=settings.counter_startup_delay_ms / 1000,
    )
    front, ingestor, hub, external, forwarding = _api_services(settings, engine, metrics, wal)
    spec_configmaps = None
    if configmaps is not None:
        spec_configmaps = _spec_configmaps(settings, engine, ingestor, configmaps, metrics)
    await front.start()
    forwarding.start()
    ready = asyncio.get_running_loop().create_task(
        _become_ready(persistence, front, spec_configmaps)
    )
    return RunningServer(
        front=front,
        metrics=metrics,
        ready=ready,
        engine=engine,
        ingestor=ingestor,
        hub=hub,
        persistence=persistence,
        external=external,
        forwarding=forwarding,
        spec_configmaps=spec_configmaps,
    )


@dataclass
class RunningReplica(RunningFront):
    """A started cluster replica (docs/scale-out.md): the APIs' writes published to the
    JetStream stream, the partitions applied from it into their engines."""

    ingestor: Ingestor
    partitions: PartitionEngines
    membership: Membership
    connection: Any  # the NATS connection
    forwarding: EventForwarding
    external: ExternalPredictions
    replica_id: str
    fan_out: ClusterFanOut  # the queries of counts, asked of every partition's owner
    feed: ClusterEventFeed[SubscriptionHub]  # the stream's events for its subscribers
    specs: ReplicatedRecords
    names: ReplicatedRecords

    @property
    def state_location(self) -> str:
        return (
            f"cluster replica {self.replica_id} on NATS {self.connection.connected_url.netloc}, "
            f"partition snapshots in {self.partitions.blobs.uri}"
        )

    async def stop(self, grace: float | None = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop taking calls, let in-flight ones finish, stop applying the stream, store a
        last snapshot of each partition that changed, release the partitions (the others
        take them over at once, from those snapshots), then close the NATS connection."""
        await self.front.stop(grace)
        await self.forwarding.stop(drain_timeout=FORWARD_DRAIN_SECONDS if grace else 0.0)
        await self.external.close()
        await self.fan_out.close()
        await self.feed.stop()
        await self.partitions.stop()
        await self.specs.stop()
        await self.names.stop()
        if not self.ready.done():
            self.ready.cancel()
        elif not self.ready.cancelled() and self.ready.exception() is None and grace:
            await self.partitions.snapshot()
        await self.membership.stop()
        await event_log.close_connection(self.connection)


async def start_replica(settings: Settings, *, owners: Owners | None = None) -> RunningReplica:
    """Connect to NATS, create or check the stream (``ConfigError`` if it cannot be used),
    join the membership (``ConfigError`` for another lease), start the gRPC server, then
    apply the partitions this replica owns. Queries ask ``owners`` which replica answers for
    each partition (default: the membership's claims)."""
    options = NatsOptions(settings.nats_urls, settings.nats_creds_file, settings.replica_id)
    connection = await event_log.connect(options)
    try:
        js = connection.jetstream(publish_async_max_pending=event_log.MAX_IN_FLIGHT)
        await when_jetstream_answers(
            f"the JetStream stream {event_log.STREAM}",
            lambda: event_log.ensure_stream(js, settings.partitions, settings.nats_stream_replicas),
        )
        blobs = open_blob_store(settings.storage or storage_config(settings))
    except JetStreamUnavailable as exc:
        await event_log.close_connection(connection)
        raise ConfigError(str(exc)) from None
    except (ValueError, StorageError) as exc:
        await event_log.close_connection(connection)
        raise ConfigError(f"storage: {exc}") from None
    except BaseException:
        await event_log.close_connection(connection)
        raise
    # Holds no counts (the partitions' engines do): the feature specs, and every name
    # known in the cluster (one sample event each), which the limits are checked against.
    engine = Engine(settings.counter_config)
    metrics = Metrics(engine, settings.kubernetes_memory_limit)
    ownership = metrics.watch_ownership()
    membership = Membership(
        connection,
        settings.replica_id,
        settings.advertise_address,  # or the host name and port, once the port is bound
        settings.partitions,
        settings.lease_seconds,
        bucket_replicas=settings.nats_stream_replicas,
        on_lease_lost=ownership.lease_losses.inc,
    )
    partitions = PartitionEngines(
        settings.partitions,
        settings.counter_config,
        blobs,
        "cluster/partitions/",  # shared: a partition's next owner loads them
        membership,
        ownership,
        keep=settings.snapshots_kept,
    )
    log = JetStreamLog(js, settings.partitions, settings.replica_id)
    hub = SubscriptionHub(settings.subscriber_buffer_events)
    feed = ClusterEventFeed(js, hub)  # fills the hub while it has subscribers
    # The feature specs and the known names: applied to ``engine`` from their replicated
    # buckets, written there.
    specs = ReplicatedRecords(SpecStore(connection, settings.nats_stream_replicas))
    names = ReplicatedRecords(NameStore(connection, settings.nats_stream_replicas))
    front = GrpcFront(settings, metrics, (*API_SERVICES, CLUSTER_SERVICE))
    fan_out = ClusterFanOut(
        owners or membership.owners,
        settings.partitions,
        settings.cluster_query_deadline_ms / 1000,
        settings.max_response_bytes,
        metrics.registry,
        tls=settings.client_tls,
        token=front.own_token(),  # every replica shares the configuration, its tokens too
    )
    _, ingestor, _, external, forwarding = _api_services(
        settings,
        engine,
        metrics,
        log,
        front=front,
        cluster=fan_out,
        feed=feed,
        specs=specs,
        names=names,
    )
    cluster_grpc.add_KimballClusterServicer_to_server(
        ClusterService(
            partitions.caught_up,
            settings.partitions,
        ),
        front.handlers,
    )
    await front.start()
    membership.address = advertised_address(settings, front.port)
    try:
        await membership.start()
    except (LeaseMismatch, JetStreamUnavailable) as exc:
        await front.stop(None)
        await event_log.close_connection(connection)
        raise ConfigError(str(exc)) from None
    forwarding.start()
    ready = asyncio.get_running_loop().create_task(
        _replica_ready(
            partitions, js, front, settings.snapshot_interval_s, (specs, names), ingestor
        )
    )
    return RunningReplica(
        front=front,
        metrics=metrics,
        ready=ready,
        ingestor=ingestor,
        partitions=partitions,
        membership=membership,
        connection=connection,
        forwarding=forwarding,
        external=external,
        replica_id=settings.replica_id,
        fan_out=fan_out,
        feed=feed,
        specs=specs,
        names=names,
    )


async def _replica_ready(
    partitions: PartitionEngines,
    js: Any,
    front: GrpcFront,
    interval: float,
    replicated: tuple[ReplicatedRecords, ...],
    ingestor: Ingestor,
) -> None:
    """Apply the feature specs and known names, follow the membership (each partition
    gained is loaded from its snapshot and the stream replayed after it, in the
    background), take calls, and snapshot the owned partitions every ``interval`` seconds."""
    for state in replicated:
        await state.start(ingestor.apply_replicated)
    await partitions.start(js)
    await front.open()
    partitions.start_snapshots(interval)


def advertised_address(settings: Settings, bound_port: int) -> str:
    """Where the other replicas reach this replica's gRPC port: ``advertise_address``,
    else the address it listens on when that is one address, else the host name, with
    ``bound_port`` (``grpc_port``, or the port picked for 0). A StatefulSet pod's host
    name resolves through its headless service."""
    if settings.advertise_address:
        return settings.advertise_address
    wildcard = settings.grpc_host in ("", "0.0.0.0", "::")
    return target_address(socket.gethostname() if wildcard else settings.grpc_host, bound_port)


def _api_services(
    settings: Settings,
    engine: Engine,
    metrics: Metrics,
    log: RecordLog,
    *,
    front: GrpcFront | None = None,
    cluster: ClusterFanOut | None = None,
    feed: ClusterEventFeed[SubscriptionHub] | None = None,
    specs: ReplicatedRecords | None = None,
    names: ReplicatedRecords | None = None,
) -> tuple[GrpcFront, Ingestor, SubscriptionHub, ExternalPredictions, EventForwarding]:
    """The gRPC front (``front``, else one for the api mode's services) with the api mode's
    services registered, and the parts behind them; ``cluster``: a replica's (the records
    applied by the partitions, the queries of counts asked of every partition's owner; the
    feature specs written to ``specs``, new names registered in ``names``, the
    subscribers' hub fed the stream's events by ``feed``)."""
    hub = feed.hub if feed is not None else SubscriptionHub(settings.subscriber_buffer_events)
    forwarding = EventForwarding(settings.external_grpc_event_targets, metrics.registry)
    ingestor = Ingestor(
        engine,
        None if feed is not None else hub,  # in cluster mode the subscribers read the stream
        observe_events=metrics.observe_events,
        log=log,
        forwarding=forwarding,
        limits=settings.state_limits,
        refused=metrics.refuse,
        counted=metrics,
        applied_elsewhere=cluster is not None,
        specs=specs,
        names=names,
    )
    front = front or GrpcFront(settings, metrics, API_SERVICES)
    external = ExternalPredictions(
        settings.external_grpc_prediction_targets,
        metrics.registry,
        deadline=settings.external_prediction_deadline_ms / 1000,
    )
    service = KimballService if feed is None else partial(ClusterKimballService, feed=feed)
    pb_grpc.add_KimballServiceServicer_to_server(
        service(
            engine,
            ingestor,
            hub,
            external,
            metrics.lose_feature_usage,
            settings.max_response_bytes,
            cluster=cluster,
        ),
        front.handlers.serializing(KimballService.SERIALIZED_RESPONSES),
    )
    integration_grpc.add_KimballIntegrationServicer_to_server(
        KimballIntegration(engine, ingestor, cluster), front.handlers
    )
    relay_grpc.add_KimballRelayServicer_to_server(KimballRelay(ingestor), front.handlers)
    return front, ingestor, hub, external, forwarding


def _spec_configmaps(
    settings: Settings, engine: Engine, ingestor: Ingestor, configmaps: ConfigMaps, metrics: Metrics
) -> SpecConfigMaps:
    """The configmap feature spec store: the home ConfigMap and one copy per additional
    namespace (the home one itself and repeats left out)."""
    home = ConfigMapRef(settings.feature_spec_configmap_namespace, settings.feature_spec_configmap)
    copies = dict.fromkeys(
        ConfigMapRef(namespace, settings.feature_spec_configmap_copy)
        for namespace in settings.additional_namespaces
    )
    copies.pop(home, None)
    return SpecConfigMaps(
        engine.flags,
        ingestor.spec_changes.next_change,
        ingestor.put_feature_spec,
        configmaps,
        home,
        tuple(copies),
        settings.data_dir / SPEC_CONFIGMAP_MARKER,
        SpecConfigMapMetrics(metrics.registry),
    )


async def _become_ready(
    persistence: Persistence, front: GrpcFront, spec_configmaps: SpecConfigMaps | None
) -> None:
    """Restore the state, then take calls and start the periodic snapshots (and the
    ConfigMap feature spec store)."""
    try:
        await persistence.restore()
    except (StorageError, DamagedLog) as exc:  # the log is unusable or lacks records
        log.error("cannot start: %s", exc.message)
        raise
    await front.open()
    persistence.start_snapshots()
    if spec_configmaps is not None:
        spec_configmaps.start()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    stop = stop_signals()  # from the start: a signal during start-up stops it too
    hangup = HangUp()
    running: RunningServer | RunningReplica | RunningSidecar
    if settings.mode is Mode.SIDECAR:
        running = await start_sidecar(settings)
    else:
        running = await start_server(settings)
    hangup.action = running.reload_tokens
    gateway: RunningGateway | RestWorkers
    try:
        if settings.rest_workers and isinstance(running, RunningServer):
            gateway = await start_rest_workers(settings, running)
            hangup.action = gateway.hang_up(running.reload_tokens)
        else:
            gateway = await _start_rest(
                settings,
                running.local_channel,
                running.metrics,
                running.checker,
                settings.server_tls,
            )
    except ConfigError:
        await running.stop(grace=None)
        raise
    log.info(
        "Kimball listening: gRPC on %s (health, reflection on)%s, REST on %s%s; %s",
        target_address(settings.grpc_host, running.grpc_port),
        _tls_note(settings),
        target_address(settings.rest_host, gateway.port),
        _tls_note(settings),
        running.state_location,
    )
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopped, running.ready], return_when=asyncio.FIRST_COMPLETED)
    if running.ready.done():
        failure = running.ready.exception()
        if failure is not None:
            stopped.cancel()
            await gateway.stop()
            await running.stop(grace=None)
            raise ConfigError(f"cannot start: {reason(failure)}")
        log.info("Kimball ready: taking calls")
    await stopped
    log.info("Shutting down: finishing in-flight calls")
    await gateway.stop()
    await running.stop()
    log.info("Stopped")


async def _start_rest(
    settings: Settings,
    channel: grpc.aio.Channel | LocalChannel | IntakeChannel,
    metrics: Metrics | None,
    checker: TokenChecker | None,
    tls: ServerTls | None,
    **more: Any,
) -> RunningGateway:
    """The REST gateway where ``settings`` say, within their limits, over ``channel``;
    ``more``: ``start_gateway``'s shared sockets and metrics source."""
    return await start_gateway(
        settings.rest_host,
        settings.api_port,
        channel,
        metrics,
        checker,
        settings.http_limits,
        tls.context if tls else None,
        access_log=settings.access_log,
        **more,
    )


# A REST worker ends its requests within this (aiohttp's shutdown, its calls' timeout);
# one that has not ended by then is killed.
REST_WORKER_STOP_SECONDS = 35.0
# A worker that died is started again after this, doubled for each death in a row (a
# worker that dies at once, again and again, is not restarted in a busy loop), at most
# the last; a worker that served this long before dying counts as the first death again.
REST_WORKER_RESTART_SECONDS = (0.5, 30.0)
REST_WORKER_HEALTHY_SECONDS = 60.0


@dataclass
class RestWorkers:
    """REST served by worker processes sharing the REST socket (``rest_workers``); their
    batches and calls are taken in this process, which keeps the socket to start a worker
    again in the place of one that died."""

    start_worker: Callable[[], tuple[BaseProcess, asyncio.Task]]
    count: int
    port: int
    sockets: list[socket.socket]
    restarts: Callable[[], None]  # counts a restart in the metrics
    processes: list[BaseProcess] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _slots: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> None:
        """Start the workers, each kept running (``_keep``)."""
        for index in range(self.count):
            process, serving = self.start_worker()
            self.processes.append(process)
            self._slots.append(asyncio.ensure_future(self._keep(index, serving)))

    async def _keep(self, index: int, serving: asyncio.Task) -> None:
        """Start worker ``index`` again each time it dies, until the server stops; the
        other workers serve the port meanwhile (with none, connections wait in the
        kernel's backlog until it is back)."""
        loop = asyncio.get_running_loop()
        deaths = 0
        started = loop.time()
        while True:
            await asyncio.gather(serving, return_exceptions=True)  # its link closed
            if self.stopping.is_set():
                return
            process = self.processes[index]
            await asyncio.to_thread(process.join, REST_WORKER_STOP_SECONDS)  # no zombie
            deaths = 1 if loop.time() - started >= REST_WORKER_HEALTHY_SECONDS else deaths + 1
            first, most = REST_WORKER_RESTART_SECONDS
            delay = min(first * 2 ** (deaths - 1), most)
            log.error(
                "REST worker %s ended (exit code %s); starting another in %.1f s",
                process.pid,
                process.exitcode,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            self.processes[index], serving = self.start_worker()
            started = loop.time()
            self.restarts()
            log.info("REST worker %s started", self.processes[index].pid)

    def hang_up(self, reload_tokens: Callable[[], None]) -> Callable[[], None]:
        """What SIGHUP does: re-read the tokens here and in every worker."""

        def hang_up() -> None:
            reload_tokens()
            for process in self.processes:
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGHUP)

        return hang_up

    async def stop(self) -> None:
        """Stop the workers first (SIGTERM: each finishes its requests, whose batches this
        process still takes), then stop taking batches."""
        self.stopping.set()
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        await asyncio.to_thread(_join, self.processes, REST_WORKER_STOP_SECONDS)
        await asyncio.gather(*self._slots, return_exceptions=True)
        for sock in self.sockets:
            sock.close()


def _join(processes: list[BaseProcess], seconds: float) -> None:
    for process in processes:
        process.join(seconds)
        if process.is_alive():
            log.warning("REST worker %s did not stop in %.0f s: killed", process.pid, seconds)
            process.kill()
            process.join()


async def start_rest_workers(settings: Settings, running: RunningServer) -> RestWorkers:
    """Bind the REST socket here, then start ``settings.rest_workers`` processes serving it,
    each linked to this process by a socket pair for its batches and calls."""
    try:
        sockets = listening_sockets(settings.rest_host, settings.api_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for REST on {target_address(settings.rest_host, settings.api_port)} "
            f"(--api-host, --api-port): {exc.strerror or exc}"
        ) from None
    for sock in sockets:  # connections wait in the kernel until a worker takes them
        sock.listen(BACKLOG)
    intake = IntakeServer(
        running.ingestor,
        running.local_channel,
        lambda: running.front.gate.is_open,
        running.metrics.exposition,
        running.metrics,
    )
    # spawn, not fork: this process already runs threads (gRPC, the log's fsync).
    context = multiprocessing.get_context("spawn")
    # TLS contexts do not cross processes: the worker loads its own from the files.
    worker_settings = replace(settings, server_tls=None, client_tls=None)

    def start_worker() -> tuple[BaseProcess, asyncio.Task]:
        engine_end, worker_end = socket.socketpair()
        process = context.Process(
            target=run_rest_worker,
            args=(worker_settings, sockets, worker_end),
            name="kimball-rest-worker",
            daemon=True,  # never outlives this process
        )
        process.start()
        worker_end.close()
        return process, asyncio.ensure_future(intake.serve(engine_end))

    port = sockets[0].getsockname()[1]
    workers = RestWorkers(
        start_worker, settings.rest_workers, port, sockets, running.metrics.restart_rest_worker
    )
    workers.start()
    return workers


def run_rest_worker(
    settings: Settings, sockets: list[socket.socket], intake: socket.socket
) -> None:
    """A REST worker process: the gateway on the shared ``sockets``, over the link
    ``intake`` to the server process, until SIGTERM."""
    configure_logging(settings.log_level, settings.log_format)  # as the server's lines
    configure_garbage_collection()
    asyncio.run(_rest_worker(settings, sockets, intake))


async def _rest_worker(
    settings: Settings, sockets: list[socket.socket], intake: socket.socket
) -> None:
    stop = stop_signals()
    hangup = HangUp()
    checker = None
    if settings.api_auth:
        # The server process made or read every token source already: the same tokens.
        tokens = load_api_tokens(settings)
        if tokens is not None:
            checker = TokenChecker(tokens.tokens)
            tokens.start_watching(settings.api_tokens_file_poll_s)
            hangup.action = lambda: tokens.reload("SIGHUP")
    tls = load_server_tls(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )
    channel = IntakeChannel(intake)
    await channel.connect()
    gateway = await _start_rest(
        settings,
        channel,
        channel.metrics,
        checker,
        tls,
        shared=sockets,
        exposition=channel.exposition,
    )
    # SIGTERM from the server process; or the link gone (the server died): a worker never
    # outlives its server, which could not bind the port again while one listens.
    ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(channel.gone())]
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    if not ends[0].done():
        log.error("REST worker: the server process is gone; stopping")
    for end in ends:
        end.cancel()
    await gateway.stop()


def stop_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (the handlers are installed now)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


class HangUp:
    """SIGHUP runs ``action`` (re-reading the API token file). The handler is installed at
    once: SIGHUP's default would end the process; before ``action`` is set (during
    start-up, which reads the file anyway) the signal is only logged."""

    def __init__(self) -> None:
        self.action: Callable[[], None] | None = None
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._received)

    def _received(self) -> None:
        if self.action is None:
            log.info("SIGHUP during start-up: the token file is being read anyway")
        else:
            self.action()


def _tls_note(settings: Settings) -> str:
    if settings.server_tls is None:
        return ""
    if settings.server_tls.client_ca is None:
        return " (TLS)"
    return " (TLS, client certificates required)"


async def serve_gateway(settings: Settings, grpc_target: str) -> None:
    """Run the REST gateway alone, in front of a Kimball gRPC server elsewhere.

    The caller's token goes on to that server, which checks it; tokens configured here
    (app.config, ``KIMBALL_API_TOKENS``, the token file, re-read on change or SIGHUP) are
    also checked here first. Metrics live with the server: scrape its own ``/metrics``.
    """
    stop = stop_signals()
    hangup = HangUp()
    tokens = load_api_tokens(settings, generate=False) if settings.api_auth else None
    checker = TokenChecker(tokens.tokens) if tokens else None
    channel = network_channel(grpc_target, settings.max_response_bytes, settings.client_tls)
    gateway = await _start_rest(settings, channel, None, checker, settings.server_tls)
    if tokens is None:
        hangup.action = lambda: log.info("SIGHUP: this gateway checks no tokens to re-read")
    else:
        hangup.action = lambda: tokens.reload("SIGHUP")
        tokens.start_watching(settings.api_tokens_file_poll_s)
    log.info(
        "Kimball gateway listening: REST on %s%s for gRPC at %s%s",
        target_address(settings.rest_host, gateway.port),
        _tls_note(settings),
        grpc_target,
        " (TLS)" if settings.client_tls else "",
    )
    await stop.wait()
    log.info("Shutting down")
    if tokens is not None:
        await tokens.stop_watching()
    await gateway.stop()
    log.info("Stopped")

"""Server start-up and shutdown: the engine behind gRPC (api mode), or a sidecar; and ``serve``,
which runs either with the REST gateway until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from gateway.server import network_channel, start_gateway
from kimball_grpc.api.auth import TokenChecker
from kimball_grpc.api.grpc_front import (
    API_SERVICE,
    INTEGRATION_SERVICE,
    RELAY_SERVICE,
    SHUTDOWN_GRACE_SECONDS,
    GrpcFront,
    RunningFront,
)
from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.api.servicers import KimballIntegration, KimballRelay, KimballService
from kimball_grpc.config.settings import Mode, Settings, storage_config
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.generated.kimball.v1 import relay_pb2_grpc as relay_grpc
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.external_predictions import ExternalPredictions
from kimball_grpc.persistence import Persistence
from kimball_grpc.sidecar.server import RunningSidecar, start_sidecar
from kimball_grpc.streaming.event_forwarding import EventForwarding
from kimball_grpc.streaming.subscriptions import SubscriptionHub
from storage.blob_store import StorageError
from storage.location import open_blob_store
from storage.snapshots import SnapshotStore
from storage.wal import DamagedLog, WriteAheadLog

log = logging.getLogger(__name__)

FORWARD_DRAIN_SECONDS = 2.0


@dataclass
class RunningServer(RunningFront):
    """A started api-mode server and the parts behind it."""

    engine: Engine
    ingestor: Ingestor
    hub: SubscriptionHub
    persistence: Persistence
    external: ExternalPredictions
    forwarding: EventForwarding

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
        if not self.ready.done():
            self.persistence.abandon_restore()  # the worker thread stops at its next counter
            self.ready.cancel()  # still restoring: nothing new to keep
        elif not self.ready.cancelled() and self.ready.exception() is None:
            await self.persistence.close()


async def start_server(settings: Settings) -> RunningServer:
    """Build and start the gRPC server. It answers at once; health says NOT_SERVING and the
    API answers UNAVAILABLE until the state is restored (``RunningServer.ready``)."""
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
    hub = SubscriptionHub(settings.subscriber_buffer_events)
    forwarding = EventForwarding(settings.external_grpc_event_targets, metrics.registry)
    ingestor = Ingestor(
        engine,
        hub,
        observe_events=metrics.observe_events,
        log=wal,
        forwarding=forwarding,
        limits=settings.state_limits,
        refused=metrics.refuse,
        counted=metrics,
    )
    front = GrpcFront(settings, metrics, (API_SERVICE, INTEGRATION_SERVICE, RELAY_SERVICE))
    external = ExternalPredictions(
        settings.external_grpc_prediction_targets,
        metrics.registry,
        deadline=settings.external_prediction_deadline_ms / 1000,
    )
    pb_grpc.add_KimballServiceServicer_to_server(
        KimballService(
            engine,
            ingestor,
            hub,
            external,
            metrics.lose_feature_usage,
            settings.max_response_bytes,
        ),
        front.handlers,
    )
    integration_grpc.add_KimballIntegrationServicer_to_server(
        KimballIntegration(engine, ingestor), front.handlers
    )
    relay_grpc.add_KimballRelayServicer_to_server(KimballRelay(ingestor), front.handlers)
    await front.start()
    forwarding.start()
    ready = asyncio.get_running_loop().create_task(_become_ready(persistence, front))
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
    )


async def _become_ready(persistence: Persistence, front: GrpcFront) -> None:
    """Restore the state, then take calls and start the periodic snapshots."""
    try:
        await persistence.restore()
    except (StorageError, DamagedLog) as exc:  # the log is unusable or lacks records
        log.error("cannot start: %s", exc.message)
        raise
    await front.open()
    persistence.start_snapshots()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    stop = stop_signals()  # from the start: a signal during start-up stops it too
    running: RunningServer | RunningSidecar
    if settings.mode is Mode.SIDECAR:
        running = await start_sidecar(settings)
    else:
        running = await start_server(settings)
    rest_host = settings.grpc_host.strip("[]")
    try:
        gateway = await start_gateway(
            rest_host,
            settings.api_port,
            running.local_channel,
            running.metrics,
            running.checker,
            settings.http_limits,
            settings.access_log,
        )
    except ConfigError:
        await running.stop(grace=None)
        raise
    log.info(
        "Kimball listening: gRPC on %s:%d (health, reflection on), REST on %s:%d; %s",
        settings.grpc_host,
        running.grpc_port,
        settings.grpc_host,
        gateway.port,
        running.state_location,
    )
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopped, running.ready], return_when=asyncio.FIRST_COMPLETED)
    if running.ready.done():
        if running.ready.exception() is not None:
            stopped.cancel()
            await gateway.stop()
            await running.stop(grace=None)
            raise ConfigError(f"cannot start: {running.ready.exception()}")
        log.info("Kimball ready: taking calls")
    await stopped
    log.info("Shutting down: finishing in-flight calls")
    await gateway.stop()
    await running.stop()
    log.info("Stopped")


def stop_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (the handlers are installed now)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_gateway(settings: Settings, grpc_target: str) -> None:
    """Run the REST gateway alone, in front of a Kimball gRPC server elsewhere.

    The caller's token goes on to that server, which checks it; configured
    ``api_auth_tokens`` are also checked here first. Metrics live with the server:
    scrape its own ``/metrics``.
    """
    configured = settings.api_auth_tokens if settings.api_auth else ()
    checker = TokenChecker(configured) if configured else None
    rest_host = settings.grpc_host.strip("[]")
    channel = network_channel(grpc_target, settings.max_response_bytes)
    stop = stop_signals()
    gateway = await start_gateway(
        rest_host,
        settings.api_port,
        channel,
        None,
        checker,
        settings.http_limits,
        settings.access_log,
    )
    log.info(
        "Kimball gateway listening: REST on %s:%d for gRPC at %s",
        settings.grpc_host,
        gateway.port,
        grpc_target,
    )
    await stop.wait()
    log.info("Shutting down")
    await gateway.stop()
    log.info("Stopped")

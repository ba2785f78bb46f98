"""Server start-up and shutdown: the engine behind gRPC, with health and reflection."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.server import network_channel, start_gateway
from kimball_grpc.auth import AuthInterceptor, TokenChecker, run_tokens
from kimball_grpc.engine import Engine
from kimball_grpc.errors import ConfigError
from kimball_grpc.event_forwarding import EventForwarding
from kimball_grpc.external_predictions import ExternalPredictions
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.ingest import Ingestor
from kimball_grpc.limits import MAX_MESSAGE_BYTES
from kimball_grpc.local_channel import HandlerRecorder, LocalChannel
from kimball_grpc.metrics import Metrics
from kimball_grpc.persistence import Persistence
from kimball_grpc.readiness import StartupGate
from kimball_grpc.servicers import KimballIntegration, KimballService
from kimball_grpc.settings import Mode, Settings, storage_config
from kimball_grpc.status_mapping import StatusInterceptor
from kimball_grpc.subscriptions import SubscriptionHub
from storage.blob_store import StorageError
from storage.location import open_blob_store
from storage.snapshots import SnapshotStore
from storage.wal import WriteAheadLog

log = logging.getLogger(__name__)

API_SERVICE = pb.DESCRIPTOR.services_by_name["KimballService"].full_name
INTEGRATION_SERVICE = integration_pb.DESCRIPTOR.services_by_name["KimballIntegration"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SHUTDOWN_GRACE_SECONDS = 10.0
FORWARD_DRAIN_SECONDS = 2.0


@dataclass
class RunningServer:
    """A started server and the parts behind it."""

    server: grpc.aio.Server
    health: grpc_health.aio.HealthServicer
    engine: Engine
    ingestor: Ingestor
    hub: SubscriptionHub
    metrics: Metrics
    checker: TokenChecker | None  # None when authentication is off
    grpc_port: int
    local_channel: LocalChannel  # the same methods, in-process: for the REST gateway here
    persistence: Persistence
    ready: asyncio.Task[None]  # done once the state is restored and calls are taken
    external: ExternalPredictions
    forwarding: EventForwarding

    async def wait_ready(self) -> None:
        """Return once the state is restored (raises what stopped the restore, if anything)."""
        await asyncio.shield(self.ready)

    async def stop(self, grace: float | None = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop accepting calls, let in-flight ones finish (up to ``grace`` seconds), then
        take a last snapshot and close the write-ahead log."""
        await self.health.enter_graceful_shutdown()
        self.hub.close_all()  # live subscriptions end so they do not hold the grace period
        await self.server.stop(grace)
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
    if settings.mode is Mode.SIDECAR:
        raise ConfigError("FEATURES_MODE=sidecar is not available yet in this version")
    engine = Engine(settings.counter_config)
    metrics = Metrics(engine, settings.kubernetes_memory_limit)
    wal = WriteAheadLog(
        settings.wal_dir, settings.wal_fsync, fsync_interval=settings.wal_fsync_interval_ms / 1000
    )
    metrics.watch_log(wal)
    try:
        blobs = open_blob_store(settings.storage or storage_config(settings))
    except (ValueError, StorageError) as exc:
        raise ConfigError(f"storage: {exc}") from None
    persistence = Persistence(
        engine,
        wal,
        SnapshotStore(blobs),
        metrics,
        interval=settings.snapshot_interval_s,
        counter_startup_delay=settings.counter_startup_delay_ms / 1000,
    )
    hub = SubscriptionHub()
    forwarding = EventForwarding(settings.external_grpc_event_targets, metrics.registry)
    ingestor = Ingestor(
        engine, hub, observe_events=metrics.observe_events, log=wal, forwarding=forwarding
    )
    interceptors: list[grpc.aio.ServerInterceptor] = []
    checker = TokenChecker(_tokens(settings)) if settings.api_auth else None
    if checker is not None:
        interceptors.append(AuthInterceptor(checker, {HEALTH_SERVICE}))
    else:
        log.warning("API authentication is off (api_auth disable): every caller is trusted")
    gate = StartupGate({API_SERVICE, INTEGRATION_SERVICE})
    interceptors.append(gate)
    interceptors.append(
        StatusInterceptor({API_SERVICE, INTEGRATION_SERVICE}, metrics.observe_request)
    )
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    handlers = HandlerRecorder(server)
    external = ExternalPredictions(
        settings.external_grpc_prediction_targets,
        metrics.registry,
        deadline=settings.external_prediction_deadline_ms / 1000,
    )
    service = KimballService(engine, ingestor, hub, external)
    pb_grpc.add_KimballServiceServicer_to_server(service, handlers)
    integration_grpc.add_KimballIntegrationServicer_to_server(
        KimballIntegration(engine, ingestor), handlers
    )
    health_servicer = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, handlers)
    service_names = (
        API_SERVICE,
        INTEGRATION_SERVICE,
        HEALTH_SERVICE,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from None
    await server.start()
    forwarding.start()
    for name in ("", API_SERVICE, INTEGRATION_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    local = LocalChannel(handlers.generic_handlers, interceptors)
    ready = asyncio.get_running_loop().create_task(
        _become_ready(persistence, gate, health_servicer)
    )
    return RunningServer(
        server,
        health_servicer,
        engine,
        ingestor,
        hub,
        metrics,
        checker,
        port,
        local,
        persistence,
        ready,
        external,
        forwarding,
    )


async def _become_ready(
    persistence: Persistence, gate: StartupGate, health: grpc_health.aio.HealthServicer
) -> None:
    """Restore the state, then take calls and start the periodic snapshots."""
    try:
        await persistence.restore()
    except StorageError as exc:  # the log's own directory is unusable: nothing to serve
        log.error("cannot start: %s", exc.message)
        raise
    gate.open()
    for name in ("", API_SERVICE, INTEGRATION_SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    persistence.start_snapshots()


def _tokens(settings: Settings) -> tuple[str, ...]:
    """The accepted tokens; with none configured, one generated into the data directory."""
    try:
        tokens, generated = run_tokens(settings.api_auth_tokens, settings.data_dir)
    except OSError as exc:
        raise ConfigError(
            f"API authentication is on and no api_auth_tokens are configured, and a token "
            f"cannot be kept in {settings.data_dir}: {exc}"
        ) from None
    if generated:
        log.warning(
            "API authentication is on and no api_auth_tokens are configured: "
            "use the token kept in %s (Authorization: Bearer <token>)",
            generated,
        )
    else:
        log.info("API authentication is on: %d token(s) configured", len(tokens))
    return tokens


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    stop = stop_signals()  # from the start: a signal during start-up stops it too
    running = await start_server(settings)
    rest_host = settings.grpc_host.strip("[]")
    try:
        gateway = await start_gateway(
            rest_host,
            settings.api_port,
            running.local_channel,
            running.metrics,
            running.checker,
        )
    except ConfigError:
        await running.stop(grace=None)
        raise
    log.info(
        "Kimball listening: gRPC on %s:%d (health, reflection on), REST on %s:%d; "
        "restoring the state from %s and %s",
        settings.grpc_host,
        running.grpc_port,
        settings.grpc_host,
        gateway.port,
        running.persistence.snapshots.blobs.uri,
        settings.wal_dir,
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
    channel = network_channel(grpc_target)
    stop = stop_signals()
    gateway = await start_gateway(rest_host, settings.api_port, channel, None, checker)
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

"""Sidecar mode (``FEATURES_MODE=sidecar``): a relay next to applications.

It serves the same APIs as the api server. Events are validated, spooled on local
disk and acknowledged; a background sender delivers the spool to the api server
at ``ANALYTICS_HOST`` over a gRPC stream, through the api server's restarts and
outages. Feature flags are evaluated from a local copy of the specs, kept in sync
with the api server (or read from the namespace's ConfigMap, mounted as a file, with
the configmap feature spec store). Reads are forwarded to the api server. The relay keeps no
counters.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

from kimball_grpc.api.grpc_front import (
    API_SERVICE,
    INTEGRATION_SERVICE,
    SHUTDOWN_GRACE_SECONDS,
    GrpcFront,
    RunningFront,
)
from kimball_grpc.config.settings import FeatureSpecStore, Settings
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.api_server_client import ApiServerClient, relay_channel
from kimball_grpc.sidecar.sender import RelaySender, watch_relay
from kimball_grpc.sidecar.servicers import SidecarIntegration, SidecarService
from kimball_grpc.sidecar.spec_copy import SpecCopy
from kimball_grpc.sidecar.spec_file import SpecFile
from kimball_grpc.sidecar.spool import Spool
from storage.blob_store import StorageError
from storage.wal import DamagedLog

log = logging.getLogger(__name__)

DELIVERY_DRAIN_SECONDS = 2.0  # at shutdown, time to deliver what is spooled (the rest waits)
FEATURE_SPECS_FILE = "feature-specs.pb"  # the local copy, in the data directory


@dataclass
class RunningSidecar(RunningFront):
    """A started sidecar and the parts behind it."""

    spool: Spool
    sender: RelaySender
    api: ApiServerClient
    specs: SpecCopy | SpecFile

    @property
    def state_location(self) -> str:
        """What this process does with events, for the start-up log line."""
        return (
            f"sidecar: events spooled in {self.spool.directory} for the api server "
            f"at {self.api.address}"
        )

    async def stop(self, grace: float | None = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop accepting calls, let in-flight ones finish (up to ``grace`` seconds), give
        the sender a moment to deliver, then close the spool (what is left stays there)."""
        await self.front.stop(grace)  # forwarded streams end first: they do not hold it
        await self.sender.stop(drain_timeout=DELIVERY_DRAIN_SECONDS if grace else 0.0)
        await self.specs.stop()
        await self.api.close()
        if not self.ready.done():
            self.ready.cancel()
        elif not self.ready.cancelled() and self.ready.exception() is None:
            await self.spool.close()


async def start_sidecar(settings: Settings) -> RunningSidecar:
    """Build and start a sidecar; it takes calls once its spool is open
    (``RunningSidecar.ready``)."""
    if not settings.analytics_host:
        raise ConfigError(
            "FEATURES_MODE=sidecar needs ANALYTICS_HOST=host:port, the api server's gRPC address"
        )
    metrics = Metrics(None, settings.kubernetes_memory_limit)
    spool = Spool(
        settings.spool_dir,
        settings.wal_fsync,
        fsync_interval=settings.wal_fsync_interval_ms / 1000,
        max_events=settings.spool_max_events,
        skip_damaged=settings.wal_skip_damaged,
    )
    metrics.watch_log(spool.wal)
    front = GrpcFront(settings, metrics, (API_SERVICE, INTEGRATION_SERVICE))
    api = ApiServerClient(
        settings.analytics_host,
        _relay_token(settings, front),
        settings.max_response_bytes,
        settings.client_tls,
    )
    sender = RelaySender(
        spool,
        settings.analytics_host,
        api.metadata,
        channel_factory=functools.partial(relay_channel, tls=settings.client_tls),
    )
    watch_relay(metrics.registry, sender)
    specs: SpecCopy | SpecFile
    if settings.feature_spec_store is FeatureSpecStore.CONFIGMAP:
        specs = SpecFile(settings.feature_spec_file, settings.feature_spec_refresh_s)
    else:
        specs = SpecCopy(settings.data_dir / FEATURE_SPECS_FILE, api)
    front = GrpcFront(settings, metrics, (API_SERVICE, INTEGRATION_SERVICE))
    service = SidecarService(
        spool, api, specs, metrics.lose_feature_usage, settings.max_response_bytes
    )
    pb_grpc.add_KimballServiceServicer_to_server(service, front.handlers)
    integration_grpc.add_KimballIntegrationServicer_to_server(
        SidecarIntegration(spool, api), front.handlers
    )
    try:
        await front.start()
    except ConfigError:
        await api.close()
        raise
    ready = asyncio.get_running_loop().create_task(_become_ready(spool, sender, specs, front))
    return RunningSidecar(
        front=front, metrics=metrics, ready=ready, spool=spool, sender=sender, api=api, specs=specs
    )


def _relay_token(settings: Settings, front: GrpcFront) -> str | None:
    """The token the relay presents to the api server: ``ANALYTICS_TOKEN``, else the first
    this sidecar accepts itself (app.config's, ``KIMBALL_API_TOKENS``, its token file's as
    read at start-up), never a generated one."""
    return settings.analytics_token or front.own_token()


async def _become_ready(
    spool: Spool, sender: RelaySender, specs: SpecCopy | SpecFile, front: GrpcFront
) -> None:
    try:
        spool.open()
    except (StorageError, DamagedLog) as exc:
        log.error("cannot start: %s", exc.message)
        raise
    specs.load()
    specs.start()
    sender.start()
    await front.open()

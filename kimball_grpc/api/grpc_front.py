"""The gRPC server both modes run, before any of their services: request ids, metrics and
the access log, authentication, the start-up gate, status mapping, health, reflection,
and the in-process channel the REST gateway calls through."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kimball_grpc.api.auth import ApiTokens, AuthInterceptor, TokenChecker, load_api_tokens
from kimball_grpc.api.call_observer import CallObserver
from kimball_grpc.api.local_channel import HandlerRecorder, LocalChannel
from kimball_grpc.api.open_calls import OpenCalls
from kimball_grpc.api.readiness import StartupGate
from kimball_grpc.api.status_mapping import StatusInterceptor
from kimball_grpc.config.settings import Settings
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated.kimball.v1 import cluster_pb2 as cluster_pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import relay_pb2 as relay_pb
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.channels import target_address

log = logging.getLogger(__name__)

API_SERVICE = pb.DESCRIPTOR.services_by_name["KimballService"].full_name
INTEGRATION_SERVICE = integration_pb.DESCRIPTOR.services_by_name["KimballIntegration"].full_name
RELAY_SERVICE = relay_pb.DESCRIPTOR.services_by_name["KimballRelay"].full_name
# What cluster replicas ask each other (docs/scale-out.md).
CLUSTER_SERVICE = cluster_pb.DESCRIPTOR.services_by_name["KimballCluster"].full_name
# In-flight calls get this long to finish at shutdown; long-lived streams are ended first.
SHUTDOWN_GRACE_SECONDS = 10.0
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The methods that carry events (the REST routes onto them too).
INGESTION_METHODS = frozenset(
    [f"/{API_SERVICE}/{name}" for name in ("TrackEvent", "TrackEvents", "StreamEvents")]
    + [f"/{INTEGRATION_SERVICE}/EventStream", f"/{RELAY_SERVICE}/Relay"]
)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's options: message limits and the connection limits of ``settings``.

    Requests are at most MAX_MESSAGE_BYTES (a batch of events is far less; more is memory
    a caller could make the server hold); answers at most ``max_response_bytes`` (paged
    reads stay within it, and a whole answer past it is refused with a message to page).

    A client pinging more often than ``grpc_min_ping_interval_s`` (at most the minute
    sidecars ping at on their relay stream; gRPC's default of 5 min would end those
    connections) gets a strike per ping; past ``grpc_max_ping_strikes`` its connection
    ends (GOAWAY ENHANCE_YOUR_CALM). Calls beyond ``grpc_max_concurrent_streams`` on one
    connection wait for one to end (the client queues them). A connection that has not
    sent its preface after ``grpc_handshake_timeout_s`` is closed; one older than
    ``grpc_max_connection_age_s`` is told to go away and gets the grace for its calls.
    """
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", settings.max_response_bytes),
        ("grpc.server_handshake_timeout_ms", _ms(settings.grpc_handshake_timeout_s)),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            _ms(settings.grpc_min_ping_interval_s),
        ),
        ("grpc.http2.max_ping_strikes", settings.grpc_max_ping_strikes),
        ("grpc.keepalive_permit_without_calls", 1),
        # How long a ping waits for its answer. Stopping, the server pings each connection
        # after its last GOAWAY and waits for the answer before it closes it: a client that
        # stopped reading never answers, and the default (20 s) held shutdown that long.
        ("grpc.keepalive_timeout_ms", 2_000),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
    ]
    if settings.grpc_max_connection_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", _ms(settings.grpc_max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(settings.grpc_max_connection_age_grace_s)),
        ]
    return options


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class GrpcFront:
    """A gRPC server for ``services``: register their servicers on ``handlers``, then
    ``start``. Until ``open``, health says NOT_SERVING and the services answer
    UNAVAILABLE; health checks and reflection are not held back by this gate (reflection
    still needs the token, like every service but health)."""

    def __init__(self, settings: Settings, metrics: Metrics, services: tuple[str, ...]) -> None:
        self.settings = settings
        self.services = services
        self.api_tokens: ApiTokens | None = None
        self.checker: TokenChecker | None = None
        # First: it sees every call from the network, refused ones too. The gateway's
        # in-process calls skip it: they are REST requests, observed there.
        observer = CallObserver(metrics, settings.access_log, INGESTION_METHODS)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if settings.api_auth:
            self.api_tokens = load_api_tokens(settings, metrics.observe_token_reload)
            tokens = self.api_tokens.tokens
            metrics.count_api_tokens(lambda: len(tokens))
            self.checker = TokenChecker(tokens, metrics.refuse_unauthenticated)
            interceptors.append(AuthInterceptor(self.checker, {HEALTH_SERVICE}))
        else:
            log.warning("API authentication is off (api_auth disable): every caller is trusted")
        self.gate = StartupGate(set(services))
        interceptors.append(self.gate)
        # Health and reflection too: a malformed request to them is INVALID_ARGUMENT, not a
        # traceback in the log (and their calls are counted like the others).
        decoded = {*services, HEALTH_SERVICE, reflection.SERVICE_NAME}
        interceptors.append(StatusInterceptor(decoded))
        # After the status mapping: its refusals are domain errors.
        self.calls = OpenCalls(
            set(services), settings.max_streams, settings.max_subscribers, metrics
        )
        interceptors.append(self.calls)
        self._interceptors = interceptors
        self.server = grpc.aio.server(
            interceptors=[observer, *interceptors], options=server_options(settings)
        )
        self.handlers = HandlerRecorder(self.server)
        self.health = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.handlers)
        self.port = 0
        self.local_channel: LocalChannel  # once started: the services, in-process

    def own_token(self) -> str | None:
        """The first token this server accepts from its configuration (app.config's,
        ``KIMBALL_API_TOKENS``, its token file's as read at start-up), never a generated
        one: what it presents to servers that share its configuration."""
        from_file = self.api_tokens.file_tokens if self.api_tokens else ()
        configured = (*self.settings.api_auth_tokens, *self.settings.api_tokens, *from_file)
        return configured[0] if configured else None

    async def start(self) -> None:
        """Listen on the configured address (``ConfigError`` if it cannot) and take calls."""
        reflection.enable_server_reflection(
            (*self.services, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server
        )
        address = target_address(self.settings.grpc_host, self.settings.grpc_port)
        tls = self.settings.server_tls
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(tls.private_key, tls.certificate_chain)],
                    root_certificates=tls.client_ca,
                    require_client_auth=tls.client_ca is not None,
                )
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen for gRPC on {address} (--host, --grpc-port): {exc}"
            ) from None
        await self.server.start()
        if self.api_tokens is not None:
            self.api_tokens.start_watching(self.settings.api_tokens_file_poll_s)
        self.local_channel = LocalChannel(self.handlers.generic_handlers, self._interceptors)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def open(self) -> None:
        """The state is ready: serve every service."""
        self.gate.open()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self.services):
            await self.health.set(name, status)

    async def stop(self, grace: float | None) -> None:
        """Long-lived streams end (UNAVAILABLE) and new calls are refused, health says
        NOT_SERVING, in-flight calls get ``grace`` seconds (streams one), then the server
        stops: what is left is cancelled."""
        self.calls.close()
        if self.api_tokens is not None:
            await self.api_tokens.stop_watching()
        await self.health.enter_graceful_shutdown()
        if grace:
            await self.calls.wait_idle(grace)
        await self.server.stop(None)


class HealthService(grpc_health.aio.HealthServicer):
    """gRPC's health service, with ``List`` too: the installed servicer inherits it from
    the generated base, which raises NotImplementedError, and grpc then logs a traceback
    for every call (open to anyone: health needs no token)."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {
            "": health_pb2.HealthCheckResponse.SERVING
        }
        self._final = False  # after enter_graceful_shutdown, as the servicer itself

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        if not self._final:
            self._statuses[service] = status
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        if not self._final:
            self._statuses = dict.fromkeys(
                self._statuses, health_pb2.HealthCheckResponse.NOT_SERVING
            )
            self._final = True
        await super().enter_graceful_shutdown()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )


@dataclass
class RunningFront:
    """What every started server has, in either mode: its gRPC front, metrics, readiness."""

    front: GrpcFront
    metrics: Metrics
    ready: asyncio.Task[None]  # done once the state is ready and calls are taken

    @property
    def grpc_port(self) -> int:
        return self.front.port

    @property
    def checker(self) -> TokenChecker | None:
        """The token check (None when authentication is off)."""
        return self.front.checker

    def reload_tokens(self) -> None:
        """Re-read the API token file (on SIGHUP)."""
        if self.front.api_tokens is None:
            log.info("SIGHUP: API authentication is off, no tokens to re-read")
        else:
            self.front.api_tokens.reload("SIGHUP")

    @property
    def local_channel(self) -> LocalChannel:
        """The same methods, in-process: for the REST gateway here."""
        return self.front.local_channel

    async def wait_ready(self) -> None:
        """Return once ready (raises what stopped the start, if anything)."""
        await asyncio.shield(self.ready)

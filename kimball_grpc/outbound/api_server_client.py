"""A sidecar's calls to its api server (``ANALYTICS_HOST``): reads forwarded as they came.

A failed call ends the caller's call with the api server's status: its code,
message and the parameter it named. Two failures are the relay's own and say so:
an api server that cannot be reached, and one that refuses the relay's token
(``ANALYTICS_TOKEN``); both are UNAVAILABLE (REST 503), since the caller did nothing
wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from kimball_grpc.codec.error_details import error_info
from kimball_grpc.config.tls import ClientTls
from kimball_grpc.core.errors import KimballError
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.outbound.channels import (
    KEEP_IDLE_CONNECTION,
    KEEPALIVE,
    QUICK_RECONNECT,
    client_channel,
    is_over_receive_limit,
    kimball_messages,
)

FORWARD_TIMEOUT_SECONDS = 30.0  # for a call that came without a deadline

Metadata = tuple[tuple[str, str], ...]


class ApiServerError(KimballError):
    """A call forwarded to the api server failed: its status and ErrorInfo, passed on."""

    def __init__(
        self, grpc_code: str, message: str, /, reason: str = "ApiServerError", **details: str
    ) -> None:
        super().__init__(message, **details)
        self.grpc_code = grpc_code
        self._reason = reason

    @property
    def reason(self) -> str:
        return self._reason


def bearer_metadata(token: str | None) -> Metadata:
    """The ``authorization`` metadata carrying ``token`` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def relay_channel(
    address: str, max_response_bytes: int = MAX_MESSAGE_BYTES, tls: ClientTls | None = None
) -> grpc.aio.Channel:
    """A channel to the api server (over TLS with ``tls``): Kimball's message sizes (answers
    up to ``max_response_bytes``: the relay's acknowledgements are small, forwarded reads
    need the sidecar's setting), kept while quiet, back within seconds after a restart, and
    keepalive pings so the relay stream notices a lost peer."""
    return client_channel(
        address,
        tls,
        kimball_messages(max_response_bytes),
        KEEP_IDLE_CONNECTION,
        QUICK_RECONNECT,
        KEEPALIVE,
    )


class ApiServerClient:
    """Stubs for the api server at ``address``, on one kept channel (over TLS with ``tls``)."""

    def __init__(
        self,
        address: str,
        token: str | None,
        max_response_bytes: int,
        tls: ClientTls | None = None,
    ) -> None:
        self.address = address
        self.metadata = bearer_metadata(token)
        self.max_response_bytes = max_response_bytes
        self.tls = tls
        self.channel = relay_channel(address, max_response_bytes, tls)
        self.service = pb_grpc.KimballServiceStub(self.channel)
        self.integration = integration_grpc.KimballIntegrationStub(self.channel)

    async def call(
        self, method: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        """``method(request)`` on the api server, within the caller's deadline."""
        try:
            return await method(request, timeout=_timeout(context), metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._passed_on(exc) from None

    async def stream(
        self, method: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The responses of the server-streaming ``method(request)``, as they come."""
        call = method(request, timeout=context.time_remaining(), metadata=self.metadata)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise self._passed_on(exc) from None
        finally:
            call.cancel()  # the caller went away, or this server is shutting down

    def _passed_on(self, exc: grpc.aio.AioRpcError) -> ApiServerError:
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return ApiServerError(
                "UNAVAILABLE",
                f"the api server at {self.address} refused this relay's token: set "
                f"ANALYTICS_TOKEN to one of its api_auth_tokens",
            )
        info = error_info(exc.trailing_metadata())
        if code is grpc.StatusCode.UNAVAILABLE and not info.reason:
            return ApiServerError(
                "UNAVAILABLE", f"the api server at {self.address} is unavailable: {exc.details()}"
            )
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and is_over_receive_limit(exc):
            # This channel's limit, not the api server's refusal: an answer over this
            # sidecar's max_response_bytes.
            return ApiServerError(
                code.name,
                f"the api server's answer is larger than this sidecar takes "
                f"(max_response_bytes, {self.max_response_bytes} bytes): ask for pages with "
                f"page_size, or give the sidecar the api server's KIMBALL_MAX_RESPONSE_BYTES",
                limit="max_response_bytes",
            )
        reason = info.reason or "ApiServerError"
        return ApiServerError(code.name, exc.details() or code.name, reason, **info.metadata)

    async def close(self) -> None:
        await self.channel.close()


def _timeout(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return FORWARD_TIMEOUT_SECONDS if remaining is None else remaining

"""A sidecar's calls to its api server (``ANALYTICS_HOST``): reads forwarded as they came.

A failed call ends the caller's call with the api server's status: its code,
message and the parameter it named. Two failures are the relay's own and say so:
an api server that cannot be reached, and one that refuses the relay's token
(``ANALYTICS_TOKEN``); both are UNAVAILABLE (REST 503), since the caller did nothing
wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from kimball_grpc.error_details import error_metadata
from kimball_grpc.errors import KimballError
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.limits import MAX_MESSAGE_BYTES

FORWARD_TIMEOUT_SECONDS = 30.0  # for a call that came without a deadline

Metadata = tuple[tuple[str, str], ...]


class ApiServerError(KimballError):
    """A call forwarded to the api server failed; ``grpc_code`` is the status to answer."""

    def __init__(self, grpc_code: str, message: str, /, **details: str) -> None:
        super().__init__(message, **details)
        self.grpc_code = grpc_code


def bearer_metadata(token: str | None) -> Metadata:
    """The ``authorization`` metadata carrying ``token`` (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def relay_channel(address: str) -> grpc.aio.Channel:
    """An insecure channel to the api server that takes Kimball's largest messages."""
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A quiet relay keeps its connection (gRPC drops an idle one after 30 min).
            ("grpc.client_idle_timeout_ms", 2**31 - 1),
            # Forwarded calls fail fast while the api server is down; once it is back they
            # should work within seconds, not after gRPC's reconnect backoff (up to 2 min).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )


class ApiServerClient:
    """Stubs for the api server at ``address``, on one kept channel."""

    def __init__(
        self, address: str, token: str | None, channel: grpc.aio.Channel | None = None
    ) -> None:
        self.address = address
        self.metadata = bearer_metadata(token)
        self.channel = channel or relay_channel(address)
        self.service = pb_grpc.KimballServiceStub(self.channel)
        self.integration = integration_grpc.KimballIntegrationStub(self.channel)
        self._streams: set[grpc.aio.Call] = set()
        self._ending = False

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
        self._streams.add(call)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise self._passed_on(exc) from None
        except asyncio.CancelledError:
            if not self._ending:
                raise
            # end_streams: the stream ends normally, as on the api server at shutdown
        finally:
            self._streams.discard(call)
            call.cancel()

    def end_streams(self) -> None:
        """End every forwarded stream (shutdown: they must not hold the grace period)."""
        self._ending = True
        for call in list(self._streams):
            call.cancel()

    def _passed_on(self, exc: grpc.aio.AioRpcError) -> ApiServerError:
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return ApiServerError(
                "UNAVAILABLE",
                f"the api server at {self.address} refused this relay's token: set "
                f"ANALYTICS_TOKEN to one of its api_auth_tokens",
            )
        details = error_metadata(exc.trailing_metadata())
        if code is grpc.StatusCode.UNAVAILABLE and not details:
            return ApiServerError(
                "UNAVAILABLE", f"the api server at {self.address} is unavailable: {exc.details()}"
            )
        return ApiServerError(code.name, exc.details() or code.name, **details)

    async def close(self) -> None:
        await self.channel.close()


def _timeout(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return FORWARD_TIMEOUT_SECONDS if remaining is None else remaining

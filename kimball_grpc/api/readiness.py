"""Until the state is restored, API calls are refused with UNAVAILABLE (health stays open)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from kimball_grpc.api.refusal import refusing_handler

STARTING_MESSAGE = "Kimball is starting: its state is being restored; try again shortly"


class StartupGate(grpc.aio.ServerInterceptor):
    """Refuses calls to the gated services until ``open`` is called."""

    def __init__(self, gated_services: set[str]) -> None:
        self._gated = gated_services
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if self.is_open or handler_call_details.method.rsplit("/", 2)[-2] not in self._gated:
            return handler
        return refusing_handler(handler, grpc.StatusCode.UNAVAILABLE, STARTING_MESSAGE)

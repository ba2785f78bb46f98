"""Until the state is restored, API calls are refused with UNAVAILABLE (health stays open)."""

from __future__ import annotations

import grpc

from kimball_grpc.api.interception import Continuation, refusing_handler, service_of

STARTING_MESSAGE = "Kimball is starting: its state is being restored; try again shortly"


class StartupGate(grpc.aio.ServerInterceptor):
    """Refuses calls to the gated services until ``open`` is called."""

    def __init__(self, gated_services: set[str]) -> None:
        self._gated = gated_services
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if self.is_open or service_of(details) not in self._gated:
            return handler
        return refusing_handler(handler, grpc.StatusCode.UNAVAILABLE, STARTING_MESSAGE)

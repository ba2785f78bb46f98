"""What a replica does not serve in cluster mode yet: ``Subscribe``, whose stream needs the
events every replica accepts (docs/scale-out.md says what is built). It is refused clearly;
every write, the feature specs and every read of counts are served."""

from __future__ import annotations

from typing import Any

from kimball_grpc.api.servicers import KimballService
from kimball_grpc.core.errors import FailedPrecondition


def not_yet(method: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{method} is not answered in cluster mode yet: events, goals, feature specs and the "
        f"queries of counts are (docs/scale-out.md says what a replica answers so far)",
        method=method,
    )


class ClusterKimballService(KimballService):
    """``KimballService`` of a cluster replica: the writes and feature specs as on one
    node, the queries of counts from every partition (its ``cluster``), ``Subscribe``
    refused (``FAILED_PRECONDITION``)."""

    async def Subscribe(self, request: Any, context: Any) -> Any:
        raise not_yet("Subscribe")
        yield  # a streaming method: an async generator

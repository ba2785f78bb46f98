"""What a replica does not serve in cluster mode yet: feature specs, which need a store
every replica shares, and the streams fed by the events a replica accepts (docs/scale-out.md
says what is built). Each is refused clearly; every write and every read of counts is served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kimball_grpc.api.servicers import KimballService
from kimball_grpc.core.errors import FailedPrecondition

# Answered from a replicated feature spec store, not in this version of cluster mode yet.
UNARY_READS = (
    "PutFeatureSpec",
    "GetFeatureSpec",
    "ListFeatureSpecs",
    "DeleteFeatureSpec",
    "GetFeatureSpecHistory",
    "EvaluateFeatures",
)
STREAMED_READS = ("Subscribe", "WatchFeatureSpecs")


def not_yet(method: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{method} is not answered in cluster mode yet: events, goals and the queries of "
        f"counts are (docs/scale-out.md says what a replica answers so far)",
        method=method,
    )


def _refuse(method: str) -> Callable[..., Any]:
    async def refuse(self: Any, request: Any, context: Any) -> Any:
        raise not_yet(method)

    return refuse


def _refuse_stream(method: str) -> Callable[..., Any]:
    async def refuse(self: Any, request: Any, context: Any) -> Any:
        raise not_yet(method)
        yield  # a streaming method: an async generator

    return refuse


class ClusterKimballService(KimballService):
    """``KimballService`` of a cluster replica: the writes as on one node, the queries of
    counts from every partition (its ``cluster``), feature specs and streams refused
    (``FAILED_PRECONDITION``)."""


for _method in UNARY_READS:
    setattr(ClusterKimballService, _method, _refuse(_method))
for _method in STREAMED_READS:
    setattr(ClusterKimballService, _method, _refuse_stream(_method))

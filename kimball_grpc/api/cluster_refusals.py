"""The APIs a replica serves in cluster mode so far: every write (events, goals; acknowledged
once JetStream has them), the feature specs (from the replicated spec store), and a clear
refusal for the reads, which need the partial answers of every partition merged
(docs/scale-out.md says what is built)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kimball_grpc.api.servicers import KimballIntegration, KimballService
from kimball_grpc.core.errors import FailedPrecondition

# Answered from the merged counts of every partition: not in this version of cluster mode yet.
UNARY_READS = (
    "GetAnalytics",
    "ListGoals",
    "ListNamespaces",
    "GetPredictions",
    "GetNudges",
)
STREAMED_READS = ("Subscribe",)


def not_yet(method: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{method} is not answered in cluster mode yet: events and goals are taken and kept "
        f"(docs/scale-out.md says what a replica answers so far)",
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
    """``KimballService`` of a cluster replica: the writes and feature specs as on one node,
    the reads refused (``FAILED_PRECONDITION``) until they are answered from every
    partition."""


class ClusterIntegration(KimballIntegration):
    """The integration contract of a cluster replica: events in; predictions refused."""

    Prediction = _refuse("Prediction")


for _method in UNARY_READS:
    setattr(ClusterKimballService, _method, _refuse(_method))
for _method in STREAMED_READS:
    setattr(ClusterKimballService, _method, _refuse_stream(_method))

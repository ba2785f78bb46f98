"""``kimball.v1.KimballCluster``: what one replica answers the others of its partitions."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from kimball_grpc.codec.cluster_counts import counts_to_proto
from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import InvalidArgument, PartitionsUnavailable
from kimball_grpc.core.merged_counts import merge
from kimball_grpc.core.names import check_namespace, check_text
from kimball_grpc.core.partitions import partition_of
from kimball_grpc.generated.kimball.v1 import cluster_pb2 as cluster_pb
from kimball_grpc.generated.kimball.v1 import cluster_pb2_grpc as cluster_grpc

Context = grpc.aio.ServicerContext

# The engine of a partition this replica owns and applies now; None for any other.
OwnedEngine = Callable[[int], Engine | None]


class ClusterService(cluster_grpc.KimballClusterServicer):
    """Answers from the engines of the partitions this replica owns (``owned``), among
    ``partitions`` in all."""

    def __init__(self, owned: OwnedEngine, partitions: int) -> None:
        self.owned = owned
        self.partitions = partitions

    async def GetPartialCounts(self, request: cluster_pb.GetPartialCountsRequest, context: Context):
        asked = sorted(set(request.partitions))
        for partition in asked:
            if partition >= self.partitions:
                raise InvalidArgument(
                    f"partition {partition} does not exist: the cluster has {self.partitions} "
                    f"partitions, 0 to {self.partitions - 1}",
                    partition=str(partition),
                )
        owned = [(p, e) for p in asked if (e := self.owned(p)) is not None]
        response = cluster_pb.GetPartialCountsResponse(partitions=[p for p, _ in owned])
        if request.names_only:
            response.namespaces.extend(sorted({n for _, e in owned for n in e.namespaces()}))
            return response
        namespace = check_namespace(request.namespace)
        counts = merge(c for _, e in owned if (c := e.namespace_counts(namespace)) is not None)
        if counts is not None:
            response.counts.CopyFrom(counts_to_proto(counts))
        return response

    async def GetUserEvents(self, request: cluster_pb.GetUserEventsRequest, context: Context):
        user_id = check_text("user_id", request.user_id)
        partition = partition_of(hash_key(user_id), self.partitions)
        engine = self.owned(partition)
        if engine is None:
            raise PartitionsUnavailable(
                f"this replica does not own partition {partition}, the user's",
                partitions=str(partition),
            )
        events = engine.events_for_user(request.namespace, user_id)
        return cluster_pb.GetUserEventsResponse(event_names=events)

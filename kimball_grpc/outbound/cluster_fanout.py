"""A query across the partitions of a cluster: ask each owner of partitions for their
counts (``KimballCluster``), all at once, within one deadline, and merge the answers.

An answer covers every partition or the query fails: a replica that does not answer in
time, or no longer owns what it was asked for, makes it ``PartitionsUnavailable`` naming
the partitions (UNAVAILABLE: asked again once they have owners, it is answered), never an
answer about part of the users.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from kimball_grpc.codec.cluster_counts import counts_from_proto
from kimball_grpc.config.tls import ClientTls
from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.errors import InvalidArgument, PartitionsUnavailable
from kimball_grpc.core.merged_counts import MergedCounts, NamespaceCounts, merge
from kimball_grpc.core.names import check_namespace, check_text
from kimball_grpc.core.partitions import partition_of
from kimball_grpc.generated.kimball.v1 import cluster_pb2 as cluster_pb
from kimball_grpc.generated.kimball.v1 import cluster_pb2_grpc as cluster_grpc
from kimball_grpc.outbound.channels import QUICK_RECONNECT, client_channel, kimball_messages

# The owners as membership knows them now: partition -> gRPC address of its replica.
Owners = Callable[[], Mapping[int, str]]
T = TypeVar("T")
# Why a fanned-out query failed, the label of kimball_cluster_fanout_failures_total.
NO_OWNER, DEADLINE, REPLICA_ERROR, NOT_OWNER, UNDECODABLE = (
    "no_owner",
    "deadline",
    "replica_error",
    "not_owner",
    "undecodable",
)


class ClusterFanOut:
    """Questions about all ``partitions`` of the cluster, asked of their ``owners``; each
    call waits at most ``deadline`` seconds. ``max_counts_bytes`` is the largest answer
    taken from one replica (a namespace's counts, which grow with its event names). Calls
    go over TLS with ``tls`` if given, with ``token`` as their bearer token if given.

    ``registry`` receives ``kimball_cluster_fanout_seconds`` (each query, answered or not)
    and ``kimball_cluster_fanout_failures_total{reason}``."""

    def __init__(
        self,
        owners: Owners,
        partitions: int,
        deadline: float,
        max_counts_bytes: int,
        registry: CollectorRegistry,
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        self.owners = owners
        self.partitions = partitions
        self.deadline = deadline
        self._options = kimball_messages(max_counts_bytes)
        self._tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._seconds = Histogram(
            "kimball_cluster_fanout_seconds",
            "Time of a query asked of the owners of the cluster's partitions, answered or not.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self._failures = Counter(
            "kimball_cluster_fanout_failures",
            "Queries across the partitions that failed UNAVAILABLE, by reason: no_owner, "
            "deadline, replica_error, not_owner, undecodable.",
            ["reason"],
            registry=registry,
        )
        self._stubs: dict[str, cluster_grpc.KimballClusterStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    async def merged_counts(self, namespace: str) -> MergedCounts:
        """The namespace's counts over every partition (none if no partition knows it)."""
        namespace = check_namespace(namespace)
        return await self._timed(self._merged_counts(namespace))

    async def _merged_counts(self, namespace: str) -> MergedCounts:
        answers = await self._ask_every_partition(
            lambda parts: cluster_pb.GetPartialCountsRequest(namespace=namespace, partitions=parts)
        )
        parts: list[NamespaceCounts] = []
        for address, answer in answers:
            if answer.HasField("counts"):
                try:
                    parts.append(counts_from_proto(answer.counts))
                except InvalidArgument as exc:
                    self._failures.labels(UNDECODABLE).inc()
                    raise PartitionsUnavailable(
                        f"replica {address} answered counts that do not decode: {exc.message}",
                        replica=address,
                    ) from None
        merged = merge(parts)
        return MergedCounts([merged] if merged is not None else [])

    async def namespaces(self) -> list[str]:
        """The namespaces any partition knows, by name."""
        answers = await self._timed(
            self._ask_every_partition(
                lambda parts: cluster_pb.GetPartialCountsRequest(partitions=parts, names_only=True)
            )
        )
        return sorted({n for _, answer in answers for n in answer.namespaces})

    async def user_events(self, namespace: str, user_id: str) -> list[str]:
        """The named events ``user_id`` did, asked of the owner of the user's partition."""
        request = cluster_pb.GetUserEventsRequest(
            namespace=check_namespace(namespace), user_id=check_text("user_id", user_id)
        )
        return await self._timed(self._user_events(request))

    async def _user_events(self, request: cluster_pb.GetUserEventsRequest) -> list[str]:
        partition = partition_of(hash_key(request.user_id), self.partitions)
        address = self.owners().get(partition)
        if address is None:
            raise self._unavailable(NO_OWNER, [partition], "has no owner now")
        try:
            answer = await self._stub(address).GetUserEvents(
                request, timeout=self.deadline, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            reason, why = _failure(address, exc, self.deadline)
            raise self._unavailable(reason, [partition], why) from None
        return list(answer.event_names)

    async def _timed(self, query: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await query
        finally:
            self._seconds.observe(time.perf_counter() - started)

    def _unavailable(
        self, reason: str, partitions: Sequence[int], why: str
    ) -> PartitionsUnavailable:
        self._failures.labels(reason).inc()
        return _unavailable(partitions, why)

    async def close(self) -> None:
        """Close the channels to the replicas."""
        channels, self._channels, self._stubs = self._channels, [], {}
        for channel in channels:
            await channel.close()

    async def _ask_every_partition(
        self, request_for: Callable[[list[int]], cluster_pb.GetPartialCountsRequest]
    ) -> list[tuple[str, cluster_pb.GetPartialCountsResponse]]:
        """Each owner's answer for its partitions, asked of all at once; every partition
        covered, or ``PartitionsUnavailable`` naming those that are not and why."""
        owners = self.owners()
        orphans = [p for p in range(self.partitions) if p not in owners]
        if orphans:
            raise self._unavailable(NO_OWNER, orphans, "have no owner now")
        by_owner: dict[str, list[int]] = {}
        for partition in range(self.partitions):
            by_owner.setdefault(owners[partition], []).append(partition)

        async def ask(address: str, parts: list[int]):
            try:
                answer = await self._stub(address).GetPartialCounts(
                    request_for(parts), timeout=self.deadline, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as exc:
                return address, parts, None, _failure(address, exc, self.deadline)
            lacking = sorted(set(parts) - set(answer.partitions))
            return address, lacking, answer, (NOT_OWNER, f"replica {address} does not own them now")

        results = await asyncio.gather(*(ask(a, p) for a, p in by_owner.items()))
        failed = [(parts, why) for _, parts, _, why in results if parts]
        if failed:
            missing = sorted(p for parts, _ in failed for p in parts)
            # Counted once, by the first reason: one query, one failure.
            raise self._unavailable(
                failed[0][1][0], missing, "; ".join(why for _, (_, why) in failed)
            )
        return [(address, answer) for address, _, answer, _ in results]

    def _stub(self, address: str) -> cluster_grpc.KimballClusterStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = client_channel(address, self._tls, self._options, QUICK_RECONNECT)
            self._channels.append(channel)
            stub = self._stubs[address] = cluster_grpc.KimballClusterStub(channel)
        return stub


def _failure(address: str, error: grpc.aio.AioRpcError, deadline: float) -> tuple[str, str]:
    """Why a replica's answer is missing: the metric's reason and the words for the client."""
    if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DEADLINE, f"replica {address} did not answer within {deadline:g} s"
    details = f"replica {address} failed: {error.code().name} {error.details() or ''}"
    return REPLICA_ERROR, details.rstrip()


def _unavailable(partitions: Sequence[int], why: str) -> PartitionsUnavailable:
    listed = ", ".join(map(str, partitions))
    return PartitionsUnavailable(
        f"no answer for partition{'s' if len(partitions) > 1 else ''} {listed} "
        f"({why}): the query covers every user or none, ask again once they have owners",
        partitions=listed,
    )

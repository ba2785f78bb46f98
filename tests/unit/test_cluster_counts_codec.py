"""Partial counts cross the wire between replicas unchanged."""

from __future__ import annotations

import pytest

from kimball_grpc.codec.cluster_counts import counts_from_proto, counts_to_proto
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.generated.kimball.v1 import cluster_pb2 as cluster_pb
from tests.support.partitioned_engines import NAMESPACES, counter_config, engines, workload


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_counts_round_trip_losslessly(namespace: str) -> None:
    (engine,) = engines(workload(), 1, counter_config(0.001))
    counts = engine.namespace_counts(namespace)
    wire = counts_to_proto(counts).SerializeToString()
    back = counts_from_proto(cluster_pb.NamespaceCounts.FromString(wire))
    assert back == counts
    # Key order too: the counters come back in the order a namespace lists them.
    assert list(back.named) == list(counts.named)
    assert list(back.weekly) == list(counts.weekly)
    assert counts.weekly and counts.goals
    assert any(c.event_counts for c in counts.named.values())


def test_counts_of_unusual_values_round_trip() -> None:
    (engine,) = engines(workload(events=300), 1, counter_config(0.001))
    counts = engine.namespace_counts("shop")
    counts.global_counter.value_sum = 0.1 + 0.2  # not a binary fraction: bits kept
    counts.global_counter.count = 2**63 + 5
    counts.named["buy"].event_counts[()] = 7  # users who did nothing before the goal
    back = counts_from_proto(
        cluster_pb.NamespaceCounts.FromString(counts_to_proto(counts).SerializeToString())
    )
    assert back == counts


def test_counts_without_a_global_counter_are_refused() -> None:
    message = cluster_pb.NamespaceCounts(namespace="shop")
    message.counters.add(name="view", kind=cluster_pb.PARTIAL_COUNTER_KIND_NAMED)
    with pytest.raises(InvalidArgument, match="global counter"):
        counts_from_proto(message)


def test_a_counter_of_no_known_kind_is_refused() -> None:
    message = cluster_pb.NamespaceCounts(namespace="shop")
    message.counters.add(name="global_counter", kind=cluster_pb.PARTIAL_COUNTER_KIND_INTERNAL)
    message.counters.add(name="view", kind=9)
    with pytest.raises(InvalidArgument, match="no known kind"):
        counts_from_proto(message)

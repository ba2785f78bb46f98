"""A namespace's counts on the wire between replicas (``kimball.v1.NamespaceCounts``) and
back, losslessly: counts, value sums (doubles) and goal tallies come back as they went."""

from __future__ import annotations

from kimball_grpc.core.counters import CounterKind
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.merged_counts import CounterCounts, NamespaceCounts
from kimball_grpc.generated.kimball.v1 import cluster_pb2 as cluster_pb

_KINDS = {
    CounterKind.INTERNAL: cluster_pb.PARTIAL_COUNTER_KIND_INTERNAL,
    CounterKind.NAMED: cluster_pb.PARTIAL_COUNTER_KIND_NAMED,
    CounterKind.WEEKLY: cluster_pb.PARTIAL_COUNTER_KIND_WEEKLY,
}
_FROM_KINDS = {wire: kind for kind, wire in _KINDS.items()}


def counts_to_proto(counts: NamespaceCounts) -> cluster_pb.NamespaceCounts:
    message = cluster_pb.NamespaceCounts(namespace=counts.name, goals=sorted(counts.goals))
    for counter in (counts.global_counter, *counts.named.values(), *counts.weekly.values()):
        target = message.counters.add(
            name=counter.name,
            kind=_KINDS[counter.kind],
            year=counter.iso_year,
            week=counter.iso_week,
            count=counter.count,
            value_sum=counter.value_sum,
            single_event_counts=counter.single_event_counts,
        )
        for events, n in counter.event_counts.items():
            target.event_counts.add(events=events, count=n)
    return message


def counts_from_proto(message: cluster_pb.NamespaceCounts) -> NamespaceCounts:
    """The counts ``message`` carries; ``InvalidArgument`` naming the counter if it is not
    a namespace's counts (no global counter first, or a counter of no known kind)."""
    counters = [_counter_from_proto(c) for c in message.counters]
    if not counters or counters[0].kind is not CounterKind.INTERNAL:
        raise InvalidArgument(
            "partial counts do not start with the namespace's global counter",
            namespace=message.namespace,
        )
    counts = NamespaceCounts(message.namespace, counters[0], goals=frozenset(message.goals))
    for counter in counters[1:]:
        if counter.kind is CounterKind.NAMED:
            counts.named[counter.name] = counter
        elif counter.kind is CounterKind.WEEKLY:
            counts.weekly[counter.name, counter.iso_year, counter.iso_week] = counter
        else:
            raise InvalidArgument("partial counts hold a second global counter")
    return counts


def _counter_from_proto(message: cluster_pb.PartialCounter) -> CounterCounts:
    kind = _FROM_KINDS.get(message.kind)
    if kind is None:
        raise InvalidArgument(
            f"partial counter {message.name!r} is of no known kind ({message.kind})",
            counter=message.name,
        )
    return CounterCounts(
        message.name,
        kind,
        message.year,
        message.week,
        message.count,
        message.value_sum,
        {tuple(c.events): c.count for c in message.event_counts},
        dict(message.single_event_counts),
    )

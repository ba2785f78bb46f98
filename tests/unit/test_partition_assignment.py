"""Rendezvous assignment of partitions to live members: the same answer everywhere,
a bounded spread, and only the partitions that must move do."""

from __future__ import annotations

import pytest

from kimball_grpc.core.partition_assignment import assign, owned_by, score

PARTITIONS = 64
NAMES = [f"kimball-{i}" for i in range(8)]  # the names a StatefulSet gives its replicas


def test_the_assignment_is_the_same_whatever_the_order_of_the_members():
    members = NAMES[:5]
    assert assign(members, PARTITIONS) == assign(list(reversed(members)), PARTITIONS)
    assert assign(members, PARTITIONS) == assign(members + members[:2], PARTITIONS)


def test_the_assignment_is_stable_across_versions():
    # Pinned values: a change of hash or text format would move every partition of a
    # running cluster during a rolling upgrade, so it must fail here first.
    assert score("kimball-0", 0) == 305411340534444226919237479629898679149
    assert sorted(owned_by("kimball-0", NAMES[:3], PARTITIONS))[:5] == [0, 2, 3, 7, 8]


@pytest.mark.parametrize("count", range(1, 9))
def test_every_partition_has_one_owner_and_the_spread_is_bounded(count):
    members = NAMES[:count]
    assigned = assign(members, PARTITIONS)
    assert sorted(assigned) == list(range(PARTITIONS))
    assert set(assigned.values()) <= set(members)
    fair = PARTITIONS / count
    for member in members:
        owned = len(owned_by(member, members, PARTITIONS))
        # Rendezvous hashing spreads like a random draw: no member gets more than 1.5
        # times its fair share, or less than 0.4 times it, for 1 to 8 members.
        assert fair * 0.4 <= owned <= fair * 1.5, (member, owned, fair)


@pytest.mark.parametrize("count", range(1, 8))
def test_a_member_joining_takes_partitions_only_from_others_and_moves_nothing_else(count):
    before = assign(NAMES[:count], PARTITIONS)
    after = assign(NAMES[: count + 1], PARTITIONS)
    joined = NAMES[count]
    moved = {p for p in range(PARTITIONS) if before[p] != after[p]}
    assert moved  # it takes some
    assert all(after[p] == joined for p in moved)


@pytest.mark.parametrize("count", range(2, 9))
def test_a_member_leaving_moves_only_its_own_partitions(count):
    members = NAMES[:count]
    gone = members[count // 2]
    before = assign(members, PARTITIONS)
    after = assign([m for m in members if m != gone], PARTITIONS)
    moved = {p for p in range(PARTITIONS) if before[p] != after[p]}
    assert moved == {p for p, owner in before.items() if owner == gone}


def test_no_members_own_nothing_and_partitions_must_be_positive():
    assert assign([], PARTITIONS) == {}
    assert owned_by("kimball-0", [], PARTITIONS) == frozenset()
    with pytest.raises(ValueError, match="partitions must be at least 1, not 0"):
        assign(NAMES, 0)

"""Membership, partition ownership and fencing against a real NATS server with JetStream
on loopback: replicas split the partitions, a joining replica takes its share with no
partition held by two at any moment, and a replica whose lease expires stops applying."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from support.nats_server import NatsServer
from support.polling import until

from kimball_grpc.cluster.membership import PARTITIONS_BUCKET, LeaseMismatch, Membership
from kimball_grpc.core.partition_assignment import owned_by

PARTITIONS = 16
LEASE = 1.5  # seconds: short, so expiry is seen quickly


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@pytest.fixture
async def replicas(nats_server: NatsServer) -> AsyncIterator[Replicas]:
    made = Replicas(nats_server.url)
    yield made
    await made.close()


class Replicas:
    """Members, each on its own NATS connection, as separate processes would be."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.members: dict[str, Membership] = {}
        self.connections: dict[str, nats.NATS] = {}

    async def start(self, replica_id: str, lease: float = LEASE) -> Membership:
        nc = await nats.connect(self.url, max_reconnect_attempts=0)
        member = Membership(nc, replica_id, f"127.0.0.1:{len(self.members)}", PARTITIONS, lease)
        await member.start()
        self.members[replica_id] = member
        self.connections[replica_id] = nc
        return member

    async def close(self) -> None:
        for replica_id, member in self.members.items():
            await member.stop()
            await self.connections[replica_id].close()
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        for bucket in ("kimball_members", PARTITIONS_BUCKET, "kimball_feature_specs"):
            with contextlib.suppress(Exception):  # a bucket this test never made
                await js.delete_key_value(bucket)
        await nc.close()

    def split(self, ids: list[str]) -> bool:
        """Whether ``ids`` own exactly their rendezvous shares, together every partition."""
        return all(set(self.members[i].owned()) == owned_by(i, ids, PARTITIONS) for i in ids)

    def overlap(self) -> set[int]:
        """The partitions two members may apply at once (must stay empty)."""
        seen: set[int] = set()
        both: set[int] = set()
        for member in self.members.values():
            mine = {p for p in range(PARTITIONS) if member.may_apply(p)}
            both |= seen & mine
            seen |= mine
        return both


@pytest.mark.parametrize("count", [2, 3])
async def test_replicas_split_the_partitions_by_rendezvous(replicas, count):
    ids = [f"kimball-{i}" for i in range(count)]
    for replica_id in ids:
        await replicas.start(replica_id)
    await until(lambda: replicas.split(ids), f"{count} replicas to split the partitions")
    owned = [set(replicas.members[i].owned()) for i in ids]
    assert set().union(*owned) == set(range(PARTITIONS))
    assert sum(len(o) for o in owned) == PARTITIONS
    # Every member sees every other, with the address it registered.
    assert set(replicas.members[ids[0]].members()) == set(ids)


async def test_a_joining_replica_takes_its_share_with_no_partition_held_twice(replicas):
    first = await replicas.start("kimball-0")
    await until(lambda: replicas.split(["kimball-0"]), "one replica to own everything")
    revisions = first.owned()
    changes: list[dict[int, int]] = []

    async def check(owned) -> None:  # at every change of any member: never two holders
        changes.append(dict(owned))
        assert not replicas.overlap()

    first.add_listener(check)
    joining = await replicas.start("kimball-1")
    joining.add_listener(check)
    overlaps: list[set[int]] = []

    def settled() -> bool:
        overlaps.append(replicas.overlap())
        return replicas.split(["kimball-0", "kimball-1"])

    await until(
        settled, "the partitions to move to the joining replica", timeout=10, interval=0.001
    )
    assert not any(overlaps)
    moved = owned_by("kimball-1", ["kimball-0", "kimball-1"], PARTITIONS)
    assert moved and set(joining.owned()) == moved
    # What stayed kept its claim (and revision); what moved has a new one.
    kept = first.owned()
    assert all(kept[p] == revisions[p] for p in kept)
    assert all(joining.owned()[p] > revisions[p] for p in moved)
    assert changes


async def test_a_replica_that_loses_its_lease_stops_applying_and_others_take_over(replicas):
    lost: list[dict[int, int]] = []
    victim = await replicas.start("kimball-0")
    survivor = await replicas.start("kimball-1")
    await until(lambda: replicas.split(["kimball-0", "kimball-1"]), "two replicas to split")
    held = victim.owned()

    async def told(owned) -> None:
        lost.append(dict(owned))

    victim.add_listener(told)
    # Cut the victim off NATS (as a network partition would): it can renew no more.
    await replicas.connections["kimball-0"].close()
    await until(lambda: not victim.lease_live(), "the victim's lease to lapse", timeout=5)
    assert victim.owned() == {}
    assert not any(victim.may_apply(p) for p in held)
    assert not any(victim.may_apply(p, r) for p, r in held.items())
    await until(lambda: lost and lost[-1] == {}, "the victim to tell its consumer to stop")
    # The survivor waits for the victim's key to expire on the server, then takes all.
    await until(
        lambda: set(survivor.owned()) == set(range(PARTITIONS)),
        "the survivor to take over the victim's partitions",
        timeout=10,
    )
    assert not replicas.overlap()


async def test_a_replica_registering_with_another_lease_is_refused(replicas):
    await replicas.start("kimball-0")
    with pytest.raises(LeaseMismatch, match="--lease-seconds is 3: every replica"):
        await replicas.start("kimball-1", lease=3)


async def test_a_paused_replica_stops_by_its_clock_and_rejoins_after_its_lease(replicas):
    victim = await replicas.start("kimball-0")
    survivor = await replicas.start("kimball-1")
    both = ["kimball-0", "kimball-1"]
    await until(lambda: replicas.split(both), "two replicas to split")
    held = victim.owned()
    # Pause its renewals (as a stopped process would: nothing of it runs, not even a
    # timer): may_apply turns false by its clock alone, before the server drops the key.
    assert victim._task is not None
    victim._task.cancel()
    await until(lambda: not any(victim.may_apply(p, r) for p, r in held.items()), "fencing")
    assert set(survivor.owned()) == owned_by("kimball-1", both, PARTITIONS)  # not yet taken
    await until(lambda: set(survivor.owned()) == set(range(PARTITIONS)), "the takeover", timeout=10)
    # Resumed, it finds its key gone, registers again and gets its share back.
    victim._task = asyncio.create_task(victim._run())
    overlaps: list[set[int]] = []

    def settled() -> bool:
        overlaps.append(replicas.overlap())
        return replicas.split(both)

    await until(settled, "the resumed replica to get its share", timeout=10, interval=0.001)
    assert not any(overlaps)
    assert all(victim.owned()[p] > held[p] for p in held)  # new claims, new revisions

"""Cluster membership, partition ownership and fencing, on JetStream key-value buckets.

- **Members**: each replica keeps the key ``<replica id>`` in the bucket
  ``kimball_members`` (value: JSON with its gRPC address and an incarnation id, new at
  every start). The bucket's TTL is the lease: a key not rewritten for a lease is
  removed by the server. A replica rewrites its key every lease/3 with
  update-at-expected-revision, so it learns at once if its key expired or was replaced.
  It registers with create: a replica restarted under the same id waits until its
  previous incarnation's key has expired (or was deleted by a clean stop).
- **Ownership**: the partitions a replica should own are ``owned_by`` over the live
  members (rendezvous hashing, kimball_grpc/core/partition_assignment.py). It claims
  each in the bucket ``kimball_partitions`` (key ``p.<n>``, value: JSON with its id and
  incarnation) with create, or update-at-expected-revision over a deleted claim or over
  a claim whose owner's incarnation is no longer a live member. A live owner's claim is
  never overwritten: a partition moves only when its owner deletes its claim (at the
  claim's revision) after it has stopped applying it, so no two replicas ever hold it.
- **Fencing**: a replica may apply a partition only while it holds the claim and its own
  lease is live by its own clock: until 4/5 of a lease after it *sent* its last
  successful renewal. The server removes the key a full lease after it *stored* that
  renewal, later still, so a replica cut off from NATS, or paused longer than the lease,
  stops applying before anyone can take its partitions over (the last fifth allows for
  clocks running at slightly different rates). Claims carry no TTL, so a claim's
  revision stays the same for as long as it is held: a fencing token the consumer can
  keep with what it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kimball_grpc.cluster.jetstream_start import START_SECONDS, reason, when_jetstream_answers
from kimball_grpc.core.partition_assignment import owned_by

MEMBERS_BUCKET = "kimball_members"
PARTITIONS_BUCKET = "kimball_partitions"
LOCAL_LEASE_SHARE = 0.8  # of the lease a replica trusts its last renewal for
RENEWALS_PER_LEASE = 3

log = logging.getLogger(__name__)

# Called with the partitions now owned (partition -> claim revision) after every change,
# and awaited before a claim is released: the consumer stops applying a partition there.
OwnershipListener = Callable[[Mapping[int, int]], Awaitable[None]]


class LeaseMismatch(RuntimeError):
    """The members bucket exists with another lease than this replica's."""


@dataclass(frozen=True)
class Member:
    """A live replica: its id, the gRPC address the others reach it at, its incarnation."""

    replica_id: str
    address: str
    incarnation: str


@dataclass(frozen=True)
class Claim:
    """A partition's claim as read from the bucket: its holder (None once deleted)."""

    replica_id: str | None
    incarnation: str | None
    revision: int


class Membership:
    """One replica's membership: ``start``, then ``owned``/``may_apply`` and the
    listeners; ``stop`` releases everything (its partitions move at once)."""

    def __init__(
        self,
        nc: Any,  # a connected nats.aio.client.Client
        replica_id: str,
        address: str,
        partitions: int,
        lease_seconds: float,
        bucket_replicas: int = 1,
        on_lease_lost: Callable[[], None] = lambda: None,
        start_seconds: float = START_SECONDS,
    ) -> None:
        """``on_lease_lost``: called each time a live lease lapses or is found gone;
        ``start_seconds``: how long ``start`` tries the buckets."""
        self._nc = nc
        self.replica_id = replica_id
        self.address = address  # may be set until ``start``: the gRPC address others call
        self._partitions = partitions
        self._lease = lease_seconds
        self._bucket_replicas = bucket_replicas
        self._start_seconds = start_seconds
        self._incarnation = ""
        self._member_revision: int | None = None
        self._deadline = 0.0  # monotonic: the lease is trusted until then
        self._owned: dict[int, int] = {}  # partition -> claim revision
        self._members: dict[str, Member] = {}
        self._claims: dict[int, Claim] = {}  # as last read, with this replica's own changes
        self._on_lease_lost = on_lease_lost
        self._listeners: list[OwnershipListener] = []
        self._task: asyncio.Task[None] | None = None
        self._members_kv: Any = None
        self._claims_kv: Any = None

    # -- what the consumer asks -------------------------------------------------------

    def lease_live(self) -> bool:
        """Whether this replica's own lease is live by its clock."""
        return time.monotonic() < self._deadline

    def owned(self) -> dict[int, int]:
        """The partitions this replica may apply now, with their claim revisions."""
        return dict(self._owned) if self.lease_live() else {}

    def may_apply(self, partition: int, revision: int | None = None) -> bool:
        """Whether this replica may still apply ``partition`` (under the claim of
        ``revision``, when given): it holds the claim and its lease is live."""
        held = self._owned.get(partition)
        if held is None or not self.lease_live():
            return False
        return revision is None or held == revision

    def members(self) -> dict[str, Member]:
        """The live members as last read (this replica among them once registered)."""
        return dict(self._members)

    def owners(self) -> dict[int, str]:
        """Partition -> the gRPC address of the live member holding its claim now (as last
        read); a partition with no claim, or whose holder is no longer a live member, is
        absent."""
        out = {}
        for partition, claim in self._claims.items():
            holder = self._members.get(claim.replica_id or "")
            if holder is not None and holder.incarnation == claim.incarnation:
                out[partition] = holder.address
        return out

    def add_listener(self, listener: OwnershipListener) -> None:
        """Call ``listener`` with the owned partitions after every change."""
        self._listeners.append(listener)

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open (or create) the buckets and start registering and claiming.
        ``LeaseMismatch`` if the members bucket was made with another lease;
        ``JetStreamUnavailable`` if JetStream did not answer for ``start_seconds``."""
        await when_jetstream_answers(
            f"the JetStream buckets {MEMBERS_BUCKET} and {PARTITIONS_BUCKET}",
            self._open_buckets,
            self._start_seconds,
        )
        self._task = asyncio.create_task(self._run(), name=f"membership {self.replica_id}")

    async def _open_buckets(self) -> None:
        from nats.js.errors import BucketNotFoundError

        js = self._nc.jetstream()
        try:
            self._members_kv = await js.key_value(MEMBERS_BUCKET)
        except BucketNotFoundError:
            self._members_kv = await js.create_key_value(
                bucket=MEMBERS_BUCKET, ttl=self._lease, replicas=self._bucket_replicas
            )
        status = await self._members_kv.status()
        if status.ttl is None or abs(status.ttl - self._lease) > 1e-3:
            raise LeaseMismatch(
                f"the bucket {MEMBERS_BUCKET} has a lease of {status.ttl} s, but "
                f"--lease-seconds is {self._lease:g}: every replica must use the same "
                f"lease (to change it, stop all replicas and delete the bucket)"
            )
        try:
            self._claims_kv = await js.key_value(PARTITIONS_BUCKET)
        except BucketNotFoundError:
            self._claims_kv = await js.create_key_value(
                bucket=PARTITIONS_BUCKET, replicas=self._bucket_replicas
            )

    async def stop(self) -> None:
        """Stop applying, release every claim and leave (best effort: what is not
        released expires with the lease)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        held = self._owned
        self._owned = {}
        if held:
            await self._notify()
        with contextlib.suppress(Exception):
            for partition, revision in held.items():
                await self._claims_kv.delete(_key(partition), last=revision)
            if self._member_revision is not None:
                await self._members_kv.delete(self.replica_id, last=self._member_revision)
        self._member_revision = None
        self._deadline = 0.0

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        interval = self._lease / RENEWALS_PER_LEASE
        while True:
            try:
                await asyncio.wait_for(self._reconcile(), timeout=interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS unreachable, timeouts: the lease decides
                log.warning("membership of %s: %s", self.replica_id, reason(exc))
            await self._fence_if_expired()
            wait = interval
            if self._owned:  # wake at the deadline, to fence without a renewal
                wait = max(0.0, min(interval, self._deadline - time.monotonic()))
            await asyncio.sleep(wait)

    async def _fence_if_expired(self) -> None:
        if self._deadline and not self.lease_live():
            await self._lose_lease()

    async def _lose_lease(self) -> None:
        """The lease lapsed or its key is gone: count it once, stop applying everything."""
        if self._deadline:
            self._deadline = 0.0
            log.warning("lease of %s lost: it stops applying its partitions", self.replica_id)
            self._on_lease_lost()
        if self._owned:
            self._owned = {}
            await self._notify()

    async def _reconcile(self) -> None:
        await self._fence_if_expired()
        if not await self._renew():
            return
        self._members = await self._read_members()
        claims = await self._read_claims()
        self._claims = claims
        wanted = owned_by(self.replica_id, self._members, self._partitions)
        # The claims under this incarnation, as the bucket has them: a reconcile cut
        # short (a timeout) may have left one written but not yet recorded here.
        mine = {
            p: c.revision
            for p, c in claims.items()
            if c.replica_id == self.replica_id and c.incarnation == self._incarnation
        }
        # Claims lost to anyone (never expected while the lease is live): stop at once.
        lost = [p for p, revision in self._owned.items() if mine.get(p) != revision]
        if lost:
            for partition in lost:
                del self._owned[partition]
            await self._notify()
        # Release first: the consumer stops applying (listeners awaited), then the
        # claim goes, so the next owner can take it.
        leaving = {p: r for p, r in mine.items() if p not in wanted}
        if leaving.keys() & self._owned.keys():
            for partition in leaving.keys() & self._owned.keys():
                del self._owned[partition]
            await self._notify()
        for partition, revision in leaving.items():
            await self._claims_kv.delete(_key(partition), last=revision)
            del claims[partition]  # unowned until the next owner claims it
        taken = False
        for partition in sorted(wanted - self._owned.keys()):
            if not self.lease_live():
                break
            if partition in mine:
                revision: int | None = mine[partition]
            else:
                revision = await self._claim(partition, claims.get(partition))
            if revision is not None:
                self._owned[partition] = revision
                claims[partition] = Claim(self.replica_id, self._incarnation, revision)
                taken = True
        if taken:
            await self._notify()

    async def _renew(self) -> bool:
        """Write this replica's member key; whether its lease is live now."""
        from nats.js.errors import KeyWrongLastSequenceError

        sent = time.monotonic()
        try:
            if self._member_revision is None:
                self._incarnation = uuid.uuid4().hex
                value = self._member_value()
                self._member_revision = await self._members_kv.create(self.replica_id, value)
            else:
                self._member_revision = await self._members_kv.update(
                    self.replica_id, self._member_value(), last=self._member_revision
                )
        except KeyWrongLastSequenceError:
            # Expired (or, at registration, a previous incarnation still holds the key):
            # everything held under the old lease is gone; register again later.
            self._member_revision = None
            await self._lose_lease()
            return False
        self._deadline = sent + self._lease * LOCAL_LEASE_SHARE
        return True

    def _member_value(self) -> bytes:
        return json.dumps(
            {
                "replica_id": self.replica_id,
                "address": self.address,
                "incarnation": self._incarnation,
            }
        ).encode()

    async def _read_members(self) -> dict[str, Member]:
        members = {}
        for entry in await _latest(self._members_kv):
            if entry.operation is None:
                value = json.loads(entry.value)
                members[entry.key] = Member(entry.key, value["address"], value["incarnation"])
        return members

    async def _read_claims(self) -> dict[int, Claim]:
        claims = {}
        for entry in await _latest(self._claims_kv):
            partition = int(entry.key.removeprefix("p."))
            if entry.operation is None:
                value = json.loads(entry.value)
                claims[partition] = Claim(value["replica_id"], value["incarnation"], entry.revision)
            else:
                claims[partition] = Claim(None, None, entry.revision)
        return claims

    async def _claim(self, partition: int, claim: Claim | None) -> int | None:
        """Take ``partition`` if nobody live holds it; its claim revision, or None."""
        from nats.js.errors import KeyWrongLastSequenceError

        if claim is not None and claim.replica_id is not None:
            holder = self._members.get(claim.replica_id)
            if holder is not None and holder.incarnation == claim.incarnation:
                return None  # its live owner releases it when it sees this member
        value = json.dumps({"replica_id": self.replica_id, "incarnation": self._incarnation})
        try:
            return await self._claims_kv.update(
                _key(partition), value.encode(), last=0 if claim is None else claim.revision
            )
        except KeyWrongLastSequenceError:
            return None  # someone else was first: read again next time

    async def _notify(self) -> None:
        owned = self.owned()
        for listener in self._listeners:
            await listener(owned)


async def _latest(kv: Any) -> list[Any]:
    """The latest entry of every key of ``kv`` (deletions included), in one request."""
    watcher = await kv.watchall()
    entries = []
    try:
        async for entry in watcher:
            if entry is None:
                break
            entries.append(entry)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return entries


def _key(partition: int) -> str:
    return f"p.{partition}"

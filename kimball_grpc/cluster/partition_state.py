"""A replica's state in cluster mode: one ``Engine`` per partition it applies, each with the
stream sequence of the last message applied to it, fed from the JetStream stream and
snapshotted per partition to the object store.

Each partition is read by its own ordered consumer (ephemeral, in stream order, restarted by
the client from the last sequence it delivered after any gap): the replica's snapshot and the
sequence it records are the only position kept, so nothing on the NATS side can disagree
with them. A partition's snapshot is ``<prefix><p>/snapshots/<stream sequence>.snapshot``;
loading it and replaying the stream after its sequence rebuilds the partition exactly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kimball_grpc.cluster.event_log import STREAM, subject, unsubscribe
from kimball_grpc.cluster.jetstream_start import reason
from kimball_grpc.cluster.membership import Membership
from kimball_grpc.codec.state_codec import decode_records, decode_state, state_in_steps
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.steps import between_requests
from kimball_grpc.metrics import OwnershipMetrics
from storage.blob_store import BlobStore, StorageError
from storage.snapshots import DamagedSnapshot, SnapshotStore

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # a takeover that could not load (store or NATS failing) tries again


@dataclass
class PartitionState:
    """One partition's engine and the stream sequence of the last message applied to it;
    ``snapshot_sequence``: the one its newest stored snapshot holds; ``revision``: the
    claim under which this replica applies it; ``catch_up``: the stream sequence to reach
    before the takeover (begun at monotonic ``gained``) counts as done (0 once done)."""

    engine: Engine
    sequence: int = 0
    snapshot_sequence: int = 0
    revision: int = 0
    catch_up: int = 0
    gained: float = 0.0


class PartitionEngines:
    """The partitions this replica owns, by number, as ``membership`` decides: each gained
    partition is loaded from its newest snapshot and consumed from there; each lost one
    stops being consumed at once and its engine is dropped."""

    def __init__(
        self,
        partitions: int,
        counter_config: CounterConfig,
        blobs: BlobStore,
        prefix: str,
        membership: Membership,
        metrics: OwnershipMetrics | None = None,
        keep: int = 2,
    ) -> None:
        self.partitions = partitions
        self.counter_config = counter_config
        self.blobs = blobs
        self.prefix = prefix
        self.membership = membership
        self.metrics = metrics
        self.keep = keep
        self.states: dict[int, PartitionState] = {}  # the partitions applied now
        self._revisions: dict[int, int] = {}  # owned (applied or being taken over): claim
        self._subscriptions: dict[int, Any] = {}
        self._takeovers: dict[int, asyncio.Task[None]] = {}
        self._stores: dict[int, SnapshotStore] = {}  # each knows which it verified
        self._periodic: asyncio.Task[None] | None = None
        self._js: Any = None

    def snapshots(self, partition: int) -> SnapshotStore:
        """Where ``partition``'s snapshots live."""
        store = self._stores.get(partition)
        if store is None:
            store = SnapshotStore(self.blobs, self.keep, f"{self.prefix}{partition:04d}/snapshots/")
            self._stores[partition] = store
        return store

    def load(self, partition: int) -> PartitionState:
        """The newest usable snapshot of ``partition`` (an empty engine without one); runs
        in a worker thread."""
        config = self.counter_config
        loaded = self.snapshots(partition).load_newest(lambda data: decode_state(data, config))
        if loaded is None:
            return PartitionState(Engine(config))
        sequence = loaded.snapshot.sequence
        return PartitionState(loaded.state, sequence, sequence)

    def caught_up(self, partition: int) -> Engine | None:
        """``partition``'s engine if this replica applies it and has replayed the stream up
        to where it stood when the partition was gained (what queries may answer from);
        None otherwise: not owned, or still loading or replaying."""
        state = self.states.get(partition)
        return state.engine if state is not None and not state.catch_up else None

    def apply(self, partition: int, sequence: int, data: bytes) -> None:
        """Apply the stream's message ``sequence`` (a ``RecordBatch``) to ``partition``; a
        message at or before the partition's sequence (delivered again) changes nothing."""
        state = self.states[partition]
        if sequence <= state.sequence:
            return
        apply = state.engine.apply
        for record in decode_records(data):
            apply(record)
        state.sequence = sequence
        if state.catch_up and sequence >= state.catch_up:
            self._caught_up(state)

    async def start(self, js: Any) -> None:
        """Follow the membership: take over the partitions it gives this replica (now and
        whenever they change), give up those it takes away."""
        self._js = js
        self.membership.add_listener(self._ownership_changed)
        await self._ownership_changed(self.membership.owned())

    async def _ownership_changed(self, owned: Mapping[int, int]) -> None:
        """Awaited by the membership before it releases a claim: a partition lost is no
        longer applied when this returns; one gained is taken over in the background (a
        long replay must not hold up the membership's renewals)."""
        for partition, revision in list(self._revisions.items()):
            if owned.get(partition) != revision:
                await self._give_up(partition)
        for partition, revision in owned.items():
            if partition not in self._revisions:
                self._revisions[partition] = revision
                self._takeovers[partition] = asyncio.create_task(
                    self._take_over(partition, revision), name=f"take over partition {partition}"
                )
                if self.metrics is not None:
                    self.metrics.moves.labels("gained").inc()
        if self.metrics is not None:
            self.metrics.owned.set(len(self._revisions))

    async def _take_over(self, partition: int, revision: int) -> None:
        """Load ``partition``'s newest snapshot and consume the stream after it; while the
        store or NATS fails, owned but not applied, tried again every ``RETRY_SECONDS``."""
        gained = time.monotonic()
        while True:
            try:
                target = await self._last_sequence(partition)
                state = await asyncio.to_thread(self.load, partition)
                state.revision = revision
                state.gained = gained
                state.catch_up = target
                self.states[partition] = state
                if target <= state.sequence:
                    self._caught_up(state)
                self._subscriptions[partition] = await self._consume(partition, state)
                break
            except Exception as exc:
                self.states.pop(partition, None)
                log.warning("partition %d: cannot take it over yet (%s)", partition, reason(exc))
            await asyncio.sleep(RETRY_SECONDS)
        self._takeovers.pop(partition, None)

    def _caught_up(self, state: PartitionState) -> None:
        state.catch_up = 0
        if self.metrics is not None:
            self.metrics.takeover_seconds.observe(time.monotonic() - state.gained)

    async def _last_sequence(self, partition: int) -> int:
        """The stream sequence of ``partition``'s last message now (0 if none)."""
        from nats.js.errors import NotFoundError

        try:
            message = await self._js.get_last_msg(STREAM, subject(partition))
        except NotFoundError:
            return 0
        return int(message.seq)

    async def _give_up(self, partition: int) -> None:
        """Stop applying ``partition`` at once and drop its engine (and its snapshots'
        bookkeeping: the next owner writes them)."""
        # Dropped before any await: nothing applies or snapshots it from here on, even
        # if this is cancelled (the membership's round timing out) before it is done.
        del self._revisions[partition]
        self.states.pop(partition, None)
        self._stores.pop(partition, None)
        task = self._takeovers.pop(partition, None)
        subscription = self._subscriptions.pop(partition, None)
        if self.metrics is not None:
            self.metrics.moves.labels("lost").inc()
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if subscription is not None:
            await unsubscribe(subscription)

    async def _consume(self, partition: int, state: PartitionState) -> Any:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        if state.sequence:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=state.sequence + 1
            )
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        may_apply = self.membership.may_apply
        revision = state.revision

        async def received(message: Any) -> None:
            # Fencing: the lease may lapse, or the claim go, before the membership's
            # listener has stopped this consumer.
            if self.states.get(partition) is not state or not may_apply(partition, revision):
                return
            try:
                self.apply(partition, message.metadata.sequence.stream, message.data)
            except Exception:  # a message this version cannot read: say so, stay up
                log.exception(
                    "partition %d: cannot apply stream message %d",
                    partition,
                    message.metadata.sequence.stream,
                )

        return await self._js.subscribe(
            subject(partition),
            stream=STREAM,
            cb=received,
            ordered_consumer=True,
            config=config,
        )

    def start_snapshots(self, interval: float) -> None:
        """Snapshot the partitions that changed every ``interval`` seconds (until ``stop``)."""
        self._periodic = asyncio.get_running_loop().create_task(self._snapshots(interval))

    async def _snapshots(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.snapshot()
            except Exception:  # a bug, not the store: the next interval tries again
                log.exception("partition snapshots failed unexpectedly; trying again later")

    async def stop(self) -> None:
        """Stop the periodic snapshots and consuming (the engines stay as they are)."""
        if self._periodic is not None:
            self._periodic.cancel()
            await asyncio.wait([self._periodic])
        for task in self._takeovers.values():
            task.cancel()
        if self._takeovers:
            await asyncio.wait(self._takeovers.values())
        self._takeovers.clear()
        for subscription in self._subscriptions.values():
            await unsubscribe(subscription)
        self._subscriptions.clear()

    async def snapshot(self) -> int:
        """A snapshot of each partition that changed since its last one; how many were
        stored. A partition whose snapshot cannot be stored now is tried next time."""
        stored = 0
        for partition, state in list(self.states.items()):
            if state.sequence <= state.snapshot_sequence:
                continue
            sequence = state.sequence  # read with the freeze: no await in between
            freeze = state.engine.freeze()
            try:
                pieces = await between_requests(state_in_steps(freeze))
            finally:
                state.engine.thaw()
            data = b"".join(pieces)
            # Only the current owner writes (a stale one's late write could only store an
            # older sequence, which loaders pass over: see docs/scale-out.md).
            if not self.membership.may_apply(partition, state.revision):
                continue
            try:
                await asyncio.to_thread(self.snapshots(partition).write, sequence, data)
            except (StorageError, DamagedSnapshot) as exc:
                log.warning("partition %d: snapshot not stored (%s)", partition, exc)
                continue
            state.snapshot_sequence = sequence
            stored += 1
        return stored

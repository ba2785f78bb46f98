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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kimball_grpc.cluster.event_log import STREAM, subject
from kimball_grpc.codec.state_codec import decode_records, decode_state, state_in_steps
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.steps import between_requests
from storage.blob_store import BlobStore, StorageError
from storage.snapshots import DamagedSnapshot, SnapshotStore

log = logging.getLogger(__name__)


@dataclass
class PartitionState:
    """One partition's engine and the stream sequence of the last message applied to it;
    ``snapshot_sequence``: the one its newest stored snapshot holds."""

    engine: Engine
    sequence: int = 0
    snapshot_sequence: int = 0


class PartitionEngines:
    """The partitions this replica applies, by number; which ones comes from ``owned``
    (every partition while no membership decides; the ownership plugs in there)."""

    def __init__(
        self,
        partitions: int,
        counter_config: CounterConfig,
        blobs: BlobStore,
        prefix: str,
        owned: Callable[[], Iterable[int]] | None = None,
        keep: int = 2,
    ) -> None:
        self.partitions = partitions
        self.counter_config = counter_config
        self.blobs = blobs
        self.prefix = prefix
        self.owned = owned or (lambda: range(partitions))
        self.keep = keep
        self.states: dict[int, PartitionState] = {}
        self._subscriptions: dict[int, Any] = {}
        self._stores: dict[int, SnapshotStore] = {}  # each knows which it verified
        self._periodic: asyncio.Task[None] | None = None

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

    async def start(self, js: Any) -> None:
        """Load each owned partition's snapshot, then consume the stream after it."""
        for partition in self.owned():
            state = await asyncio.to_thread(self.load, partition)
            self.states[partition] = state
            self._subscriptions[partition] = await self._consume(js, partition, state.sequence)
        log.info(
            "applying %d partitions of %s from their snapshots (%d had one)",
            len(self.states),
            STREAM,
            sum(s.snapshot_sequence > 0 for s in self.states.values()),
        )

    async def _consume(self, js: Any, partition: int, after: int) -> Any:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        if after:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
            )
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)

        async def received(message: Any) -> None:
            try:
                self.apply(partition, message.metadata.sequence.stream, message.data)
            except Exception:  # a message this version cannot read: say so, stay up
                log.exception(
                    "partition %d: cannot apply stream message %d",
                    partition,
                    message.metadata.sequence.stream,
                )

        return await js.subscribe(
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
        for subscription in self._subscriptions.values():
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # the connection is gone: nothing to unsubscribe
                log.debug("unsubscribe: %s", exc)
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
            try:
                await asyncio.to_thread(self.snapshots(partition).write, sequence, data)
            except (StorageError, DamagedSnapshot) as exc:
                log.warning("partition %d: snapshot not stored (%s)", partition, exc)
                continue
            state.snapshot_sequence = sequence
            stored += 1
        return stored

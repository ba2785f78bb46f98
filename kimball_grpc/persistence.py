"""Keeping the engine durable: restore at start-up, snapshots while running and at shutdown.

Every state change is in the write-ahead log before it is applied (``Ingestor``).
A snapshot is the engine state as of a log sequence number, in the blob store,
read back whole before anything it supersedes is deleted; the log segments
that all kept (verified) snapshots cover are removed, so the log still holds
what falling back to the oldest kept snapshot needs. Start-up loads the newest
usable snapshot (moving damaged ones aside) and replays the log after it; a
record neither gives stops start-up, unless the operator chose to skip it.

A snapshot does not stop ingestion: each namespace is copied at once (between
two requests), the copies are encoded in small steps between requests, and the
object is stored from a worker thread. Its
sequence number is the log's when the copying starts, so namespaces copied
later may already hold some records after it; replaying those changes nothing
(a user already in a counter is not counted again), so the restored state is
exact.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kimball_grpc.codec.state_codec import (
    capture_flags,
    capture_namespace,
    decode_records,
    decode_state,
    encoding_steps,
)
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import InvalidStoredData
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.backoff import Backoff
from storage.blob_store import StorageError
from storage.snapshots import DamagedSnapshot, SnapshotStore
from storage.wal import WriteAheadLog

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
SHUTDOWN_SNAPSHOT_SECONDS = 20.0


class RestoreAbandoned(Exception):
    """The restore was stopped because the server is shutting down."""


@dataclass(frozen=True)
class Restored:
    """What start-up found: the snapshot's sequence (0: none) and what the log added."""

    snapshot_sequence: int
    replayed_records: int
    last_sequence: int


class Persistence:
    """The write-ahead log and the snapshots of one engine."""

    def __init__(
        self,
        engine: Engine,
        wal: WriteAheadLog,
        snapshots: SnapshotStore,
        metrics: Metrics,
        *,
        interval: float = 60.0,
        counter_startup_delay: float = 0.0,
    ) -> None:
        self.engine = engine
        self.wal = wal
        self.snapshots = snapshots
        self.metrics = metrics
        self.interval = interval
        self.counter_startup_delay = counter_startup_delay
        self.snapshot_sequence = 0
        self._backend_down = False
        self._periodic: asyncio.Task[None] | None = None
        self._stopping = threading.Event()

    # -- start-up ------------------------------------------------------------

    async def restore(self) -> Restored:
        """The newest usable snapshot, then the log after it, into the engine.

        While the blob store is unreachable this waits and retries (with backoff,
        one log line per try): starting without the snapshot would lose data.
        ``DamagedLog`` if records after the snapshot are in neither it nor the log
        (unless the log skips damage); ``StorageError`` if the log's directory is unusable.
        """
        config = self.engine.counter_config
        restored, sequence = await self._retrying(
            "load the newest snapshot", lambda: asyncio.to_thread(self._load_snapshot, config)
        )
        self.wal.open(after=sequence)
        try:
            found = await asyncio.to_thread(self._replay, restored, sequence)
        except BaseException:  # not starting: release the log's file
            await self.wal.close()
            raise
        for ns in restored.namespace_objects():
            self.engine.restore_namespace(ns)
        self.engine.flags.replace_all(restored.flags.listed(), restored.flags.version)
        self.snapshot_sequence = found.snapshot_sequence
        self.wal.continue_after(found.snapshot_sequence)
        log.info(
            "state restored: snapshot up to record %d, %d records replayed from the "
            "write-ahead log, next record %d",
            found.snapshot_sequence,
            found.replayed_records,
            self.wal.last_sequence + 1,
        )
        return found

    def _load_snapshot(self, config: CounterConfig) -> tuple[Engine, int]:
        """The newest usable snapshot in a new engine, and its sequence (a new, empty
        engine and 0 without one); runs in a worker thread."""
        pause = self._pause_between_counters()
        loaded = self.snapshots.load_newest(lambda data: decode_state(data, config, pause))
        if loaded is None:
            return Engine(config), 0
        return loaded.state, loaded.snapshot.sequence

    def _replay(self, engine: Engine, sequence: int) -> Restored:
        """The log after the snapshot up to ``sequence`` into ``engine`` (a worker thread:
        nothing else runs yet). Records it lacks go to ``WriteAheadLog.skip_or_stop``."""
        first = self.wal.first_sequence
        if first is not None and first > sequence + 1:
            self.wal.skip_or_stop(
                sequence + 1,
                first - 1,
                f"no usable snapshot holds them (see above for snapshots moved aside) and "
                f"the log in {self.wal.directory} starts at record {first}",
            )
        replayed, last = 0, sequence
        for entry in self.wal.entries(after=sequence):
            try:
                records = decode_records(entry.payload)
            except InvalidStoredData as exc:
                self.wal.skip_or_stop(
                    max(entry.sequence, sequence + 1),
                    entry.last,
                    f"{entry.path} at byte {entry.offset} cannot be decoded ({exc.message})",
                )
                last = entry.last
                continue
            for number, record in enumerate(records, start=entry.sequence):
                if number > sequence:
                    engine.apply(record)
                    replayed += 1
            last = entry.last
        return Restored(sequence, replayed, last)

    def _pause_between_counters(self) -> Callable[[], None] | None:
        """``counter_startup_delay``: a pause after each counter restored (worker thread);
        ends the restore early once ``abandon_restore`` was called (shutdown)."""
        delay = self.counter_startup_delay
        stopping = self._stopping

        def pause() -> None:
            if stopping.wait(delay):
                raise RestoreAbandoned("shutting down during the restore")

        return pause if delay > 0 else None

    def abandon_restore(self) -> None:
        """Make a restore in progress stop at its next counter (the process is stopping)."""
        self._stopping.set()

    # -- snapshots -------------------------------------------------------------

    def start_snapshots(self) -> None:
        """Take snapshots every ``interval`` from now on (until ``close``)."""
        self._periodic = asyncio.get_running_loop().create_task(self._snapshot_periodically())

    async def _snapshot_periodically(self) -> None:
        """Every ``interval``, a snapshot if records came in since the last one."""
        while True:
            await asyncio.sleep(self.interval)
            if self.wal.last_sequence > self.snapshot_sequence:
                try:
                    await self._retrying(
                        "store a snapshot (ingestion goes on into the write-ahead log)",
                        self.snapshot,
                    )
                except Exception:  # a bug, not the backend: the next interval tries again
                    self.metrics.snapshots.labels("failed").inc()
                    log.exception("snapshot failed unexpectedly; trying again next interval")

    async def snapshot(self) -> None:
        """Store a snapshot of the engine now, then drop the log segments that every kept
        snapshot covers."""
        started = time.perf_counter()
        sequence = self.wal.last_sequence  # every record up to here is applied
        # Taken with the sequence: replaying a spec change twice would count its version twice.
        flags = capture_flags(self.engine.flags)
        captures = []
        for ns in self.engine.namespace_objects():
            captures.append(capture_namespace(ns))
            await asyncio.sleep(0)  # requests go on between namespaces
        steps = encoding_steps(captures, flags)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                state: bytes = done.value
                break
            await asyncio.sleep(0)  # requests go on between steps
        await self._store(sequence, state, started, sum(len(c.counters) for c in captures))

    async def _store(self, sequence: int, state: bytes, started: float, counters: int) -> None:
        """Store the encoded ``state`` as the snapshot up to ``sequence`` and read it back;
        once it is whole, drop the snapshots and log segments the kept ones cover.
        ``StorageError`` if the backend fails (nothing is deleted); a snapshot that does
        not read back is counted and deletes nothing (the next one tries again)."""
        try:
            written = await asyncio.to_thread(self.snapshots.write, sequence, state)
        except StorageError:
            self.metrics.snapshots.labels("failed").inc()
            raise
        except DamagedSnapshot:  # logged where it was found, and moved aside
            self.metrics.snapshots.labels("unverified").inc()
            return
        self.snapshot_sequence = sequence
        # Only what every kept snapshot holds: falling back to the oldest needs the rest.
        removed = 0 if written.covered is None else self.wal.remove_through(written.covered)
        seconds = time.perf_counter() - started
        self.metrics.snapshots.labels("ok").inc()
        self.metrics.snapshot_sequence.set(sequence)
        self.metrics.snapshot_seconds.observe(seconds)
        self.metrics.persist_counters_managed.set(counters)
        log.info(
            "snapshot up to record %d stored in %s and read back (%d bytes, %.2f s); "
            "%d older snapshots and %d write-ahead log segments removed",
            sequence,
            self.snapshots.blobs.uri,
            len(state),
            seconds,
            written.deleted,
            removed,
        )

    async def close(self) -> None:
        """At shutdown, after the last request: a final snapshot (one try), then close the
        log. A snapshot that cannot be stored now loses nothing: the log has it all."""
        if self._periodic is not None:
            self._periodic.cancel()
        try:
            if self.wal.last_sequence > self.snapshot_sequence:
                await asyncio.wait_for(self.snapshot(), SHUTDOWN_SNAPSHOT_SECONDS)
        except (StorageError, TimeoutError) as exc:
            log.warning("no snapshot at shutdown (%s); the write-ahead log keeps everything", exc)
        finally:
            await self.wal.close()

    # -- the blob store going away -----------------------------------------------

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it does not raise ``StorageError``; exponential backoff with
        jitter between tries; the backend's state in a metric and one log line per try."""
        backoff = Backoff(FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS)
        while True:
            try:
                result = await attempt()
            except StorageError as exc:
                self._backend_down = True
                self.metrics.storage_up.set(0)
                wait = backoff.next_delay()
                log.warning("cannot %s (%s); retrying in %.1f s", what, exc.message, wait)
                await asyncio.sleep(wait)
                continue
            if self._backend_down:
                log.info("snapshot storage %s is reachable again", self.snapshots.blobs.uri)
                self._backend_down = False
            self.metrics.storage_up.set(1)
            return result

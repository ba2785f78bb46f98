"""Keeping the engine durable: restore at start-up, snapshots while running and at shutdown.

Every state change is in the write-ahead log before it is applied (``Ingestor``).
A snapshot is the engine state as of a log sequence number, in the blob store,
read back whole before anything it supersedes is deleted; the log segments
that all kept (verified) snapshots cover are removed, so the log still holds
what falling back to the oldest kept snapshot needs. Start-up loads the newest
usable snapshot (moving damaged ones aside) and replays the log after it; a
record neither gives stops start-up, unless the operator chose to skip it.

A snapshot does not stop ingestion, whatever the size of the state (``_encode_state``):
it freezes the engine as of the log's last record (``Engine.freeze``: from then on a
counter is copied before it first changes), encodes it in steps of about a millisecond
between requests, then joins the bytes and stores them from worker threads. It is
exactly the state as of its sequence number: the sequence is read and the engine frozen
with no ``await`` in between, so every record up to it is in, and none after it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kimball_grpc.codec.state_codec import decode_records, decode_state, state_in_steps
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import InvalidStoredData
from kimball_grpc.core.records import EventRecord
from kimball_grpc.core.steps import between_requests
from kimball_grpc.metrics import Metrics
from kimball_grpc.outbound.backoff import Backoff
from storage.blob_store import StorageError
from storage.snapshots import DamagedSnapshot, SnapshotStore
from storage.wal import WriteAheadLog

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
# The last snapshot at shutdown is stored only if it is encoded within this long (storing
# takes about as long again), so stopping stays well under 5 s whatever the size of the
# state: the log holds every record; the next start replays those the snapshots lack.
SHUTDOWN_ENCODING_SECONDS = 1.5


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
        self.last_encoding_seconds: float | None = None  # of the last snapshot taken here
        self._encoding = asyncio.Lock()  # one snapshot at a time: two would only cost twice
        self._storing: asyncio.Future | None = None  # the last snapshot given to the store
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
        self.engine.flags.restore_histories(restored.flags.histories())
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
            events = records and records[0].__class__ is EventRecord  # one kind per entry
            apply = engine.apply_event if events else engine.apply
            # An entry the snapshot holds in part: only its records after the snapshot.
            records = records[max(0, sequence + 1 - entry.sequence) :]
            for record in records:
                apply(record)
            replayed += len(records)
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

    async def snapshot(self, encode_within: float | None = None) -> None:
        """Store a snapshot of the engine now, then drop the log segments that every kept
        snapshot covers. ``TimeoutError`` if it is not encoded within ``encode_within``
        seconds (then nothing is stored)."""
        started = time.perf_counter()
        async with asyncio.timeout(encode_within):
            sequence, counters, state = await self._encode_state()
        encoded = time.perf_counter() - started
        # Shielded: cancelled (at shutdown), the caller stops waiting but the object is still
        # written whole (``close`` waits for it): given up half-way, it would leave a part.
        storing = self._storing = asyncio.ensure_future(
            asyncio.to_thread(self.snapshots.write, sequence, state)
        )
        storing.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            written = await asyncio.shield(storing)
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
        self.last_encoding_seconds = encoded
        self.metrics.snapshots.labels("ok").inc()
        self.metrics.snapshot_sequence.set(sequence)
        self.metrics.snapshot_seconds.observe(seconds)
        self.metrics.persist_counters_managed.set(counters)
        log.info(
            "snapshot up to record %d stored in %s and read back (%d bytes, %.2f s, of which "
            "%.2f s to encode); %d older snapshots and %d write-ahead log segments removed",
            sequence,
            self.snapshots.blobs.uri,
            len(state),
            seconds,
            encoded,
            written.deleted,
            removed,
        )

    async def _encode_state(self) -> tuple[int, int, bytes]:
        """(sequence, counters, state): the engine's state as of the log's last record, how
        many counters it holds, and its bytes (``state_codec.state_in_steps``).

        Exact as of ``sequence``: a record is applied as the log moves past it, and nothing
        awaits between reading the sequence and freezing the engine, so no request runs
        in between. Requests go on during the encoding, between its steps; what they
        change is copied first (``Engine.freeze``), so the encoding reads the state as of
        the freeze whatever happens meanwhile.
        """
        async with self._encoding:
            sequence = self.wal.last_sequence  # every record up to here is applied
            freeze = self.engine.freeze()
            try:
                pieces = await between_requests(state_in_steps(freeze))
            finally:
                self.engine.thaw()
        # Hundreds of MB in the largest states: joined in a worker thread, which the join of
        # bytes objects (not of a bytearray) lets the event loop run beside.
        state = await asyncio.to_thread(b"".join, pieces)
        return sequence, freeze.counter_count, state

    async def close(self) -> None:
        """At shutdown, after the last request: a last snapshot if it is encoded within
        ``SHUTDOWN_ENCODING_SECONDS``, then close the log. Without it nothing is lost: the
        log holds every record, and the next start replays those after the newest snapshot."""
        if self._periodic is not None:
            self._periodic.cancel()  # a snapshot being encoded stops at its next step
            await asyncio.wait([self._periodic])
        if self._storing is not None and not self._storing.done():
            await asyncio.wait([self._storing])  # one being stored is finished
        try:
            await self._last_snapshot()
        finally:
            await self.wal.close()

    async def _last_snapshot(self) -> None:
        last, stored = self.wal.last_sequence, self.snapshot_sequence
        if last <= stored:
            return
        replay = f"the next start replays records {stored + 1} to {last} from the write-ahead log"
        bound = SHUTDOWN_ENCODING_SECONDS
        took = self.last_encoding_seconds
        if took is not None and took > bound:
            log.info(
                "no snapshot at shutdown: the last one took %.1f s to encode, more than the %g s "
                "allowed; %s",
                took,
                bound,
                replay,
            )
            return
        try:
            # Once encoded it is stored whatever that takes: a store given up half-way would
            # leave its partial object behind.
            await self.snapshot(encode_within=bound)
        except TimeoutError:
            log.warning("no snapshot at shutdown: not encoded in %g s; %s", bound, replay)
        except StorageError as exc:
            log.warning("no snapshot at shutdown (%s); %s", exc.message, replay)

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

"""State every replica holds alike, kept in a JetStream key-value bucket: each entry holds
records in the write-ahead log's encoding (``encode_records``), and every replica applies
the entries in revision order, once each.

``ReplicatedRecords`` writes an entry only if the bucket holds nothing newer than what the
writing replica applied (JetStream's ``Nats-Expected-Last-Sequence``), so a write is
checked (limits, the thing exists) against the one state every replica reaches, and the
limits hold cluster-wide. The feature specs (``spec_store``) and the known namespaces and
names (``name_store``) are such buckets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from kimball_grpc.cluster.jetstream_start import reason, when_jetstream_answers
from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.core.errors import InvalidStoredData, KimballError
from kimball_grpc.core.records import Record

WRITE_SECONDS = 5.0  # for NATS to acknowledge an entry, then for the watch to bring it back
WRITE_ATTEMPTS = 8  # entries written elsewhere in between, before the writer gives up
REWATCH_SECONDS = 1.0  # after a failed watch: NATS is likely still coming back
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code: the bucket holds a newer entry

log = logging.getLogger(__name__)


class StateStoreUnavailable(KimballError):
    """A replicated bucket did not take (or bring back) an entry in time."""

    grpc_code = "UNAVAILABLE"


class _NewerEntry(Exception):
    """The bucket holds an entry this replica has not applied yet."""


class RecordBucket:
    """``open``, then ``put`` entries and ``watch`` them (from every replica). Subclasses
    name the bucket, its history, an entry's key, and which entries are valid."""

    bucket = ""
    history = 1

    def __init__(self, nc: Any, bucket_replicas: int = 1) -> None:
        self._nc = nc  # a connected nats.aio.client.Client
        self._bucket_replicas = bucket_replicas
        self._kv: Any = None

    def key(self, records: Sequence[Record]) -> str:
        raise NotImplementedError

    def valid(self, key: str, records: Sequence[Record]) -> str:
        """Why an entry read back is no entry of this bucket ("" if it is one)."""
        raise NotImplementedError

    async def open(self) -> None:
        """Open the bucket, creating it if it is absent."""
        from nats.js.errors import BucketNotFoundError

        js = self._nc.jetstream()
        try:
            self._kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(
                bucket=self.bucket, history=self.history, replicas=self._bucket_replicas
            )

    async def put(self, records: Sequence[Record], after: int | None = None) -> int:
        """Write an entry; its revision in the bucket. Applied once it comes back through
        ``watch``. With ``after``: written only if ``after`` is the bucket's last revision,
        else ``_NewerEntry`` (nothing written)."""
        key, value = self.key(records), encode_records(records)
        if after is None:
            return await self._kv.put(key, value)
        from nats.js.errors import APIError

        try:
            ack = await self._nc.jetstream().publish(
                f"$KV.{self.bucket}.{key}",
                value,
                timeout=WRITE_SECONDS,
                headers={"Nats-Expected-Last-Sequence": str(after)},
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise _NewerEntry from None
            raise
        return ack.seq

    async def last_revision(self) -> int:
        """The revision of the bucket's newest entry (0: none)."""
        return (await self._kv.status()).stream_info.state.last_seq

    async def watch(self) -> AsyncIterator[tuple[int, list[Record] | None]]:
        """Every entry the bucket holds, oldest first, then each new one as it is
        written: (revision, records), the records None for an entry that holds none (a
        marker, or a value that does not decode: skipped and logged). Endless; cancel it
        to stop."""
        watcher = await self._kv.watchall(include_history=True)
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the history
                records = None if entry.operation is not None else self._decoded(entry)
                yield entry.revision, records
        finally:
            # Best effort: after a NATS outage the unsubscribe may time out, and the
            # subscription ends with the connection anyway.
            with contextlib.suppress(Exception):
                await watcher.stop()

    def _decoded(self, entry: Any) -> list[Record] | None:
        try:
            records = decode_records(entry.value)
        except InvalidStoredData as exc:
            log.warning("skipping %r in %s: %s", entry.key, self.bucket, exc)
            return None
        why = self.valid(entry.key, records)
        if why:
            log.warning("skipping %r in %s: %s", entry.key, self.bucket, why)
            return None
        return records


class ReplicatedRecords:
    """A replica's copy of a bucket's state: ``start`` applies every entry to ``apply``,
    in revision order, once; ``write`` writes an entry checked against that state and
    answers once it is applied here."""

    def __init__(self, bucket: RecordBucket) -> None:
        self._bucket = bucket
        self.revision = 0  # the bucket's newest entry applied here
        self._moved = asyncio.Event()  # set at every entry applied (then replaced)
        self._writing = asyncio.Lock()  # this replica's writes take turns, not conflict
        self._task: asyncio.Task[None] | None = None

    async def start(self, apply: Callable[[Sequence[Record]], None]) -> None:
        """Open the bucket, then apply what it holds before returning (so the first
        answers already see it), and every later entry as it comes."""
        what = f"the JetStream bucket {self._bucket.bucket}"
        await when_jetstream_answers(what, self._bucket.open)
        self._task = asyncio.get_running_loop().create_task(self._follow(apply))
        # A watch started while NATS elects the bucket's leader fails and is started
        # again: wait for it as for the bucket.
        await when_jetstream_answers(what, self._catch_up)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, apply: Callable[[Sequence[Record]], None]) -> None:
        """Apply each new entry, watching again after a failure (a NATS outage can end a
        watch or time out its start): the entries applied already are skipped."""
        while True:
            try:
                async for revision, records in self._bucket.watch():
                    if revision <= self.revision:
                        continue  # delivered again after a reconnection: applied already
                    if records:
                        apply(records)
                    self.revision = revision
                    self._moved.set()
                    self._moved = asyncio.Event()
            except Exception as exc:
                log.warning(
                    "watching %s failed (%s); watching again", self._bucket.bucket, reason(exc)
                )
            await asyncio.sleep(REWATCH_SECONDS)

    async def write(self, records: Sequence[Record], check: Callable[[], object]) -> None:
        """Write ``records`` once ``check`` (which raises to refuse them) passes against
        the state as of the bucket's newest entry; returns once they are applied here.
        ``StateStoreUnavailable`` if NATS does not take them in time (or the bucket
        changes ``WRITE_ATTEMPTS`` times in a row under them)."""
        async with self._writing:
            try:
                for _ in range(WRITE_ATTEMPTS):
                    check()
                    try:
                        # A bucket just made, or electing its leader, has no responder
                        # for a moment: tried again for the write's time.
                        revision = await when_jetstream_answers(
                            f"the JetStream bucket {self._bucket.bucket}",
                            lambda: self._bucket.put(records, after=self.revision),
                            WRITE_SECONDS,
                        )
                    except _NewerEntry:  # written elsewhere meanwhile: check against it too
                        await self._catch_up()
                        continue
                    await self._reached(revision)
                    return
            except KimballError:
                raise
            except Exception as exc:  # nats-py raises its own errors, timeouts and OSErrors
                raise StateStoreUnavailable(
                    f"NATS did not take the change to {self._bucket.bucket}, or bring it "
                    f"back, in time ({exc!r}): send it again",
                    bucket=self._bucket.bucket,
                ) from None
        raise StateStoreUnavailable(
            f"{self._bucket.bucket} kept changing while this change was written: send it again",
            bucket=self._bucket.bucket,
        )

    async def _catch_up(self) -> None:
        await self._reached(await asyncio.wait_for(self._bucket.last_revision(), WRITE_SECONDS))

    async def _reached(self, revision: int) -> None:
        """Wait (``WRITE_SECONDS`` at most) until the entry ``revision`` is applied here."""
        async with asyncio.timeout(WRITE_SECONDS):
            while self.revision < revision:
                await self._moved.wait()

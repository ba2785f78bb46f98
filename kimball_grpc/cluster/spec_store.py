"""Feature specs shared by every replica: the JetStream key-value bucket
``kimball_feature_specs`` (key: the spec's name in URL-safe base64, as a spec's name may
hold any printable character and a key only letters, digits and ``-/_=.``).

A single node logs each spec change as a ``FeatureSpecRecord`` in its write-ahead log and
applies it to its engine, which keeps the spec set and each flag's history of changes
(time, token). In cluster mode this bucket takes the log's place for specs: a change is
written as that same record, in the log's encoding (``encode_records``), and every
replica, the writer included, applies the changes as it watches them, in the bucket's
order, so every replica holds the same specs and the same histories.

- A deletion is written as a record without a spec, not as the bucket's own delete
  marker, so the deleting token and time stay in the history.
- The bucket keeps the last 64 changes of each key (JetStream's most): a replica that
  starts later replays those, so its histories hold at most 64 changes per flag where a
  single node keeps 100.
- A value that does not decode (written by something else) is skipped and logged; it
  never stops the watch.

``ReplicatedSpecs`` is a replica's side: it applies the bucket's changes in revision order,
and writes a change only if the bucket holds nothing newer than what the replica applied,
so a change is checked (limits, the spec exists) against the one state every replica
reaches, and the limits hold cluster-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from base64 import urlsafe_b64encode
from collections.abc import AsyncIterator, Callable
from typing import Any

from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.core.errors import InvalidStoredData, KimballError
from kimball_grpc.core.records import FeatureSpecRecord

SPECS_BUCKET = "kimball_feature_specs"
HISTORY = 64  # changes kept per spec: JetStream's largest history
WRITE_SECONDS = 5.0  # for NATS to acknowledge a change, then for the watch to bring it back
WRITE_ATTEMPTS = 8  # changes written elsewhere in between, before the writer gives up
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code: the bucket holds a newer change


class SpecStoreUnavailable(KimballError):
    """The feature spec bucket did not take (or bring back) a change in time."""

    grpc_code = "UNAVAILABLE"


class _NewerChange(Exception):
    """The bucket holds a change this replica has not applied yet."""


log = logging.getLogger(__name__)


class SpecStore:
    """``open``, then ``put`` changes and ``watch`` them (from every replica)."""

    def __init__(self, nc: Any, bucket_replicas: int = 1) -> None:
        self._nc = nc  # a connected nats.aio.client.Client
        self._bucket_replicas = bucket_replicas
        self._kv: Any = None

    async def open(self) -> None:
        """Open the bucket, creating it if it is absent."""
        from nats.js.errors import BucketNotFoundError

        js = self._nc.jetstream()
        try:
            self._kv = await js.key_value(SPECS_BUCKET)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(
                bucket=SPECS_BUCKET, history=HISTORY, replicas=self._bucket_replicas
            )

    async def put(self, change: FeatureSpecRecord, after: int | None = None) -> int:
        """Write a change (a spec, or its deletion when ``change.spec`` is None); its
        revision in the bucket. Applied once it comes back through ``watch``. With
        ``after``: written only if ``after`` is the bucket's last revision, else
        ``_NewerChange`` (nothing written)."""
        if after is None:
            return await self._kv.put(spec_key(change.name), encode_records([change]))
        from nats.js.errors import APIError

        try:
            ack = await self._nc.jetstream().publish(
                f"$KV.{SPECS_BUCKET}.{spec_key(change.name)}",
                encode_records([change]),
                timeout=WRITE_SECONDS,
                headers={"Nats-Expected-Last-Sequence": str(after)},
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise _NewerChange from None
            raise
        return ack.seq

    async def last_revision(self) -> int:
        """The revision of the bucket's newest entry (0: none)."""
        return (await self._kv.status()).stream_info.state.last_seq

    async def watch(self) -> AsyncIterator[tuple[int, FeatureSpecRecord | None]]:
        """Every entry the bucket holds, oldest first, then each new one as it is
        written: (revision, change), the change None for an entry that is none (a marker,
        or a value that does not decode). Endless; cancel it to stop."""
        watcher = await self._kv.watchall(include_history=True)
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the history
                change = None if entry.operation is not None else _decoded(entry.key, entry.value)
                yield entry.revision, change
        finally:
            await watcher.stop()


class ReplicatedSpecs:
    """A replica's feature specs: ``start`` applies every change of the bucket to
    ``apply`` (the local spec state), in revision order, once; ``write`` writes a change
    checked against that state and answers once it is applied here."""

    def __init__(self, store: SpecStore) -> None:
        self._store = store
        self.revision = 0  # the bucket's newest entry applied here
        self._moved = asyncio.Event()  # set at every entry applied (then replaced)
        self._task: asyncio.Task[None] | None = None

    async def start(self, apply: Callable[[FeatureSpecRecord], None]) -> None:
        """Open the bucket, then apply what it holds before returning (so the first
        answers already see every spec), and every later change as it comes."""
        await self._store.open()
        self._task = asyncio.get_running_loop().create_task(self._follow(apply))
        await self._catch_up()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, apply: Callable[[FeatureSpecRecord], None]) -> None:
        async for revision, change in self._store.watch():
            if revision <= self.revision:
                continue  # delivered again after a reconnection: applied already
            if change is not None:
                apply(change)
            self.revision = revision
            self._moved.set()
            self._moved = asyncio.Event()

    async def write(self, change: FeatureSpecRecord, check: Callable[[], object]) -> None:
        """Write ``change`` once ``check`` (which raises to refuse it) passes against the
        specs as of the bucket's newest entry; returns once it is applied here.
        ``SpecStoreUnavailable`` if NATS does not take it in time (or the bucket changes
        ``WRITE_ATTEMPTS`` times in a row under it)."""
        try:
            for _ in range(WRITE_ATTEMPTS):
                check()
                try:
                    revision = await self._store.put(change, after=self.revision)
                except _NewerChange:  # written elsewhere meanwhile: check against it too
                    await self._catch_up()
                    continue
                await self._reached(revision)
                return
        except KimballError:
            raise
        except Exception as exc:  # nats-py raises its own errors, timeouts and OSErrors
            raise SpecStoreUnavailable(
                f"the feature spec store (NATS) did not take the change, or bring it back, "
                f"in time ({exc!r}): send it again",
                name=change.name,
            ) from None
        raise SpecStoreUnavailable(
            f"the feature specs kept changing while {change.name!r} was written; send it again",
            name=change.name,
        )

    async def _catch_up(self) -> None:
        await self._reached(await asyncio.wait_for(self._store.last_revision(), WRITE_SECONDS))

    async def _reached(self, revision: int) -> None:
        """Wait (``WRITE_SECONDS`` at most) until the entry ``revision`` is applied here."""
        async with asyncio.timeout(WRITE_SECONDS):
            while self.revision < revision:
                await self._moved.wait()


def _decoded(key: str, value: bytes) -> FeatureSpecRecord | None:
    try:
        records = decode_records(value)
    except InvalidStoredData as exc:
        log.warning("skipping the feature spec change %r in %s: %s", key, SPECS_BUCKET, exc)
        return None
    if len(records) != 1 or not isinstance(records[0], FeatureSpecRecord):
        log.warning("skipping %r in %s: not one feature spec change", key, SPECS_BUCKET)
        return None
    if spec_key(records[0].name) != key:
        log.warning("skipping %r in %s: it changes the spec %r", key, SPECS_BUCKET, records[0].name)
        return None
    return records[0]


def spec_key(name: str) -> str:
    """The bucket's key for the spec ``name``."""
    return urlsafe_b64encode(name.encode()).decode()

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
"""

from __future__ import annotations

import logging
from base64 import urlsafe_b64encode
from collections.abc import AsyncIterator
from typing import Any

from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.core.errors import InvalidStoredData
from kimball_grpc.core.records import FeatureSpecRecord

SPECS_BUCKET = "kimball_feature_specs"
HISTORY = 64  # changes kept per spec: JetStream's largest history

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

    async def put(self, change: FeatureSpecRecord) -> int:
        """Write a change (a spec, or its deletion when ``change.spec`` is None); its
        revision in the bucket. Applied once it comes back through ``watch``."""
        return await self._kv.put(spec_key(change.name), encode_records([change]))

    async def watch(self) -> AsyncIterator[tuple[int, FeatureSpecRecord]]:
        """Every change the bucket holds, oldest first, then each new one as it is
        written: (revision, change). Endless; cancel it to stop."""
        watcher = await self._kv.watchall(include_history=True)
        try:
            async for entry in watcher:
                if entry is None or entry.operation is not None:
                    continue  # the end of the history; or a marker, not a change
                change = _decoded(entry.key, entry.value)
                if change is not None:
                    yield entry.revision, change
        finally:
            await watcher.stop()


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

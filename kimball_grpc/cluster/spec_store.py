"""Feature specs shared by every replica: the JetStream key-value bucket
``kimball_feature_specs`` (key: the spec's name in URL-safe base64, as a spec's name may
hold any printable character and a key only letters, digits and ``-/_=.``).

A single node logs each spec change as a ``FeatureSpecRecord`` in its write-ahead log and
applies it to its engine, which keeps the spec set and each flag's history of changes
(time, token). In cluster mode this bucket takes the log's place for specs: a change is
written as that same record, in the log's encoding, and every replica, the writer
included, applies the changes as it watches them, in the bucket's order, so every replica
holds the same specs and the same histories (``ReplicatedRecords``: a change is checked
against the specs every replica reaches, so the limits on specs hold cluster-wide).

- A deletion is written as a record without a spec, not as the bucket's own delete
  marker, so the deleting token and time stay in the history.
- The bucket keeps the last 64 changes of each key (JetStream's most): a replica that
  starts later replays those, so its histories hold at most 64 changes per flag where a
  single node keeps 100.
- A value that does not decode (written by something else) is skipped and logged; it
  never stops the watch.
"""

from __future__ import annotations

from base64 import urlsafe_b64encode
from collections.abc import Sequence

from kimball_grpc.cluster.record_buckets import RecordBucket
from kimball_grpc.core.records import FeatureSpecRecord, Record

SPECS_BUCKET = "kimball_feature_specs"
HISTORY = 64  # changes kept per spec: JetStream's largest history


class SpecStore(RecordBucket):
    """Entries of one feature spec change each, keyed by the spec's name."""

    bucket = SPECS_BUCKET
    history = HISTORY

    def key(self, records: Sequence[Record]) -> str:
        (change,) = records
        assert isinstance(change, FeatureSpecRecord)
        return spec_key(change.name)

    def valid(self, key: str, records: Sequence[Record]) -> str:
        if len(records) != 1 or not isinstance(records[0], FeatureSpecRecord):
            return "not one feature spec change"
        if spec_key(records[0].name) != key:
            return f"it changes the spec {records[0].name!r}"
        return ""


def spec_key(name: str) -> str:
    """The bucket's key for the spec ``name``."""
    return urlsafe_b64encode(name.encode()).decode()

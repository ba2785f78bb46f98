"""The namespaces, event names, weekly counters and goals known in the cluster: the
JetStream key-value bucket ``kimball_names``, so the growth limits hold cluster-wide.

In cluster mode no replica holds every partition, so none can tell from its own state
whether a batch adds a namespace or a name. Before a replica publishes a batch that adds
something its copy of the known names lacks, it writes to this bucket the records of the
batch that add it (one per new thing), checked against the limits with
``ReplicatedRecords`` (written only if the bucket holds nothing newer than what the replica
applied, so the count is the cluster's). Every replica applies each entry to the engine
the limits are checked on, which so holds every known name (with one sample event each;
its counts are never read). A batch past a limit is refused before any of it is published.

An entry's key is the SHA-256 of its value: entries are never replaced, and the bucket
holds one entry per batch that added something, bounded by the limits themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from kimball_grpc.cluster.record_buckets import RecordBucket
from kimball_grpc.codec.state_codec import encode_records
from kimball_grpc.core.records import EventRecord, GoalRecord, Record

NAMES_BUCKET = "kimball_names"


class NameStore(RecordBucket):
    """Entries of the records that added namespaces, names or goals to the cluster."""

    bucket = NAMES_BUCKET

    def key(self, records: Sequence[Record]) -> str:
        return hashlib.sha256(encode_records(records)).hexdigest()

    def valid(self, key: str, records: Sequence[Record]) -> str:
        if not all(isinstance(record, EventRecord | GoalRecord) for record in records):
            return "not events and goals"
        return ""

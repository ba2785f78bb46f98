"""Which partition of the cluster's event stream a user's events go to."""

from __future__ import annotations

from kimball_grpc.core.bloom import KeyHash


def partition_of(user_hash: KeyHash, partitions: int) -> int:
    """The partition of the user whose 128-bit hash is ``user_hash``, of ``partitions``:
    the same in every namespace and on every replica, for as long as the count is fixed."""
    # The hash's high 64 bits, little-endian: its bytes 8 to 15.
    return int.from_bytes(user_hash.digest[8:], "little") % partitions

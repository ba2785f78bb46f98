"""Partitions of the users: which of P partitions a user's events belong to."""

from __future__ import annotations

from kimball_grpc.core.bloom import KeyHash


def partition_of(user_hash: KeyHash, partitions: int) -> int:
    """The partition of the user hashed ``user_hash`` among ``partitions`` (the same in
    every namespace)."""
    return user_hash.high % partitions

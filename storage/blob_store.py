"""The blob interface every storage backend implements, and its errors.

A ``BlobStore`` holds whole objects (bytes) by key, under one prefix of one
location (a directory, a bucket). Few primitives, all synchronous: callers in
the event loop run them in a worker thread (the cloud SDKs block). Backends
translate their SDK's errors through a table into the two errors here, so the
rest of Kimball never sees an SDK exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from kimball_grpc.core.errors import KimballError


class StorageError(KimballError):
    """The backend cannot do it now (unreachable, refused, out of space): try again later."""

    grpc_code = "UNAVAILABLE"


class BlobNotFound(StorageError):
    """No object at that key."""

    grpc_code = "NOT_FOUND"


class BlobStore(ABC):
    """Objects by key. Keys are relative to the store's prefix and use ``/`` as separator."""

    #: Where the objects live, for logs and messages (no credentials in it).
    uri: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object there atomically.

        A reader sees the old object or the new one, never part of either; when
        ``put`` returns, the object is durable.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object at ``key``; ``BlobNotFound`` if there is none."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at ``key``; no error if there is none."""


def check_key(key: str) -> str:
    """``key`` if it is a usable relative key, else ``ValueError`` (a bug in the caller)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative object key: {key!r}")
    return key


def bucket_location(scheme: str, bucket: str, prefix: str) -> tuple[str, str]:
    """(the checked prefix without slashes at its ends, the store's URI) for a bucket store."""
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    return prefix, f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"

"""The blob interface every storage backend implements, and its errors.

A ``BlobStore`` holds whole objects (bytes) by key, under one prefix of one
location (a directory, a bucket). Few primitives, all synchronous: callers in
the event loop run them in a worker thread (the cloud SDKs block). Backends
translate their SDK's errors through a table into the two errors here, so the
rest of Kimball never sees an SDK exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

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


ErrorTable = dict[str, tuple[type[StorageError], str]]
"""A backend's translation of its SDK's errors: a name (an error code or an exception class
name) -> our error and its message template, formatted with ``uri``, ``key``, ``bucket``,
``endpoint``, ``code`` and ``detail``."""


class BucketStore(BlobStore):
    """Objects at ``{prefix}/{key}`` in one cloud bucket (at its root if ``prefix`` is
    empty): what the S3 and GCS backends share."""

    def __init__(self, scheme: str, bucket: str, prefix: str, endpoint: str) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.uri = f"{scheme}://{bucket}/{self.prefix}" if self.prefix else f"{scheme}://{bucket}"
        self._endpoint = endpoint  # for messages: where the bucket is served

    def _name(self, key: str, *, check: bool = True) -> str:
        """The object name of ``key`` in the bucket."""
        if check:
            check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _keys(self, names: Iterable[str]) -> list[str]:
        """The sorted keys of listed object names. Consoles create "folder/" placeholder
        objects: they are not blobs."""
        start = len(self.prefix) + 1 if self.prefix else 0
        keys = (name[start:] for name in names)
        return sorted(k for k in keys if k and not k.endswith("/"))

    def _translated(
        self, table: ErrorTable, names: Iterable[str], key: str, code: str, detail: str
    ) -> StorageError | None:
        """Our error for the first of ``names`` that ``table`` has (None if none)."""
        entry = next((table[n] for n in names if n in table), None)
        if entry is None:
            return None
        error_type, template = entry
        message = template.format(
            uri=self.uri,
            key=key,
            bucket=self.bucket,
            endpoint=self._endpoint,
            code=code,
            detail=detail,
        )
        return error_type(message, **self._details(key))

    def _details(self, key: str) -> dict[str, str]:
        """What an error names: the bucket, and the key when there is one."""
        return {"bucket": self.bucket, "key": key} if key else {"bucket": self.bucket}

"""The Google Cloud Storage backend (GCS, or an emulator of its JSON API): one object per key."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from storage.blob_store import BlobNotFound, BucketStore, ErrorTable, StorageError

# Per request: (connect, read) seconds. Every call also retries transient failures
# (connection refused, 429, 5xx) for at most RETRY_DEADLINE_S in all, so a backend that is
# down fails a call within seconds (the caller reports UNAVAILABLE and tries later).
TIMEOUT_S = (5.0, 30.0)
RETRY_DEADLINE_S = 3.0

# The project an emulator is told about; it checks nothing.
EMULATOR_PROJECT = "kimball"

_NOT_FOUND = (BlobNotFound, "no object {uri}/{key}")
_REFUSED = (StorageError, "GCS refused the credentials for bucket {bucket!r}: {detail}")
_UNREACHABLE = (StorageError, "GCS endpoint {endpoint} is unreachable: {detail}")
_OTHER = (StorageError, "GCS error on {uri}: {code}: {detail}")

# The one translation: an exception class name (from google.api_core.exceptions,
# google.auth.exceptions, requests, urllib3 or the builtins) -> our error and its message.
# Names are looked up along the exception's MRO, most specific first; names rather than
# classes keep the SDK out of module import. A 404 may mean a missing bucket rather than a
# missing object: ``_error`` tells them apart.
_ERRORS: ErrorTable = {
    "NotFound": _NOT_FOUND,
    "Unauthorized": _REFUSED,
    "Forbidden": _REFUSED,
    "RefreshError": _REFUSED,
    "DefaultCredentialsError": (StorageError, "no GCS credentials found: {detail}"),
    "TransportError": _UNREACHABLE,  # google.auth could not reach the token endpoint
    "ConnectionError": _UNREACHABLE,  # requests' and the builtin one
    "Timeout": _UNREACHABLE,  # requests'
    "TimeoutError": _UNREACHABLE,  # urllib3's and the builtin one
    "ProtocolError": _UNREACHABLE,  # urllib3: the connection broke mid-response
    "HTTPException": _UNREACHABLE,  # http.client: a broken or cut-short response
    "DataCorruption": (StorageError, "GCS object {uri}/{key} arrived corrupted: {detail}"),
    "GoogleAPIError": _OTHER,
    "GoogleAuthError": _REFUSED,
    "InvalidResponse": _OTHER,  # google-resumable-media: an unexpected status
    "RequestException": _OTHER,  # requests, anything else
    "HTTPError": _OTHER,  # urllib3, anything else
    "FileNotFoundError": (StorageError, "cannot read the GCS credentials: {detail}"),
    "PermissionError": (StorageError, "cannot read the GCS credentials: {detail}"),
    "OSError": _UNREACHABLE,  # the socket's own errors
}


class GcsBlobStore(BucketStore):
    """Objects in one GCS bucket, under a prefix.

    ``client`` is a ``google.cloud.storage.Client`` to use as is (tests, custom
    credentials); without one, a client is built: for an emulator at ``endpoint`` with no
    credentials, else from ``credentials_file`` (a service account key), else from
    Application Default Credentials.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any = None,
        *,
        endpoint: str | None = None,
        credentials_file: Path | None = None,
        project: str | None = None,
    ) -> None:
        super().__init__("gs", bucket, prefix, endpoint or "Google Cloud Storage")
        try:
            if client is None:
                client = _default_client(endpoint, credentials_file, project)
            self._bucket = client.bucket(bucket)
        except Exception as exc:
            raise self._error(exc) from None
        self._client = client
        self._retry = _retry()

    def put(self, key: str, data: bytes) -> None:
        # One upload (multipart, or resumable past 8 MiB) creates a new generation of the
        # object, visible whole or not at all, and durable once it returns. Retrying sends
        # the same bytes to the same name, so the outcome is the same.
        blob = self._bucket.blob(self._name(key))
        try:
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                timeout=TIMEOUT_S,
                retry=self._retry,
            )
        except Exception as exc:
            # A 404 on upload can only be the bucket's.
            raise self._error(exc, key, object_may_be_missing=False) from None

    def get(self, key: str) -> bytes:
        blob = self._bucket.blob(self._name(key))
        try:
            return blob.download_as_bytes(timeout=TIMEOUT_S, retry=self._retry)
        except Exception as exc:
            raise self._error(exc, key) from None

    def list(self, prefix: str = "") -> list[str]:
        try:
            # Pages are fetched as the iterator goes, so failures surface inside the loop.
            names = [
                blob.name
                for blob in self._client.list_blobs(
                    self._bucket,
                    prefix=self._name(prefix, check=False),
                    timeout=TIMEOUT_S,
                    retry=self._retry,
                )
            ]
        except Exception as exc:
            raise self._error(exc, object_may_be_missing=False) from None
        return self._keys(names)

    def delete(self, key: str) -> None:
        blob = self._bucket.blob(self._name(key))
        try:
            blob.delete(timeout=TIMEOUT_S, retry=self._retry)
        except Exception as exc:
            error = self._error(exc, key)
            if not isinstance(error, BlobNotFound):
                raise error from None

    def _error(
        self, exc: Exception, key: str = "", *, object_may_be_missing: bool = True
    ) -> StorageError:
        """The error of ours that ``exc`` means; raises ``exc`` itself if no entry names it
        (not an SDK error, so a bug)."""
        if type(exc).__name__ == "RetryError" and getattr(exc, "cause", None) is not None:
            exc = exc.cause  # api_core gave up retrying: what went wrong is the last error
        names = [cls.__name__ for cls in type(exc).__mro__]
        code = str(getattr(exc, "code", None) or type(exc).__name__)
        detail = str(getattr(exc, "message", None) or exc)
        error = self._translated(_ERRORS, names, key, code, detail)
        if error is None:
            raise exc
        if isinstance(error, BlobNotFound) and not (
            object_may_be_missing and self._bucket_exists()
        ):
            return StorageError(
                f"GCS bucket {self.bucket!r} does not exist at {self._endpoint}",
                **self._details(key),
            )
        return error

    def _bucket_exists(self) -> bool:
        # GCS answers a bare 404 for both a missing object and a missing bucket. Asked only
        # after a 404; True when it cannot tell (object-only roles may not read the bucket).
        try:
            return bool(self._bucket.exists(timeout=TIMEOUT_S, retry=self._retry))
        except Exception:
            return True


@cache
def _retry() -> Any:
    """google-cloud-storage's own retry policy (which errors are transient), bounded."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(initial=0.25, maximum=2.0, multiplier=2.0).with_deadline(
        RETRY_DEADLINE_S
    )


def _default_client(
    endpoint: str | None, credentials_file: Path | None, project: str | None
) -> Any:
    # google-cloud-storage takes ~0.5 s to import: only deployments that store in GCS pay.
    from google.cloud import storage

    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project or EMULATOR_PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    if credentials_file is not None:
        # Without a project the key file's own project_id is used.
        options = {"project": project} if project else {}
        return storage.Client.from_service_account_json(str(credentials_file), **options)
    return storage.Client(project=project)

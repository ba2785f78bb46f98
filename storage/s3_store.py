"""The S3 backend (AWS S3 and S3-compatible servers: MinIO, Ceph, moto): one object per key."""

from __future__ import annotations

from functools import cache
from typing import Any

from storage.blob_store import BlobNotFound, BucketStore, ErrorTable, StorageError

# Short timeouts and few attempts: a backend that is down must fail a call within seconds
# (the caller reports UNAVAILABLE and tries later) instead of holding a worker thread.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
RETRIES = {"max_attempts": 3, "mode": "standard"}
# Keys per list request: S3's own maximum (the tests lower it to see several pages).
LIST_PAGE_SIZE = 1000

_NOT_FOUND = (BlobNotFound, "no object {uri}/{key}")
_REFUSED = (StorageError, "S3 refused the credentials for bucket {bucket!r}: {code}: {detail}")
_UNREACHABLE = (StorageError, "S3 endpoint {endpoint} is unreachable: {detail}")

# The one translation: a botocore error code (ClientError) or exception class name -> our
# error and its message. Class names are looked up along the MRO, so the last two entries
# catch every other botocore error; names (not classes) keep botocore out of module import.
_ERRORS: ErrorTable = {
    "NoSuchKey": _NOT_FOUND,
    "404": _NOT_FOUND,  # HEAD-style responses carry the bare status as the code
    "NoSuchBucket": (StorageError, "S3 bucket {bucket!r} does not exist at {endpoint}"),
    "AccessDenied": _REFUSED,
    "InvalidAccessKeyId": _REFUSED,
    "SignatureDoesNotMatch": _REFUSED,
    "NoCredentialsError": (StorageError, "no S3 credentials for bucket {bucket!r}: {detail}"),
    "PartialCredentialsError": (StorageError, "incomplete S3 credentials: {detail}"),
    "EndpointConnectionError": _UNREACHABLE,
    "ConnectTimeoutError": _UNREACHABLE,
    "ReadTimeoutError": _UNREACHABLE,
    "ConnectionClosedError": _UNREACHABLE,
    "ConnectionError": _UNREACHABLE,  # botocore's base of the connection failures
    "ClientError": (StorageError, "S3 error on {uri}: {code}: {detail}"),
    "BotoCoreError": (StorageError, "S3 error on {uri}: {code}: {detail}"),
}


class S3BlobStore(BucketStore):
    """Objects in one S3 bucket, under a prefix.

    ``client`` is a boto3 S3 client to use as is (tests, custom sessions); without one, a
    client is built from the other arguments, and what is not given comes from boto3's
    standard chain (environment, ``~/.aws``, instance role).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any = None,
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str | None = None,
    ) -> None:
        super().__init__("s3", bucket, prefix, endpoint_url or "AWS S3")
        if client is None:
            try:
                client = _default_client(endpoint_url, access_key_id, secret_access_key, region)
            except _sdk_errors() as exc:
                raise self._error(exc) from None
        self._client = client
        # An injected client knows its endpoint too; boto3's for AWS is its regional URL.
        self._endpoint = getattr(getattr(client, "meta", None), "endpoint_url", self._endpoint)

    def put(self, key: str, data: bytes) -> None:
        # One PUT: S3 makes the new object visible whole or not at all, and durable on 200.
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        except _sdk_errors() as exc:
            raise self._error(exc, key) from None

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._name(key))
            return response["Body"].read()
        except _sdk_errors() as exc:
            raise self._error(exc, key) from None

    def list(self, prefix: str = "") -> list[str]:
        names = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=self._name(prefix, check=False),
                PaginationConfig={"PageSize": LIST_PAGE_SIZE},
            )
            for page in pages:
                names.extend(item["Key"] for item in page.get("Contents", ()))
        except _sdk_errors() as exc:
            raise self._error(exc) from None
        return self._keys(names)

    def delete(self, key: str) -> None:
        # S3 answers 204 for a key that is not there: nothing to special-case.
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except _sdk_errors() as exc:
            raise self._error(exc, key) from None

    def _error(self, exc: Exception, key: str = "") -> StorageError:
        """The error of ours that ``exc`` (a botocore error) means."""
        response = getattr(exc, "response", None)
        error = response.get("Error", {}) if isinstance(response, dict) else {}
        code = str(error.get("Code") or type(exc).__name__)
        detail = str(error.get("Message") or exc)
        names = [code, *(cls.__name__ for cls in type(exc).__mro__)]
        error = self._translated(_ERRORS, names, key, code, detail)
        assert error is not None  # the table ends with botocore's base classes
        return error


@cache
def _sdk_errors() -> tuple[type[Exception], ...]:
    """Every error botocore raises; evaluated only when a call fails."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _default_client(
    endpoint_url: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    region: str | None,
) -> Any:
    # boto3 takes ~0.3 s to import: only deployments that store in S3 pay for it.
    import boto3
    from botocore.config import Config

    settings: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "retries": dict(RETRIES),
    }
    options: dict[str, str] = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
        # Since boto3 1.36 every PUT carries CRC checksum headers that many S3-compatible
        # servers (MinIO, Ceph, OVH, Backblaze releases) refuse: send them only where the
        # API requires them, as boto3 did before. AWS itself keeps the default.
        settings["request_checksum_calculation"] = "when_required"
        settings["response_checksum_validation"] = "when_required"
    if access_key_id:
        options["aws_access_key_id"] = access_key_id
    if secret_access_key:
        options["aws_secret_access_key"] = secret_access_key
    if region:
        options["region_name"] = region
    # A session of its own: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client("s3", config=Config(**settings), **options)

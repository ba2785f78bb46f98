"""Where Kimball stores its blobs: a URI and the few settings a backend needs, to a BlobStore.

The configuration is parsed once by the app and handed in here; nothing in this package reads
environment variables (the cloud SDKs' own credential chains aside).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from storage.blob_store import BlobStore, check_key
from storage.gcs_store import GcsBlobStore
from storage.local_store import LocalBlobStore
from storage.s3_store import S3BlobStore

_EXAMPLES = "file:///absolute/path, s3://bucket/optional/prefix or gs://bucket/optional/prefix"

# Bucket names as S3 (legacy names included) and GCS accept them: letters, digits, dots,
# dashes and underscores, 3 to 222 characters, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,220}[A-Za-z0-9]")


@dataclass(frozen=True)
class StorageConfig:
    """Where blobs live (``uri``) and what the backend of that URI needs to reach it.

    ``s3_endpoint`` is the original service's S3_HOST: a bare host (``minio:9000``) means
    https, a URL (``http://127.0.0.1:9000``) is used as is; none means AWS. Credentials and
    region left out come from the SDK's standard chain. ``gcs_endpoint`` is an emulator's URL
    (reached without credentials); ``gcs_credentials_file`` a service account key, else
    Application Default Credentials.
    """

    uri: str
    s3_endpoint: str | None = None
    aws_access_key_id: str | None = None
    # Kept out of repr: configurations get logged.
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str | None = None
    gcs_endpoint: str | None = None
    gcs_credentials_file: Path | None = None


def parse_storage_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket or absolute path, prefix)`` of a storage URI, else ``ValueError``.

    ``file:///srv/kimball`` gives ``("file", "/srv/kimball", "")``;
    ``s3://bucket/some/prefix`` gives ``("s3", "bucket", "some/prefix")``, and ``gs://`` alike.
    The message of the ``ValueError`` says what is wrong and shows the accepted forms.
    """
    parts = urlsplit(uri.strip())
    scheme = parts.scheme
    if scheme not in _FACTORIES:
        said = f"unsupported scheme {scheme!r}" if scheme else "no scheme"
        raise ValueError(f"storage URI {uri!r} has {said}: use {_EXAMPLES}")
    if parts.query or parts.fragment:
        raise ValueError(f"storage URI {uri!r} has a query or fragment: use {_EXAMPLES}")
    if scheme == "file":
        path = unquote(parts.path)
        # file://host/... names another machine; file:relative has no root.
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ValueError(f"storage URI {uri!r} is not an absolute path: use file:///abs/path")
        return scheme, path, ""
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"storage URI {uri!r} names no bucket: use {scheme}://bucket/prefix")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"storage URI {uri!r}: {bucket!r} is not a bucket name")
    prefix = unquote(parts.path).strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError:
            raise ValueError(
                f"storage URI {uri!r}: prefix {prefix!r} has an empty, '.' or '..' segment"
            ) from None
    return scheme, bucket, prefix


def s3_endpoint_url(endpoint: str) -> str:
    """The URL of an S3_HOST value: a bare ``host[:port]`` means https, a URL is kept."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        raise ValueError("the S3 endpoint is empty: give a host such as minio:9000 or a URL")
    if "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"S3 endpoint {endpoint!r} is not an http(s) host or URL")
    return endpoint


def open_blob_store(
    config: StorageConfig, *, s3_client: Any = None, gcs_client: Any = None
) -> BlobStore:
    """The ``BlobStore`` of ``config.uri``, by its scheme (file, s3, gs).

    ``s3_client`` / ``gcs_client`` replace the SDK client the backend would build (tests,
    custom sessions). Nothing goes over the network here, so a backend that is down shows
    only on the first call (as ``StorageError``). Raises ``ValueError`` for a URI or endpoint
    that cannot be used, and ``StorageError`` when the SDK cannot be set up (no GCS
    credentials found, unreadable credentials file).
    """
    scheme, where, prefix = parse_storage_uri(config.uri)
    return _FACTORIES[scheme](config, where, prefix, s3_client, gcs_client)


def _open_local(config: StorageConfig, path: str, prefix: str, *_clients: Any) -> BlobStore:
    return LocalBlobStore(Path(path))


def _open_s3(
    config: StorageConfig, bucket: str, prefix: str, s3_client: Any, _gcs_client: Any
) -> BlobStore:
    return S3BlobStore(
        bucket,
        prefix,
        s3_client,
        endpoint_url=s3_endpoint_url(config.s3_endpoint) if config.s3_endpoint else None,
        access_key_id=config.aws_access_key_id,
        secret_access_key=config.aws_secret_access_key,
        region=config.aws_region,
    )


def _open_gcs(
    config: StorageConfig, bucket: str, prefix: str, _s3_client: Any, gcs_client: Any
) -> BlobStore:
    return GcsBlobStore(
        bucket,
        prefix,
        gcs_client,
        endpoint=config.gcs_endpoint,
        credentials_file=config.gcs_credentials_file,
    )


# The backends by URI scheme: adding one is a class and a line here. Each imports its SDK
# only when it builds a client, so a deployment pays only for the SDK it stores in.
_FACTORIES: dict[str, Callable[[StorageConfig, str, str, Any, Any], BlobStore]] = {
    "file": _open_local,
    "s3": _open_s3,
    "gs": _open_gcs,
}

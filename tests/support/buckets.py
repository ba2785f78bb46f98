"""Where a test server's snapshots go (a local directory, a moto S3 bucket, a GCS emulator
bucket), with raw access to the objects there: what tests read, damage and delete."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kimball_grpc.config.settings import Settings
from support.in_process import local_settings
from support.object_servers import (
    S3_ACCESS_KEY_ID,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
    ObjectServer,
    gcs_client,
    new_bucket_name,
    s3_client,
)

PREFIX = "prod/eu"  # the storage prefix of the servers the cloud buckets serve


@dataclass
class Bucket:
    """Storage for a server, and how to reach its objects by their whole keys (``prefix``
    and then the server's own key, such as ``snapshots/...``)."""

    server: ObjectServer | None  # None: a local directory
    prefix: str  # before the server's keys ("" in a local directory)
    create: Callable[[], object]
    objects: Callable[[], dict[str, bytes]]  # every object, by its whole key
    put: Callable[[str, bytes], object]
    delete: Callable[[str], object]
    settings: Callable[[Path], Settings]  # a server with its data directory there

    def snapshots(self) -> dict[str, bytes]:
        """The server's snapshots where start-up looks for them, oldest first."""
        start = f"{self.prefix}snapshots/"
        return {
            key: data
            for key, data in sorted(self.objects().items())
            if key.startswith(start) and "/" not in key[len(start) :]
        }

    def damaged(self) -> dict[str, bytes]:
        """The snapshots moved aside."""
        start = f"{self.prefix}snapshots/damaged/"
        return {k: v for k, v in self.objects().items() if k.startswith(start)}


def local_bucket(root: Path) -> Bucket:
    """The default storage of a server whose data directory is ``root``: ``root/objects``."""
    objects_dir = root / "objects"

    def objects() -> dict[str, bytes]:
        return {
            path.relative_to(objects_dir).as_posix(): path.read_bytes()
            for path in objects_dir.rglob("*")
            if path.is_file()
        }

    return Bucket(
        None,
        "",
        lambda: None,
        objects,
        lambda key, data: (objects_dir / key).write_bytes(data),
        lambda key: (objects_dir / key).unlink(),
        local_settings,
    )


def s3_bucket(server: ObjectServer) -> Bucket:
    """A new bucket on a moto server, its server's objects under ``PREFIX``."""
    client = s3_client(server)
    name = new_bucket_name()

    def objects() -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket=name).get("Contents", [])
        return {
            o["Key"]: client.get_object(Bucket=name, Key=o["Key"])["Body"].read() for o in listed
        }

    def settings(data_dir: Path) -> Settings:
        return local_settings(
            data_dir,
            s3_bucket=name,
            storage_path_prefix=PREFIX,
            s3_host=server.url,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
            aws_region=S3_REGION,
        )

    bucket = Bucket(
        server,
        f"{PREFIX}/",
        lambda: client.create_bucket(Bucket=name),
        objects,
        lambda key, data: client.put_object(Bucket=name, Key=key, Body=data),
        lambda key: client.delete_object(Bucket=name, Key=key),
        settings,
    )
    bucket.create()
    return bucket


def gcs_bucket(server: ObjectServer) -> Bucket:
    """A new bucket on a GCS emulator, its server's objects under ``PREFIX``."""
    client = gcs_client(server)
    name = new_bucket_name()

    def objects() -> dict[str, bytes]:
        return {b.name: b.download_as_bytes() for b in client.list_blobs(name)}

    def settings(data_dir: Path) -> Settings:
        return local_settings(
            data_dir, gcs_bucket=name, storage_path_prefix=PREFIX, gcs_endpoint=server.url
        )

    bucket = Bucket(
        server,
        f"{PREFIX}/",
        lambda: client.create_bucket(name),
        objects,
        lambda key, data: client.bucket(name).blob(key).upload_from_string(data),
        lambda key: client.bucket(name).blob(key).delete(),
        settings,
    )
    bucket.create()
    return bucket

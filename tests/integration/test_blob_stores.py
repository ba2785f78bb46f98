"""One contract for every blob store backend: a local directory, S3 (a real moto server) and
GCS (the real gcp-storage-emulator), each opened through ``open_blob_store`` as the app does.
Then the inputs and conditions a user gets wrong: bad URIs, a wrong bucket, a backend down."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import object_servers
from support.object_servers import (
    S3_ACCESS_KEY_ID,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
    ObjectServer,
    new_bucket_name,
)

from storage.blob_store import BlobNotFound, BlobStore, StorageError
from storage.gcs_store import GcsBlobStore
from storage.local_store import LocalBlobStore
from storage.location import StorageConfig, open_blob_store, parse_storage_uri, s3_endpoint_url
from storage.s3_store import S3BlobStore

# A store of the backend under test, by prefix; stores from one Opener share one bucket.
Opener = Callable[[str], BlobStore]


@pytest.fixture(scope="module")
def s3_client(s3_server: ObjectServer) -> Any:
    """One client for the module: boto3 takes ~0.3 s to build one."""
    return object_servers.s3_client(s3_server)


@pytest.fixture(scope="module")
def gcs_client(gcs_server: ObjectServer) -> Any:
    return object_servers.gcs_client(gcs_server)


def s3_config(server: ObjectServer, bucket: str, prefix: str = "") -> StorageConfig:
    return StorageConfig(
        f"s3://{bucket}/{prefix}",
        s3_endpoint=server.url,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        aws_region=S3_REGION,
    )


def gcs_config(server: ObjectServer, bucket: str, prefix: str = "") -> StorageConfig:
    return StorageConfig(f"gs://{bucket}/{prefix}", gcs_endpoint=server.url)


@pytest.fixture(params=["local", "s3", "gcs"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens stores of one backend in a fresh bucket (for local: a fresh directory).

    The cloud stores share the module's client (injected as the app may); the tests of a
    wrong bucket and of a stopped backend below use the client each store builds itself.
    """
    if request.param == "local":
        return lambda prefix: open_blob_store(StorageConfig((tmp_path / prefix).as_uri()))
    bucket = new_bucket_name()
    if request.param == "s3":
        server, client = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_client")
        client.create_bucket(Bucket=bucket)
        return lambda prefix: open_blob_store(s3_config(server, bucket, prefix), s3_client=client)
    server, client = request.getfixturevalue("gcs_server"), request.getfixturevalue("gcs_client")
    client.create_bucket(bucket)
    return lambda prefix: open_blob_store(gcs_config(server, bucket, prefix), gcs_client=client)


@pytest.fixture
def store(open_store: Opener) -> BlobStore:
    return open_store("kimball/node-1")


# The contract, for every backend.


def test_get_returns_what_put_stored(store: BlobStore) -> None:
    store.put("snapshots/counters.bin", b"counters v1")
    assert store.get("snapshots/counters.bin") == b"counters v1"


def test_put_replaces_the_object(store: BlobStore) -> None:
    store.put("snapshot", b"old state, longer than the new one")
    store.put("snapshot", b"new state")
    assert store.get("snapshot") == b"new state"
    assert store.list() == ["snapshot"]


def test_get_of_a_missing_key_raises_blob_not_found(store: BlobStore) -> None:
    store.put("present", b"x")
    with pytest.raises(BlobNotFound) as caught:
        store.get("absent")
    assert "absent" in str(caught.value)
    assert caught.value.grpc_code == "NOT_FOUND"


def test_list_is_sorted_relative_and_only_under_the_prefix(store: BlobStore) -> None:
    for key in ["wal/0002", "wal/0001", "snapshots/b", "wal-old/0001", "snapshots/a"]:
        store.put(key, key.encode())
    assert store.list() == ["snapshots/a", "snapshots/b", "wal-old/0001", "wal/0001", "wal/0002"]
    assert store.list("wal/") == ["wal/0001", "wal/0002"]
    assert store.list("wal") == ["wal-old/0001", "wal/0001", "wal/0002"]
    assert store.list("none/") == []


def test_stores_with_different_prefixes_do_not_see_each_other(open_store: Opener) -> None:
    # "node" is a string prefix of "node2": the boundary is the "/" after the prefix.
    node, node2 = open_store("node"), open_store("node2")
    node.put("state", b"node's")
    node2.put("state", b"node2's")
    node2.put("only-node2", b"!")
    assert node.list() == ["state"]
    assert node.get("state") == b"node's"
    assert node2.list() == ["only-node2", "state"]
    with pytest.raises(BlobNotFound):
        node.get("only-node2")
    node.delete("state")
    assert node2.get("state") == b"node2's"
    # A store at the root (no prefix) sees both, under their prefixes.
    assert open_store("").list() == ["node2/only-node2", "node2/state"]


def test_deleted_object_is_gone_and_deleting_nothing_is_fine(store: BlobStore) -> None:
    store.put("old-segment", b"x")
    store.put("kept", b"y")
    store.delete("old-segment")
    with pytest.raises(BlobNotFound):
        store.get("old-segment")
    assert store.list() == ["kept"]
    store.delete("old-segment")
    store.delete("never-written")
    assert store.get("kept") == b"y"


def test_keys_with_spaces_and_non_ascii_round_trip(store: BlobStore) -> None:
    # The SDKs URL-encode keys on the way out and decode listed ones on the way back.
    keys = ["counters/événement 1+2%.bin", "counters/日本?#&=.bin"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list("counters/") == sorted(keys)
    assert [store.get(key) for key in keys] == [key.encode() for key in keys]


def test_binary_data_round_trips_exactly(store: BlobStore) -> None:
    every_byte = bytes(range(256)) * 3 + bytes(reversed(range(256)))
    store.put("binary", every_byte)
    store.put("empty", b"")
    assert store.get("binary") == every_byte
    assert store.get("empty") == b""


def test_a_5_mib_object_round_trips(store: BlobStore) -> None:
    data = os.urandom(5 * 1024 * 1024)
    store.put("big", data)
    assert store.get("big") == data


@pytest.mark.parametrize("key", ["", "/absolute", "a//b", "../escape", "a/./b"])
def test_keys_that_could_escape_the_prefix_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="not a relative object key"):
        store.put(key, b"x")
    assert store.list() == []


# The local directory specifics.


def test_local_put_leaves_no_temporary_file_and_list_hides_one(tmp_path: Path) -> None:
    store = open_blob_store(StorageConfig(tmp_path.as_uri()))
    store.put("wal/0001", b"x")
    store.put("wal/0001", b"y")
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["0001"]
    # What a crash in the middle of a put leaves behind.
    (tmp_path / "wal" / "0002.partial").write_bytes(b"half")
    assert store.list() == ["wal/0001"]


# Configuration: good input beside bad.


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("file:///srv/kimball", ("file", "/srv/kimball", "")),
        ("file:///srv/kimball%20data/", ("file", "/srv/kimball data/", "")),
        ("s3://kimball-data", ("s3", "kimball-data", "")),
        ("s3://kimball-data/prod/eu/", ("s3", "kimball-data", "prod/eu")),
        ("gs://kimball.example.com/prod", ("gs", "kimball.example.com", "prod")),
    ],
)
def test_parse_storage_uri_accepts(uri: str, parsed: tuple[str, str, str]) -> None:
    assert parse_storage_uri(uri) == parsed


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/dir", "unsupported scheme 'ftp'"),
        ("gcs://bucket/prefix", "unsupported scheme 'gcs'"),
        ("/srv/kimball", "has no scheme"),
        ("file://srv/kimball", "not an absolute path"),
        ("file:kimball-data", "not an absolute path"),
        ("s3:///prefix", "names no bucket"),
        ("gs://", "names no bucket"),
        ("s3://minio:9000/bucket", "'minio:9000' is not a bucket name"),
        ("s3://key:secret@bucket", "is not a bucket name"),
        ("s3://bucket/a//b", "prefix 'a//b'"),
        ("gs://bucket/../other", "prefix '../other'"),
        ("s3://bucket/p?region=eu-west-1", "query"),
    ],
)
def test_parse_storage_uri_refuses(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^storage URI ") as caught:
        parse_storage_uri(uri)
    assert message in str(caught.value)
    assert repr(uri) in str(caught.value)


def test_s3_endpoint_is_https_unless_a_url_says_otherwise() -> None:
    assert s3_endpoint_url("s3.eu-west-1.amazonaws.com") == "https://s3.eu-west-1.amazonaws.com"
    assert s3_endpoint_url("minio:9000") == "https://minio:9000"
    assert s3_endpoint_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    with pytest.raises(ValueError, match="not an http"):
        s3_endpoint_url("ftp://minio:9000")


def test_open_blob_store_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    # Nothing is contacted while opening: these endpoints need not exist.
    local = open_blob_store(StorageConfig(tmp_path.as_uri()))
    s3 = open_blob_store(StorageConfig("s3://kimball-data/prod/", s3_endpoint="minio:9000"))
    gs = open_blob_store(StorageConfig("gs://kimball-data", gcs_endpoint="http://127.0.0.1:9"))
    assert isinstance(local, LocalBlobStore) and local.uri == tmp_path.as_uri()
    assert isinstance(s3, S3BlobStore) and s3.uri == "s3://kimball-data/prod"
    assert isinstance(gs, GcsBlobStore) and gs.uri == "gs://kimball-data"


def test_open_blob_store_refuses_an_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported scheme 'azure'"):
        open_blob_store(StorageConfig("azure://container/prefix"))


def test_secret_key_stays_out_of_the_config_repr() -> None:
    config = StorageConfig("s3://bucket", aws_access_key_id="AKIA1", aws_secret_access_key="s3cr3t")
    assert "s3cr3t" not in repr(config)


# Conditions a user meets: a wrong bucket, a backend down and back.


@dataclass(frozen=True)
class Cloud:
    """A running server of one cloud backend; its stores build their own SDK client."""

    server: ObjectServer
    make_bucket: Callable[[str], object]
    config: Callable[[ObjectServer, str, str], StorageConfig]

    def open(self, bucket: str, prefix: str) -> BlobStore:
        return open_blob_store(self.config(self.server, bucket, prefix))


@pytest.fixture(params=["s3", "gcs"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_client")
        server = request.getfixturevalue("s3_server")
        return Cloud(server, lambda bucket: s3.create_bucket(Bucket=bucket), s3_config)
    gcs_client = request.getfixturevalue("gcs_client")
    return Cloud(request.getfixturevalue("gcs_server"), gcs_client.create_bucket, gcs_config)


def test_a_wrong_bucket_is_a_storage_error_naming_it(cloud: Cloud) -> None:
    store = cloud.open("no-such-kimball-bucket", "prefix")
    # Not BlobNotFound: a missing bucket must not look like "no data yet".
    for call in (lambda: store.get("snapshot"), lambda: store.put("k", b"x"), store.list):
        with pytest.raises(StorageError) as caught:
            call()
        assert type(caught.value) is StorageError
        assert "'no-such-kimball-bucket' does not exist" in str(caught.value)


def test_a_stopped_backend_fails_then_works_again_after_a_restart(cloud: Cloud) -> None:
    bucket = new_bucket_name()
    cloud.make_bucket(bucket)
    store = cloud.open(bucket, "node")
    store.put("snapshot", b"v1")

    cloud.server.stop()
    try:
        # Not BlobNotFound, and no SDK exception: a down backend is UNAVAILABLE.
        with pytest.raises(StorageError) as caught:
            store.get("snapshot")
        assert type(caught.value) is StorageError
        assert "unreachable" in str(caught.value)
        assert caught.value.grpc_code == "UNAVAILABLE"
    finally:
        cloud.server.restart()

    # The test servers keep nothing across a restart (a real bucket would still be there).
    cloud.make_bucket(bucket)
    store.put("snapshot", b"v2")
    assert store.get("snapshot") == b"v2"
    assert store.list() == ["snapshot"]


# S3 specifics.


def test_s3_list_reads_every_page(
    s3_server: ObjectServer, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3 answers at most 1000 keys a request; with 2 a page, 5 keys take three requests.
    monkeypatch.setattr("storage.s3_store.LIST_PAGE_SIZE", 2)
    requests = []

    def count(**request: object) -> None:
        requests.append(request)

    s3_client.meta.events.register("before-send.s3.ListObjectsV2", count)
    bucket = new_bucket_name()
    s3_client.create_bucket(Bucket=bucket)
    store = open_blob_store(s3_config(s3_server, bucket, "wal"), s3_client=s3_client)
    keys = [f"segment-{i}" for i in range(5)]
    for key in reversed(keys):
        store.put(key, b"")
    try:
        assert store.list() == keys
    finally:
        s3_client.meta.events.unregister("before-send.s3.ListObjectsV2", count)
    assert len(requests) == 3

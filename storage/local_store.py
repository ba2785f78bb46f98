"""The local directory backend (the embedded default): one file per object."""

from __future__ import annotations

from pathlib import Path

from storage.blob_store import BlobNotFound, BlobStore, StorageError, check_key
from storage.fsutil import TEMPORARY_SUFFIX, atomic_write, make_private_directory, tighten


class LocalBlobStore(BlobStore):
    """Objects as files under ``root`` (created when first written), owner-only: files
    0600, directories 0700. What an earlier version left readable by others is made
    owner-only here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.resolve().as_uri()
        tighten(root)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            make_private_directory(path.parent)
            atomic_write(path, data)
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri}/{key}: {exc.strerror or exc}") from None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no object {self.uri}/{key}", key=key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri}/{key}: {exc.strerror or exc}") from None

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        try:
            keys = [
                path.relative_to(self.root).as_posix()
                for path in self.root.rglob("*")
                if path.is_file() and not path.name.endswith(TEMPORARY_SUFFIX)
            ]
        except OSError as exc:
            raise StorageError(f"cannot list {self.uri}: {exc.strerror or exc}") from None
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri}/{key}: {exc.strerror or exc}") from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

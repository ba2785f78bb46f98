"""Making local files durable: syncing a directory, and replacing a file atomically."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# Written next to the file it replaces, then renamed over it; readers skip such names.
TEMPORARY_SUFFIX = ".partial"


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` (a file created, renamed or removed) survive a crash.

    Some file systems cannot sync a directory (EINVAL); nothing more can be done there."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the new one,
    never a part; the file is its owner's only (0600). ``durable``: the data and the
    rename are synced before this returns, so a crash right after still finds the new
    file. ``OSError`` if it fails, with the temporary file removed and ``path`` as it was."""
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)  # atomic on POSIX
        if durable:
            fsync_directory(path.parent)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise

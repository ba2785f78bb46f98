"""Local files: syncing a directory, replacing a file atomically, and keeping Kimball's files
its owner's only (directories 0700, files 0600)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

# Written next to the file it replaces, then renamed over it; readers skip such names.
TEMPORARY_SUFFIX = ".partial"
PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
_OTHERS = 0o077  # the group's and everyone else's permission bits


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
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
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


def make_private_directory(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each its owner's only (0700) from the
    start; directories that exist are left as they are. ``OSError`` if it fails."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
            os.mkdir(path, PRIVATE_DIRECTORY)


def tighten(path: Path) -> None:
    """Take every permission of the group and of others off ``path`` and, for a directory,
    off everything under it: earlier versions of Kimball made directories 0755. One
    warning line says what changed; what cannot be changed is logged and left."""
    if not path.exists():
        return
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    changed = 0
    for each in paths:
        try:
            mode = each.lstat().st_mode
            if stat.S_ISLNK(mode) or not mode & _OTHERS:
                continue
            each.chmod(stat.S_IMODE(mode) & ~_OTHERS)
            changed += 1
        except OSError as exc:
            log.warning("cannot make %s its owner's only: %s", each, exc.strerror or exc)
    if changed:
        log.warning(
            "%s: made %d files or directories owner-only (0600, 0700); an earlier version "
            "had left them open to other users",
            path,
            changed,
        )

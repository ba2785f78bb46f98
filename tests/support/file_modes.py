"""The permission bits of everything under a directory: Kimball's files are its owner's only."""

from __future__ import annotations

from pathlib import Path


def modes_under(root: Path) -> dict[str, int]:
    """Every file and directory under ``root`` (its path relative to ``root``) -> its
    permission bits."""
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in root.rglob("*")}


def loosened(root: Path) -> None:
    """Make everything under ``root`` as an earlier version left it: 0755 and 0644."""
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def not_owner_only(root: Path) -> dict[str, int]:
    """What under ``root`` others may use: directories not 0700, files not 0600."""
    return {
        path: mode
        for path, mode in modes_under(root).items()
        if mode != (0o700 if (root / path).is_dir() else 0o600)
    }

"""Reading the small files settings name (certificates, keys, token files): at most a
limit's worth, with an error naming the setting and the path as given."""

from __future__ import annotations

from pathlib import Path

from kimball_grpc.core.errors import ConfigError


def read_limited(
    path: Path, setting: str, limit: int, error: type[ConfigError] = ConfigError
) -> bytes:
    """The bytes of ``path`` (a file set by ``setting``); ``error`` if it cannot be read
    or holds more than ``limit`` bytes (it is then not the file the setting wants)."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise error(f"{setting} {path}: cannot read it: {exc.strerror}") from None
    if len(data) > limit:
        raise error(f"{setting} {path}: larger than {limit} bytes")
    return data

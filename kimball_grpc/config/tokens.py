"""API tokens as operators pass them: a comma-separated variable, or a file of one token per
line. Parsed here, with errors that say where (which entry, which line) and never what:
a token is never in an error, a log line or a metric; ``token_id`` names one safely."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kimball_grpc.config.files import read_limited
from kimball_grpc.core.errors import ConfigError

MAX_TOKENS = 1_000  # each call is checked against every token
MAX_TOKEN_FILE_BYTES = 1024 * 1024
# What a token may hold: printable ASCII without spaces (what an HTTP header and gRPC
# metadata carry unchanged), so that every accepted token can actually be sent.
_TOKEN_CHARACTERS = frozenset(chr(c) for c in range(0x21, 0x7F))


class TokenFileError(ConfigError):
    """A token file cannot be used: missing, unreadable, empty or malformed."""


def token_id(token: str) -> str:
    """A token's name for logs: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def parse_token_list(name: str, value: str) -> tuple[str, ...]:
    """Tokens from a comma-separated list (a variable called ``name``), blanks around each
    trimmed; ``ConfigError`` for an empty entry or a token that cannot be sent."""
    entries = [entry.strip() for entry in value.split(",")]
    for number, token in enumerate(entries, 1):
        if not token:
            raise ConfigError(
                f"{name}: entry {number} of {len(entries)} is empty: separate tokens with "
                f"single commas, with no comma at either end"
            )
        _check(token, f"{name}: entry {number}")
    return _limited(tuple(entries), name)


def read_token_file(path: Path, name: str) -> tuple[str, ...]:
    """The tokens of ``path`` (a file set by ``name``): one per line; blank lines and lines
    starting with ``#`` are ignored. ``TokenFileError`` if it is missing, unreadable, not
    UTF-8, holds no token, or a line is not one token."""
    data = read_limited(path, name, MAX_TOKEN_FILE_BYTES, TokenFileError)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TokenFileError(f"{name} {path}: not UTF-8 text") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if token and not token.startswith("#"):
            _check(token, f"{name} {path}: line {number}", TokenFileError)
            tokens.append(token)
    if not tokens:
        raise TokenFileError(
            f"{name} {path}: holds no token (one per line; # starts a comment line)"
        )
    return _limited(tuple(tokens), f"{name} {path}", TokenFileError)


def _check(token: str, where: str, error: type[ConfigError] = ConfigError) -> None:
    if not _TOKEN_CHARACTERS.issuperset(token):
        raise error(
            f"{where}: a token must be printable ASCII without spaces (what an "
            f"Authorization header carries); this one is not"
        )


def _limited(
    tokens: tuple[str, ...], where: str, error: type[ConfigError] = ConfigError
) -> tuple[str, ...]:
    if len(tokens) > MAX_TOKENS:
        raise error(f"{where}: {len(tokens)} tokens, more than the {MAX_TOKENS} accepted")
    return tokens

"""API authentication: bearer tokens, checked in constant time, never logged.

One ``TokenChecker`` serves both APIs: the gRPC interceptor here reads the
``authorization`` metadata, the REST gateway the ``Authorization`` header. A call
carrying the header twice is refused whatever the values: taking either one would
make the two APIs (or a proxy in front) disagree about who is calling. Each refused
call is logged in one line, rate-limited, and counted.

The tokens come from app.config, ``KIMBALL_API_TOKENS`` and a token file, all of them
accepted (``ApiTokens``); the file is re-read when it changes or on SIGHUP, and the
checker reads the current ``TokenSet`` on every call, so a reload takes effect at the next
call on both APIs. Logs name a token only by ``token_id``, a hash prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc

from kimball_grpc.api.interception import Continuation, refusing_handler, service_of
from kimball_grpc.api.rate_limited_log import RateLimitedLog
from kimball_grpc.config.settings import Settings
from kimball_grpc.config.tokens import TokenFileError, read_token_file, token_id
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.feature_flags import ANONYMOUS
from storage.fsutil import atomic_write, make_private_directory, tighten

log = logging.getLogger(__name__)

UNAUTHORIZED_MESSAGE = "Missing or invalid authorization header"
DUPLICATE_MESSAGE = "More than one authorization header: send exactly one"
TOKEN_FILE_NAME = "api-token"


TOKEN_FILE_SETTING = "--api-tokens-file (KIMBALL_API_TOKENS_FILE)"


class TokenSet:
    """The tokens accepted now, replaced whole (never empty)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.accepted: tuple[bytes, ...] = ()
        self.replace(tokens)

    def replace(self, tokens: Iterable[str]) -> None:
        """Accept ``tokens`` from the next check on (``ValueError`` if there are none)."""
        accepted = tuple(dict.fromkeys(t.encode() for t in tokens))
        if not accepted:
            raise ValueError("at least one token is required")
        self.accepted = accepted

    def __len__(self) -> int:
        return len(self.accepted)


class TokenChecker:
    """Accepts ``Bearer <token>`` (scheme in any case) for any token of ``tokens``, as they
    are at each call.

    ``on_refused(api)`` is told of each refused call (a metric), ``api`` being ``grpc``
    or ``rest``."""

    def __init__(self, tokens: TokenSet, on_refused: Callable[[str], None] | None = None) -> None:
        self._tokens = tokens
        self._on_refused = on_refused
        self._refusals = RateLimitedLog(log, logging.WARNING)

    def refusal(self, values: Sequence[str]) -> str | None:
        """None if ``values``, every authorization value a call carries, are one accepted
        token; else the message to refuse the call with."""
        if len(values) > 1:
            return DUPLICATE_MESSAGE
        return None if values and self.allows(values[0]) else UNAUTHORIZED_MESSAGE

    def note_refused(self, api: str, call: str, peer: str, message: str) -> None:
        """Count a refused call and log it in one line (rate-limited): the API, the method or
        route (never a query, which may hold a user id), the peer's address; no token."""
        if self._on_refused is not None:
            self._on_refused(api)
        self._refusals.log("refused a %s call to %s from %s: %s", api, call, peer, message)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``authorization`` value carries an accepted token."""
        token = bearer_token(authorization)
        if token is None:
            return False
        given = token.encode()
        # Compare against every token, without stopping early: no timing hint.
        matched = False
        for accepted in self._tokens.accepted:
            matched |= hmac.compare_digest(given, accepted)
        return matched


def generated_token(data_dir: Path) -> tuple[str, Path]:
    """A token for a server configured with none, and the file keeping it.

    It is generated once and kept in ``data_dir/api-token`` (owner-only), so a
    one-command start is usable and the token survives restarts; its path is logged,
    the token itself never.
    """
    path = data_dir / TOKEN_FILE_NAME
    if path.exists():
        tighten(path)  # an earlier version may have left it readable by others
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, path
    make_private_directory(data_dir)
    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode())
    return token, path


FileSignature = tuple[int, int, int, int] | None  # device, inode, size, mtime; None: missing


def _signature(path: Path) -> FileSignature:
    # A replaced file (a Kubernetes Secret is swapped by a symlink) has another inode.
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class ApiTokens:
    """The tokens a server accepts: those of ``sources`` (by where they came from) and those
    of ``file``, all together in ``tokens``; ``reload`` re-reads the file.

    A reload that fails (the file gone, unreadable, empty, malformed) keeps the tokens
    accepted before and logs a warning; ``on_reload(result)`` is told of each reload,
    ``ok`` or ``failed`` (a metric). Reading ``file`` here may raise ``TokenFileError``:
    at start-up, a file that cannot be used stops the server."""

    def __init__(
        self,
        sources: dict[str, tuple[str, ...]],
        file: Path | None = None,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        self.sources = sources
        self.file = file
        self._on_reload = on_reload
        self._signature = _signature(file) if file else None  # before the read: see watch
        self.file_tokens = read_token_file(file, TOKEN_FILE_SETTING) if file else ()
        self.tokens = TokenSet(self._all())
        self._watch: asyncio.Task[None] | None = None

    def _all(self) -> tuple[str, ...]:
        return (*(t for tokens in self.sources.values() for t in tokens), *self.file_tokens)

    def describe(self) -> str:
        """How many tokens are accepted, from where (never which)."""
        counts = [f"{len(tokens)} from {source}" for source, tokens in self.sources.items()]
        if self.file is not None:
            counts.append(f"{len(self.file_tokens)} from {self.file}")
        return f"{len(self.tokens)} token(s) accepted: {', '.join(counts)}"

    def reload(self, why: str) -> bool:
        """Re-read the file (``why``: what asked for it, for the log); whether it worked."""
        if self.file is None:
            log.info("%s: no API token file to re-read (KIMBALL_API_TOKENS_FILE)", why)
            return False
        signature = _signature(self.file)
        try:
            tokens = read_token_file(self.file, TOKEN_FILE_SETTING)
        except TokenFileError as exc:
            self._signature = signature  # one warning per change, not one per poll
            log.warning(
                "API tokens not reloaded (%s): %s; still accepting the %d token(s) of before",
                why,
                exc.message,
                len(self.tokens),
            )
            self._told("failed")
            return False
        before, after = set(self.file_tokens), set(tokens)
        self._signature, self.file_tokens = signature, tokens
        self.tokens.replace(self._all())
        log.info(
            "API tokens reloaded (%s): %s; added: %s; removed: %s",
            why,
            self.describe(),
            _ids(after - before),
            _ids(before - after),
        )
        self._told("ok")
        return True

    def _told(self, result: str) -> None:
        if self._on_reload is not None:
            self._on_reload(result)

    def start_watching(self, interval: float) -> None:
        """Re-read the file once it has changed (its inode, size or time) and then stayed
        the same for ``interval`` seconds, checked every ``interval`` seconds: a file being
        written in place is not read half-written. Without a file, nothing to watch."""
        if self.file is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_file(interval))

    async def _watch_file(self, interval: float) -> None:
        assert self.file is not None
        seen = self._signature
        while True:
            await asyncio.sleep(interval)
            # ``reload`` takes the signature before it reads: a change during a read is seen
            # at the next polls.
            now = _signature(self.file)
            if now != self._signature and now == seen:
                self.reload("the file changed")
            seen = now

    async def stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None


def _ids(tokens: set[str]) -> str:
    return ", ".join(sorted(token_id(t) for t in tokens)) or "none"


def load_api_tokens(
    settings: Settings, on_reload: Callable[[str], None] | None = None, *, generate: bool = True
) -> ApiTokens | None:
    """The tokens ``settings`` configure: app.config's, ``KIMBALL_API_TOKENS`` and the token
    file's, all accepted. With none, one generated into the data directory (``generate``),
    or None. ``ConfigError`` if the token file or the data directory cannot be used."""
    sources = {
        source: tokens
        for source, tokens in (
            ("app.config", settings.api_auth_tokens),
            ("KIMBALL_API_TOKENS", settings.api_tokens),
        )
        if tokens
    }
    if sources or settings.api_tokens_file is not None:
        tokens = ApiTokens(sources, settings.api_tokens_file, on_reload)
        log.info("API authentication is on: %s", tokens.describe())
        return tokens
    if not generate:
        return None
    try:
        token, path = generated_token(settings.data_dir)
    except OSError as exc:
        raise ConfigError(
            f"API authentication is on and no tokens are configured, and a token cannot be "
            f"kept in {settings.data_dir}: {exc}"
        ) from None
    log.warning(
        "API authentication is on and no tokens are configured (api_auth_tokens, "
        "KIMBALL_API_TOKENS, KIMBALL_API_TOKENS_FILE): use the token kept in %s "
        "(Authorization: Bearer <token>)",
        path,
    )
    return ApiTokens({f"the generated {path}": (token,)})


def caller_token_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The ``token_id`` of the bearer token a call carries (checked already when the
    server checks tokens), ``"anonymous"`` without one: who made a change, never the
    token itself."""
    values = [v for k, v in metadata or () if k == "authorization" and isinstance(v, str)]
    token = bearer_token(values[0]) if len(values) == 1 else None
    return ANONYMOUS if token is None else token_id(token)


def bearer_token(authorization: str | None) -> str | None:
    """The token of a ``Bearer <token>`` value (scheme in any case); None if it is not one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without an accepted token, except to the open services."""

    def __init__(self, checker: TokenChecker, open_services: set[str]) -> None:
        self._checker = checker
        self._open = open_services

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        service = service_of(details)
        if service in self._open:
            return await continuation(details)
        values = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        refusal = self._checker.refusal(values)
        if refusal is None:
            return await continuation(details)
        handler = await continuation(details)
        # A method this server does not have is not named: its name is the caller's text.
        method = details.method if handler is not None else "an unknown method"

        def note(context: grpc.aio.ServicerContext) -> None:
            self._checker.note_refused("grpc", method, context.peer(), refusal)

        return refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, refusal, note)

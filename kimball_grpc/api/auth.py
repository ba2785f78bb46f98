"""API authentication: bearer tokens, checked in constant time, never logged.

One ``TokenChecker`` serves both APIs: the gRPC interceptor here reads the
``authorization`` metadata, the REST gateway the ``Authorization`` header. A call
carrying the header twice is refused whatever the values: taking either one would
make the two APIs (or a proxy in front) disagree about who is calling. Each refused
call is logged in one line, rate-limited, and counted.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from kimball_grpc.api.interception import Continuation, refusing_handler, service_of
from kimball_grpc.api.rate_limited_log import RateLimitedLog
from storage.fsutil import atomic_write, make_private_directory, tighten

log = logging.getLogger(__name__)

UNAUTHORIZED_MESSAGE = "Missing or invalid authorization header"
DUPLICATE_MESSAGE = "More than one authorization header: send exactly one"
TOKEN_FILE_NAME = "api-token"


class TokenChecker:
    """Accepts ``Bearer <token>`` (scheme in any case) for any configured token.

    ``on_refused(api)`` is told of each refused call (a metric), ``api`` being ``grpc``
    or ``rest``."""

    def __init__(
        self, tokens: Sequence[str], on_refused: Callable[[str], None] | None = None
    ) -> None:
        if not tokens:
            raise ValueError("at least one token is required")
        self._tokens = [t.encode() for t in tokens]
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
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = token.strip().encode()
        # Compare against every token, without stopping early: no timing hint.
        matched = False
        for accepted in self._tokens:
            matched |= hmac.compare_digest(given, accepted)
        return matched


def run_tokens(configured: Sequence[str], data_dir: Path) -> tuple[tuple[str, ...], Path | None]:
    """The tokens to accept, and the file holding a generated one (if any).

    With none configured, a token is generated once and kept in
    ``data_dir/api-token`` (owner-only), so a one-command start is usable and
    the token survives restarts; its path is logged, the token itself never.
    """
    if configured:
        return tuple(configured), None
    path = data_dir / TOKEN_FILE_NAME
    if path.exists():
        tighten(path)  # an earlier version may have left it readable by others
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return (token,), path
    make_private_directory(data_dir)
    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode())
    return (token,), path


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

"""API authentication: bearer tokens, checked in constant time, never logged.

One ``TokenChecker`` serves both APIs: the gRPC interceptor here reads the
``authorization`` metadata, the REST gateway the ``Authorization`` header.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

import grpc

from kimball_grpc.api.interception import Continuation, refusing_handler, service_of
from storage.fsutil import atomic_write, make_private_directory, tighten

log = logging.getLogger(__name__)

UNAUTHORIZED_MESSAGE = "Missing or invalid authorization header"
TOKEN_FILE_NAME = "api-token"


class TokenChecker:
    """Accepts ``Bearer <token>`` (scheme in any case) for any configured token."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("at least one token is required")
        self._tokens = [t.encode() for t in tokens]

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
        metadata = dict(details.invocation_metadata or ())
        if self._checker.allows(metadata.get("authorization")):
            return await continuation(details)
        handler = await continuation(details)
        return refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED_MESSAGE)

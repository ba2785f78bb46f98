"""aiohttp's server log and access log, without what a request carried.

aiohttp logs a request it cannot parse at ERROR with the parser's exception, whose
message quotes the request (an over-long request line: the path and query, user ids
and all), and an unexpected error with its traceback, whose last line is the
exception's message (it may hold a value from the request). Kimball logs no user id
and no event at any level, so the log object aiohttp is given (its ``logger``
parameter) writes instead:

- a request that could not be parsed: one line, rate-limited, at INFO (DEBUG if
  aiohttp chose DEBUG: what a TLS client sends a plain port), naming the client's
  address and the kind of problem, never the request;
- an unexpected error (a bug): the error's type and where it was raised (file, line and
  function of each frame), never its message.

The access log (``AccessLog``, on ``kimball.access``) writes one line per request once
its answer is sent: the method, the declared route (``/v0/featureSpecs/{name}``, never
the path or query as sent, which may hold a user id), the status, the duration, the bytes
of the request's body and of the answer's, and the request id.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from kimball_grpc.api.rate_limited_log import RateLimitedLog

log = logging.getLogger("aiohttp.server")
# What the gateway's middleware keeps on each request it sees: (CallContext, declared route).
OBSERVED = web.RequestKey("kimball.observed", tuple)


class RequestFreeLog:
    """The ``logger`` aiohttp's server is given: the methods it calls, each writing to
    ``aiohttp.server`` without the exception's message or the request's text."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._logger = logger
        self._bad_requests = RateLimitedLog(logger, logging.INFO)

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._write(logging.DEBUG, message, args, kwargs.get("exc_info"))

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._write(logging.INFO, message, args, kwargs.get("exc_info"))

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._write(logging.WARNING, message, args, kwargs.get("exc_info"))

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._write(logging.ERROR, message, args, kwargs.get("exc_info"))

    def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._write(logging.ERROR, message, args, kwargs.get("exc_info", True))

    def _write(self, level: int, message: str, args: tuple, exc_info: object) -> None:
        error = _error_of(exc_info)
        if error is None:
            self._logger.log(level, message, *args)
        elif isinstance(error, HttpProcessingError):
            what = (message + ": a malformed request (%s, %d)", *args, type(error).__name__)
            if level == logging.DEBUG:
                self._logger.debug(*what, error.code)
            else:
                self._bad_requests.log(*what, error.code)
        else:
            self._logger.log(
                level, message + ": %s raised at %s", *args, type(error).__name__, _frames(error)
            )


def _error_of(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1]
    return sys.exc_info()[1] if exc_info else None


def _frames(error: BaseException) -> str:
    """Where ``error`` was raised, innermost first: ``file:line in function`` per frame."""
    frames = traceback.extract_tb(error.__traceback__)
    return " <- ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(frames)) or "?"


class AccessLog(AbstractAccessLogger):
    """The ``access_log_class`` aiohttp's server is given: a line per request, on the logger
    it is given, once the answer is sent. A request that never reached the application
    (it could not be parsed) has no method, route or request id: ``-``."""

    @property
    def enabled(self) -> bool:
        # Asked once per connection: when INFO is off, aiohttp does not even time requests.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        observed = request.get(OBSERVED)
        if observed is None:
            method = route = request_id = "-"
        else:
            call, route = observed
            method, request_id = request.method, call.request_id
        bytes_in = request.content.total_bytes
        bytes_out = response.content_length
        if bytes_out is None:  # streamed: what was written, headers included
            bytes_out = response.body_length
        self.logger.info(
            "%s %s %d %.3f ms, %d B in, %d B out, request_id=%s",
            method,
            route,
            response.status,
            time * 1000,
            bytes_in,
            bytes_out,
            request_id,
            extra={
                "api": "rest",
                "request_id": request_id,
                "method": method,
                "route": route,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
            },
        )

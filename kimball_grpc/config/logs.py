"""The log: its two formats, and the call each line was written in.

``configure_logging`` sets the root logger once at start-up: plain text lines, or one
JSON object per line (``time`` in RFC 3339 UTC, ``level``, ``logger``, ``message``,
``request_id`` when written during a call, then any structured fields the line was given
as ``extra``). The standard library's ``logging`` is enough for this: the formatter is a
few lines, and a library would add a dependency to every install for no behaviour we lack.

Each REST request and gRPC call runs with a ``CallContext`` in ``current_call`` (a
context variable: it follows the call through awaits, and the REST gateway's in-process
gRPC calls run in the request's own task), so every line written while serving it
carries its request id, and the ingestion path can tell which API events came through.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import TextIO

ACCESS_LOGGER = "kimball.access"  # one line per REST request and per gRPC call
REQUEST_ID_HEADER = "x-request-id"  # taken from a caller, echoed back, in both APIs
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A caller's request id is used when it is a short token of these characters: anything
# else (spaces, quotes, control characters, a long text) would make the log ambiguous
# or let a caller write what they like into it, so such a call gets a fresh id.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


@dataclass(slots=True)
class CallContext:
    """One REST request or gRPC call being served."""

    request_id: str
    api: str  # "rest" or "grpc": the label of the events it ingests
    # Set once the ingestion path has counted this call's events (ingested or refused),
    # so that the edge does not count a refusal of the same call again.
    events_counted: bool = False

    @property
    def trailers(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata that gives the request id back to the caller."""
        return ((REQUEST_ID_HEADER, self.request_id),)


current_call: ContextVar[CallContext | None] = ContextVar("kimball_call", default=None)


# Fresh ids: 16 hex digits, a random half drawn once per process and a counter (unique,
# and cheaper per call than drawing random bytes from the system each time).
_ID_PREFIX = secrets.token_hex(4)
_id_numbers = itertools.count(secrets.randbelow(2**32))


def request_id_from(given: str | None) -> str:
    """The caller's request id if it is a sane short token, else a fresh one."""
    if given and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_id_numbers) & 0xFFFFFFFF:08x}"


# What every LogRecord has: anything else on a record came from ``extra=`` and is written
# as a field of its own.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call = current_call.get()
        if call is not None:
            entry["request_id"] = call.request_id
        for key, value in record.__dict__.items():  # in the order given
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _encode(entry)


# One encoder for every line (json.dumps with options builds one per call).
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode
_second: list = [None, ""]  # the last whole second formatted, and its text


def _rfc3339(created: float) -> str:
    """``2026-01-02T03:04:05.678Z``: UTC, milliseconds."""
    seconds = int(created)
    if _second[0] != seconds:  # lines come many a second: format each second once
        _second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return f"{_second[1]}.{int((created - seconds) * 1000):03d}Z"


def configure_logging(level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Every logger writes to ``stream`` (stderr) at ``level`` and above, in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

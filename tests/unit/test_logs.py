"""The log's two formats, and the request ids calls are given."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from kimball_grpc.config.logs import (
    CallContext,
    LogFormat,
    configure_logging,
    current_call,
    request_id_from,
)

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def root_logger() -> Iterator[None]:
    """configure_logging changes the root logger: put it back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def written(log_format: LogFormat, write) -> str:
    out = io.StringIO()
    configure_logging("INFO", log_format, out)
    write()
    return out.getvalue()


def test_json_lines_hold_time_level_logger_message_and_the_fields_given(root_logger):
    def write() -> None:
        logging.getLogger("kimball.test").warning(
            "%d events refused", 3, extra={"route": "/v0/analytics", "status": 400}
        )
        logging.getLogger("kimball.test").debug("below the level: not written")

    lines = written(LogFormat.JSON, write).splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert RFC3339_UTC.fullmatch(entry.pop("time"))
    assert entry == {
        "level": "WARNING",
        "logger": "kimball.test",
        "message": "3 events refused",
        "route": "/v0/analytics",
        "status": 400,
    }


def test_json_time_is_utc_now(root_logger):
    entry = json.loads(written(LogFormat.JSON, lambda: logging.getLogger("t").info("x")))
    when = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=5)


def test_a_line_written_during_a_call_carries_its_request_id(root_logger):
    def write() -> None:
        token = current_call.set(CallContext("req-42", "rest"))
        try:
            logging.getLogger("kimball.test").info("inside")
        finally:
            current_call.reset(token)
        logging.getLogger("kimball.test").info("outside")

    inside, outside = map(json.loads, written(LogFormat.JSON, write).splitlines())
    assert inside["request_id"] == "req-42"
    assert "request_id" not in outside


def test_an_exception_stays_on_one_json_line(root_logger):
    def write() -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("kimball.test").exception("failed")

    lines = written(LogFormat.JSON, write).splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "failed"
    assert "Traceback" in entry["exception"] and "ValueError: boom" in entry["exception"]


def test_text_lines_are_as_before(root_logger):
    text = written(LogFormat.TEXT, lambda: logging.getLogger("kimball.test").info("hello"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO kimball.test: hello\n", text)


@pytest.mark.parametrize(
    "given", ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "trace:1.2/3+4=", "x" * 128]
)
def test_a_sane_request_id_is_kept(given):
    assert request_id_from(given) == given


@pytest.mark.parametrize(
    "given", [None, "", "x" * 129, "has space", 'quo"te', "new\nline", "naïve", "a;b"]
)
def test_anything_else_gets_a_fresh_request_id(given):
    fresh = request_id_from(given)
    assert re.fullmatch(r"[0-9a-f]{16}", fresh)
    assert fresh != request_id_from(given)

"""A replica's start against a JetStream that does not answer yet: a call that times out
(nats-py's timeout, or asyncio's while waiting for a watch) is tried again until it
answers or the start's time passes; what the logs and the start-up error say of a failure
is never empty."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from kimball_grpc.cluster.jetstream_start import (
    JetStreamUnavailable,
    reason,
    when_jetstream_answers,
)


def test_a_failure_is_described_by_its_message_else_by_its_type():
    assert reason(ValueError("bad bucket")) == "bad bucket"
    assert reason(TimeoutError()) == "TimeoutError"


def failing_then(*failures: Exception) -> Callable[[], Awaitable[str]]:
    """A call that raises each of ``failures`` in turn, then answers."""
    left = list(failures)

    async def attempt() -> str:
        if left:
            raise left.pop(0)
        return "answered"

    return attempt


async def test_a_call_timing_out_or_without_responder_is_tried_again_until_it_answers():
    from nats.js.errors import NoStreamResponseError

    attempt = failing_then(TimeoutError(), NoStreamResponseError(), TimeoutError())
    assert await when_jetstream_answers("the bucket b", attempt, seconds=30) == "answered"


async def test_a_call_that_keeps_timing_out_fails_the_start_naming_what():
    async def attempt() -> None:
        raise TimeoutError()

    with pytest.raises(JetStreamUnavailable) as info:
        await when_jetstream_answers("the bucket b", attempt, seconds=0)
    assert "the bucket b did not answer within 0 s (TimeoutError)" in str(info.value)


async def test_another_failure_is_not_tried_again():
    calls = []

    async def attempt() -> None:
        calls.append(1)
        raise ValueError("the stream has another subject")

    with pytest.raises(ValueError):
        await when_jetstream_answers("the stream", attempt, seconds=30)
    assert calls == [1]


async def test_too_few_servers_to_place_a_new_stream_is_waited_for():
    from nats.js.errors import BadRequestError

    no_placement = BadRequestError(
        code=400, err_code=10005, description="no suitable peers for placement"
    )
    attempt = failing_then(no_placement)
    assert await when_jetstream_answers("the stream", attempt, seconds=30) == "answered"


async def test_another_bad_request_is_not_tried_again():
    from nats.js.errors import BadRequestError

    async def attempt() -> None:
        raise BadRequestError(code=400, err_code=10058, description="stream name in use")

    with pytest.raises(BadRequestError):
        await when_jetstream_answers("the stream", attempt, seconds=30)

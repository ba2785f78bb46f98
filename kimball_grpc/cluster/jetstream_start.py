"""A replica's start against a JetStream that may not answer yet: a NATS cluster without a
quorum, or one whose restarted server's streams and buckets are still electing their
leaders, times requests out for a while. Each first call of a start (the stream, the
buckets) is tried again until ``START_SECONDS`` pass, then the start fails, saying which."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

START_SECONDS = 20.0
START_RETRY_SECONDS = 0.5
# JetStream's "no suitable peers for placement": fewer servers up than a new stream's or
# bucket's replicas, as while one of them restarts.
NO_SUITABLE_PEERS = 10005

T = TypeVar("T")


class JetStreamUnavailable(RuntimeError):
    """JetStream did not answer a start's call within its time."""


def reason(exc: BaseException) -> str:
    """What a log line says of ``exc``: its message, else its type's name (a timeout of
    asyncio's has no message)."""
    return str(exc) or type(exc).__name__


async def when_jetstream_answers(
    what: str, attempt: Callable[[], Awaitable[T]], seconds: float = START_SECONDS
) -> T:
    """``attempt()``'s result, tried again while JetStream times out (nats-py's timeouts
    and asyncio's, as a watch waited on), has no responder or leader, or has too few
    servers up to place a new stream or bucket on; ``JetStreamUnavailable`` naming
    ``what`` once ``seconds`` have passed."""
    from nats.errors import NoRespondersError
    from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError

    deadline = time.monotonic() + seconds
    while True:
        try:
            return await attempt()
        except (
            TimeoutError,
            NoRespondersError,
            NoStreamResponseError,  # no responder, to a publish
            ServiceUnavailableError,
        ) as exc:
            failure: Exception = exc
        except BadRequestError as exc:
            if exc.err_code != NO_SUITABLE_PEERS:
                raise
            failure = exc
        why = reason(failure)
        if time.monotonic() >= deadline:
            raise JetStreamUnavailable(
                f"{what} did not answer within {seconds:g} s ({why}): does the NATS cluster "
                f"have a quorum of its servers up (and, to create a stream or bucket, as "
                f"many servers as its replicas)?"
            ) from None
        log.warning("%s does not answer yet (%s)", what, why)
        await asyncio.sleep(START_RETRY_SECONDS)

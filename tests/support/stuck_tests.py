"""A test stuck waiting in its event loop: the stacks of its asyncio tasks, then its end.

pytest's ``faulthandler_timeout`` prints every thread's stack, but a test waiting in
asyncio shows there only the event loop's ``select``. After ``STUCK_SECONDS`` of one
test, this plugin (``-p support.stuck_tests``, in pyproject.toml) prints the stack of
each task of the loop that test runs, to stderr (captured and reported with the test),
and cancels those tasks: the test fails saying where it waited, and the run goes on
instead of waiting for CI's time limit.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator

import pytest

STUCK_SECONDS = 240.0  # the longest test (the soak) takes about 70 s
_POLL_SECONDS = 5.0


class _Watch:
    """The test being run and the event loop it last started, read by the watching thread."""

    def __init__(self) -> None:
        self.test: tuple[str, float] | None = None  # node id, start
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ended: set[tuple[str, float]] = set()


_watch = _Watch()
_run_forever = asyncio.BaseEventLoop.run_forever


def _recording_run_forever(self: asyncio.BaseEventLoop) -> None:
    _watch.loop = self
    return _run_forever(self)


def _awaiting(awaitable: object) -> Iterator[str]:
    """Where a coroutine waits, outermost first, down its chain of awaits (``Task``'s own
    stack stops at the outermost coroutine)."""
    while awaitable is not None:
        frame = next(
            (f for a in ("cr_frame", "ag_frame", "gi_frame") if (f := getattr(awaitable, a, None))),
            None,
        )
        if frame is not None:
            yield f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        awaitable = next(
            (
                n
                for a in ("cr_await", "ag_await", "gi_yieldfrom")
                if (n := getattr(awaitable, a, None))
            ),
            None,
        )


def _end_stuck(loop: asyncio.AbstractEventLoop, test: str) -> None:
    """In the loop's thread: print where each task waits, then cancel it."""
    tasks = asyncio.all_tasks(loop)
    print(f"\n=== {test}: stuck for {STUCK_SECONDS:.0f} s; its tasks:", file=sys.stderr)
    for task in tasks:
        print(f"--- {task!r}", file=sys.stderr)
        for line in _awaiting(task.get_coro()):
            print(line, file=sys.stderr)
    for task in tasks:
        task.cancel()


def _watching() -> None:
    while True:
        time.sleep(_POLL_SECONDS)
        test, loop = _watch.test, _watch.loop
        if test is None or loop is None or test in _watch.ended:
            continue
        if time.monotonic() - test[1] > STUCK_SECONDS and loop.is_running():
            _watch.ended.add(test)
            loop.call_soon_threadsafe(_end_stuck, loop, test[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _watch.test = (item.nodeid, time.monotonic())
    try:
        yield
    finally:
        _watch.test = None


def pytest_configure(config: pytest.Config) -> None:
    asyncio.BaseEventLoop.run_forever = _recording_run_forever  # type: ignore[method-assign]
    threading.Thread(target=_watching, name="stuck-tests", daemon=True).start()

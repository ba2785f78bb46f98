"""Work that grows with the state, in steps: a generator that yields between pieces of it.

A server runs such work in its event loop one step at a time (``between_requests``), so
other requests are answered between two steps; anything else runs it to the end at once
(``finish``). The value is the generator's return value. Each step is bounded by the
items it handles, so a step takes a few milliseconds whatever the size of the state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]

# Items per step: sorting 4,096 names or answering for 128 counters takes about a ms.
SORT_RUN = 4096
ITEMS_PER_STEP = 128


def finish(steps: Steps[T]) -> T:
    """Run ``steps`` to the end; their value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


async def between_requests(steps: Steps[T]) -> T:
    """Run ``steps`` in the running event loop, which answers other requests after each
    step; their value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)


def sorted_in_steps(items: Iterable[T], key: Callable[[T], Any] | None = None) -> Steps[list[T]]:
    """``sorted(items, key=key)`` in steps: runs of ``SORT_RUN`` items sorted one per step,
    then one more sort, which finds those runs and merges them (a third to half of the time
    a whole sort takes at 200,000 names). ``items`` are copied to a list at the first step."""
    out = list(items)
    for start in range(0, len(out), SORT_RUN):
        out[start : start + SORT_RUN] = sorted(out[start : start + SORT_RUN], key=key)  # type: ignore[type-var, arg-type]
        yield
    out.sort(key=key)  # type: ignore[arg-type]
    return out


def each_in_steps(items: Iterable[T], act: Callable[[T], object]) -> Steps[None]:
    """``act(item)`` for each item, ``ITEMS_PER_STEP`` per step."""
    for done, item in enumerate(items, start=1):
        act(item)
        if done % ITEMS_PER_STEP == 0:
            yield

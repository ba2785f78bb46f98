"""Work that grows with the state, in steps: a generator that yields between pieces of it.

A server runs such work in its event loop one step at a time (``between_requests``), so
other requests are answered between two steps; anything else runs it to the end at once
(``finish``). The value is the generator's return value. Each step is bounded by the
items it handles, so a step takes a few milliseconds whatever the size of the state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]

# Items per step: answering for 128 counters takes about a millisecond.
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

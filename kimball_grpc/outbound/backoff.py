"""Pacing retries against another server (an event target, the api server, a blob store)."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Exponential backoff with full jitter: after ``failures`` failures in a row the next
    wait is uniform in ``[0, min(longest, first * 2**failures)]``. Spread out, so many
    clients of one server that went away do not come back at the same moment."""

    def __init__(self, first: float, longest: float) -> None:
        if not 0 < first <= longest:
            raise ValueError("backoffs must satisfy 0 < first_backoff <= max_backoff")
        self.first = first
        self.longest = longest
        self.failures = 0

    def reset(self) -> None:
        """It worked: the next failure waits from the first step again."""
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before the next try."""
        delay = random.uniform(0, min(self.longest, self.first * 2 ** min(self.failures, 62)))
        self.failures += 1
        return delay

    async def wait(self) -> None:
        """Count one more failure and wait before the next try."""
        await asyncio.sleep(self.next_delay())

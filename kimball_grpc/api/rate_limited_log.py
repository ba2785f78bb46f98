"""Log lines anyone can cause (a call without a token, a malformed request) without letting
them flood the log: a few at once, then one every so often, the rest counted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

BURST_LINES = 10  # lines written at once before the limit applies
SECONDS_PER_LINE = 6.0  # then one line every this many seconds (10 a minute)


class RateLimitedLog:
    """One kind of line on ``logger`` at ``level``: up to ``burst`` at once, then one per
    ``seconds_per_line``. Lines left out are counted, and the next line written says how
    many there were."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        *,
        burst: int = BURST_LINES,
        seconds_per_line: float = SECONDS_PER_LINE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._burst = burst
        self._seconds_per_line = seconds_per_line
        self._clock = clock
        self._allowance = float(burst)
        self._last = clock()
        self.left_out = 0  # lines not written since the last one that was

    def log(self, message: str, *args: object) -> None:
        """Write ``message % args`` unless over the rate (then only count it)."""
        now = self._clock()
        elapsed, self._last = now - self._last, now
        self._allowance = min(self._burst, self._allowance + elapsed / self._seconds_per_line)
        if self._allowance < 1:
            self.left_out += 1
            return
        self._allowance -= 1
        if self.left_out:
            message += " (and %d more like it not logged)"
            args = (*args, self.left_out)
            self.left_out = 0
        self._logger.log(self._level, message, *args)

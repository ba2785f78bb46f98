"""Lines anyone can cause: a burst, then one every few seconds, the rest counted and said."""

from __future__ import annotations

import logging

from kimball_grpc.api.rate_limited_log import RateLimitedLog


def test_a_burst_then_one_line_per_period_saying_how_many_were_left_out(caplog):
    caplog.set_level(logging.INFO)
    now = [0.0]
    lines = RateLimitedLog(
        logging.getLogger("test.quiet"),
        logging.INFO,
        burst=3,
        seconds_per_line=10,
        clock=lambda: now[0],
    )

    for i in range(8):
        lines.log("refused %d", i)
    now[0] = 10.0
    lines.log("refused %d", 8)
    lines.log("refused %d", 9)
    now[0] = 40.0  # three periods: three lines may go out again
    for i in range(10, 13):
        lines.log("refused %d", i)

    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused 1",
        "refused 2",
        "refused 8 (and 5 more like it not logged)",
        "refused 10 (and 1 more like it not logged)",
        "refused 11",
        "refused 12",
    ]

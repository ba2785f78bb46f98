"""Closing a NATS connection never holds a replica's stop or failed start: nats-py can wait
forever for a transport that does not close after its server went away, which no real
server here makes happen on demand, so a connection whose close never returns stands in."""

from __future__ import annotations

import asyncio
import logging

from kimball_grpc.cluster import event_log


class NeverCloses:
    async def close(self) -> None:
        await asyncio.Event().wait()


class Closes:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_close_that_never_returns_is_given_up_after_its_time(monkeypatch, caplog):
    monkeypatch.setattr(event_log, "CLOSE_SECONDS", 0.05)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(event_log.close_connection(NeverCloses()), 5)
    assert "did not close within 0.05 s" in caplog.text


async def test_a_connection_that_closes_is_closed_quietly(caplog):
    connection = Closes()
    await event_log.close_connection(connection)
    assert connection.closed and not caplog.text

"""``KimballService`` of a cluster replica: ``Subscribe`` gets the events of the whole cluster
from the stream (``ClusterEventFeed``), numbered by their place in it; the rest is the single
node's service, the queries of counts asked of every partition's owner (its ``cluster``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kimball_grpc.api.servicers import KimballService
from kimball_grpc.cluster.event_feed import RECORDS_PER_MESSAGE, ClusterEventFeed
from kimball_grpc.core.events import AcceptedEvent


class ClusterKimballService(KimballService):
    """``KimballService`` whose subscribers read ``feed``: every event accepted by any
    replica, in the stream's order (docs/scale-out.md, "Live events")."""

    def __init__(self, *args: Any, feed: ClusterEventFeed, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feed = feed

    async def _open_events(self) -> int:
        await self.feed.join()
        try:
            last = await self.feed.last_message()
        except BaseException:
            self.feed.leave()
            raise
        # Any event of the stream's last message (or before) is a place to resume after.
        return (last + 1) * RECORDS_PER_MESSAGE - 1

    def _close_events(self) -> None:
        self.feed.leave()

    def _live_from(self) -> int:
        return (self.feed.position + 1) * RECORDS_PER_MESSAGE - 1

    def _replay(self, after: int, through: int) -> AsyncIterator[AcceptedEvent]:
        return self.feed.replay(after, through // RECORDS_PER_MESSAGE)

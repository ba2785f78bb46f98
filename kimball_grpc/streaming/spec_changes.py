"""Waking the ``WatchFeatureSpecs`` streams (and the ConfigMap store) when a feature spec
change is applied.

Each stream then sends the whole set with its version and fingerprint: the set is
bounded to fit one message, which is simpler than sending changes and never out of
order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

from kimball_grpc.codec.proto_mapping import flags_to_proto
from kimball_grpc.core.feature_flags import FeatureFlags
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb


class SpecChanges:
    """Tells watchers when the specs change."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def next_change(self) -> Awaitable[bool]:
        """Done at the first change after this call (awaited now or later)."""
        return self._changed.wait()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()  # the woken waiters held the old one

    async def watch(self, flags: FeatureFlags, held: str) -> AsyncIterator[pb.FeatureSpecs]:
        """The whole set whenever its fingerprint differs from the one last sent (at first,
        from ``held``: the caller's)."""
        while True:
            message = flags_to_proto(flags)
            if message.fingerprint == held:
                await self._changed.wait()
                continue
            held = message.fingerprint
            yield message

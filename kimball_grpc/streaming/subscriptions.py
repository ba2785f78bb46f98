"""Live subscriptions to accepted events.

Each subscriber has a bounded queue. Publishing never waits: when a queue is
full its oldest event is dropped and the subscriber's ``dropped`` count grows,
so a slow subscriber can see what it missed and never slows ingestion.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from kimball_grpc.core.events import AcceptedEvent, Event

DEFAULT_QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber wants; empty fields match everything."""

    namespace: str = ""
    event_names: frozenset[str] = frozenset()
    event_name_prefix: str = ""

    def matches(self, event: Event) -> bool:
        if self.namespace and event.namespace != self.namespace:
            return False
        if self.event_names and event.event_name not in self.event_names:
            return False
        return event.event_name.startswith(self.event_name_prefix)


class Subscription:
    """One subscriber's bounded queue."""

    def __init__(self, event_filter: EventFilter, max_queue: int) -> None:
        self.filter = event_filter
        self.dropped = 0
        self._queue: deque[AcceptedEvent] = deque(maxlen=max_queue)
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, accepted: AcceptedEvent) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # deque drops the oldest on append
        self._queue.append(accepted)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> AcceptedEvent | None:
        """The next event, waiting for one; None once the subscription is closed."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()


class SubscriptionHub:
    """Fans accepted events out to subscribers."""

    def __init__(self, max_queue: int = DEFAULT_QUEUE_SIZE) -> None:
        self.max_queue = max_queue
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    def subscribe(self, event_filter: EventFilter) -> Subscription:
        """A new subscription; already closed if the hub is shutting down."""
        subscription = Subscription(event_filter, self.max_queue)
        if self._closed:
            subscription.close()
        else:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        subscription.close()

    def close_all(self) -> None:
        """End every subscription, and any made from now on (shutdown)."""
        self._closed = True
        for subscription in list(self._subscriptions):
            self.unsubscribe(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def publish(self, accepted: Sequence[AcceptedEvent]) -> None:
        for subscription in self._subscriptions:
            wanted = subscription.filter
            for item in accepted:
                if wanted.matches(item.event):
                    subscription.offer(item)

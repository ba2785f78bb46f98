"""Live subscriptions to accepted events.

Accepted events go into one ring buffer that every subscriber shares: publishing
appends each event once, whatever the number of subscribers, and never waits.
Each subscription looks at the ring from where it last looked, when it reads,
and keeps the events its filter matches in its own bounded queue. A subscriber
that falls behind (it reads slower than events arrive, or not at all) loses the
oldest of them: from its full queue, or from the ring when it did not look at
the ring before its events were overwritten. Either way its ``dropped`` count
grows by the events it missed that match its filter. So a slow subscriber costs
publishing nothing, each one looks at each event at most once, and it can see
what it missed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kimball_grpc.core.events import AcceptedEvent, Event
from kimball_grpc.core.limits import DEFAULT_SUBSCRIBER_BUFFER_EVENTS

# Events appended to the ring, by namespace and then event name.
Appended = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber wants; empty fields match everything."""

    namespace: str = ""
    event_names: frozenset[str] = frozenset()
    event_name_prefix: str = ""

    @property
    def matches_all(self) -> bool:
        return not (self.namespace or self.event_names or self.event_name_prefix)

    def matches(self, event: Event) -> bool:
        if self.namespace and event.namespace != self.namespace:
            return False
        if self.event_names and event.event_name not in self.event_names:
            return False
        return event.event_name.startswith(self.event_name_prefix)

    def count(self, appended: Appended) -> int:
        """How many of the events counted in ``appended`` match."""
        if self.namespace:
            by_name = appended.get(self.namespace)
            groups = [by_name] if by_name else []
        else:
            groups = list(appended.values())
        prefix = self.event_name_prefix
        total = 0
        for by_name in groups:
            if self.event_names:
                total += sum(by_name.get(n, 0) for n in self.event_names if n.startswith(prefix))
            elif prefix:
                total += sum(n for name, n in by_name.items() if name.startswith(prefix))
            else:
                total += sum(by_name.values())
        return total


class Subscription:
    """One subscriber: where it last looked at the hub's ring, and its queue."""

    def __init__(self, hub: SubscriptionHub, event_filter: EventFilter) -> None:
        self.filter = event_filter
        self._hub = hub
        self.scanned = hub.head  # the ring's positions before this were looked at
        # Matching events appended before this subscription began: with those it found and
        # those it never looked at, every matching event is accounted for.
        self.matched_before = hub.matched(event_filter)
        self.found = 0  # matching events found in the ring
        self.unseen = 0  # matching events overwritten in the ring before it looked
        self.overflowed = 0  # matching events pushed out of its full queue
        self.queue: deque[AcceptedEvent] = deque(maxlen=hub.max_queue)

    @property
    def dropped(self) -> int:
        """How many events matching the filter this subscriber missed so far."""
        self._hub.catch_up(self)
        return self.unseen + self.overflowed

    def poll(self) -> AcceptedEvent | None:
        """The next matching event, if there is one."""
        self._hub.catch_up(self)
        return self.queue.popleft() if self.queue else None

    async def next(self) -> AcceptedEvent:
        """The next matching event, waiting for one."""
        while (accepted := self.poll()) is None:
            await self._hub.arrived.wait()
        return accepted


class SubscriptionHub:
    """Fans accepted events out to subscribers through a ring of the latest ``max_queue``
    events; each subscriber queues at most ``max_queue`` of its own."""

    def __init__(self, max_queue: int = DEFAULT_SUBSCRIBER_BUFFER_EVENTS) -> None:
        self.max_queue = max_queue
        self.arrived = asyncio.Event()  # set and cleared at each publish: wakes the readers
        self._subscriptions: set[Subscription] = set()
        self._empty()

    def _empty(self) -> None:
        """Forget the ring (no subscription holds a position in it)."""
        self._ring: list[AcceptedEvent] = []  # grows to max_queue, then overwritten in turn
        self.head = 0  # the position the next event takes (positions count from the reset)
        self._appended: dict[str, dict[str, int]] = {}

    def subscribe(self, event_filter: EventFilter) -> Subscription:
        """A new subscription: it reads what is published from now on."""
        subscription = Subscription(self, event_filter)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        if not self._subscriptions:
            self._empty()  # the events held are nobody's to read: free them

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def publish(self, accepted: Sequence[AcceptedEvent]) -> None:
        """Append ``accepted`` to the ring, each event once, and wake the readers."""
        ring, size, appended = self._ring, self.max_queue, self._appended
        head = self.head
        for item in accepted:
            if head < size:
                ring.append(item)
            else:
                ring[head % size] = item
            head += 1
            event = item.event
            by_name = appended.get(event.namespace)
            if by_name is None:
                by_name = appended[event.namespace] = {}
            by_name[event.event_name] = by_name.get(event.event_name, 0) + 1
        self.head = head
        self.arrived.set()  # the waiters are woken; the flag is not needed after that
        self.arrived.clear()

    def matched(self, event_filter: EventFilter) -> int:
        """How many events appended so far match ``event_filter``."""
        if event_filter.matches_all:
            return self.head
        return event_filter.count(self._appended)

    def catch_up(self, subscription: Subscription) -> None:
        """Queue for ``subscription`` the matching events published since it last looked,
        and count those it missed."""
        head, ring, size = self.head, self._ring, self.max_queue
        start = subscription.scanned
        if start == head:
            return
        oldest = head - len(ring)
        matches, queue = subscription.filter.matches, subscription.queue
        found = 0
        for position in range(max(start, oldest), head):
            accepted = ring[position % size]
            if matches(accepted.event):
                found += 1
                if len(queue) == size:
                    subscription.overflowed += 1  # the deque drops its oldest
                queue.append(accepted)
        subscription.found += found
        subscription.scanned = head
        if start < oldest:
            # Some were overwritten before it looked (it did not read for a while): what
            # matched since it subscribed and was never found. At most once per max_queue
            # events published, like the look at the whole ring just taken.
            subscription.unseen = (
                self.matched(subscription.filter) - subscription.matched_before - subscription.found
            )

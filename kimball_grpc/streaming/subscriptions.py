"""Live subscriptions to accepted events.

Accepted events go into one ring buffer that every subscriber shares: publishing
appends each event once, whatever the number of subscribers, and never waits.
Each subscription keeps its own cursor in the ring and reads from there,
filtering as it goes. A subscriber that falls further behind than the ring holds
(it stopped reading, or reads slower than events arrive) finds that what it had
not read was overwritten: it goes on from the oldest event still held, and its
``dropped`` count grows by the events it missed that match its filter. So a slow
subscriber costs publishing nothing, and it can see what it missed.
"""

from __future__ import annotations

import asyncio
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
    """One subscriber's cursor in the hub's ring."""

    def __init__(self, hub: SubscriptionHub, event_filter: EventFilter) -> None:
        self.filter = event_filter
        self._hub = hub
        self.cursor = hub.head  # the position of the next event to read
        # Matching events appended before this subscription began; with those read and
        # those still held, what was missed follows (see ``SubscriptionHub.catch_up``).
        self.matched_before = hub.matched(event_filter)
        self.taken = 0  # matching events read
        self.missed = 0

    @property
    def dropped(self) -> int:
        """How many events matching the filter this subscriber missed so far: the ring
        overwrote them before it read them."""
        self._hub.catch_up(self)
        return self.missed

    async def next(self) -> AcceptedEvent:
        """The next matching event, waiting for one."""
        hub = self._hub
        while (accepted := hub.take(self)) is None:
            await hub.arrived.wait()
        return accepted


class SubscriptionHub:
    """Fans accepted events out to subscribers through a ring of the latest ``max_queue``
    events."""

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

    def take(self, subscription: Subscription) -> AcceptedEvent | None:
        """The next event for ``subscription``, if one is held."""
        self.catch_up(subscription)
        ring, size, matches = self._ring, self.max_queue, subscription.filter.matches
        while subscription.cursor < self.head:
            accepted = ring[subscription.cursor % size]
            subscription.cursor += 1
            if matches(accepted.event):
                subscription.taken += 1
                return accepted
        return None

    def catch_up(self, subscription: Subscription) -> None:
        """If the ring overwrote events ``subscription`` had not read, move it on to the
        oldest event held and count the matching events it missed."""
        oldest = self.head - len(self._ring)
        if subscription.cursor >= oldest:
            return
        subscription.cursor = oldest
        event_filter = subscription.filter
        if event_filter.matches_all:
            held = self.head - oldest
        else:
            # At most once per max_queue events published: reading them costs as much.
            matches = event_filter.matches
            held = sum(1 for accepted in self._ring if matches(accepted.event))
        # Matching events since it subscribed = read + missed + still held.
        subscription.missed = (
            self.matched(event_filter) - subscription.matched_before - subscription.taken - held
        )

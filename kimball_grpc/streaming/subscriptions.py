"""Live subscriptions to accepted events.

Accepted events go into one ring buffer that every subscriber shares: publishing
appends each event once, whatever the number of subscribers, and never waits;
memory is the ring's, whatever the number of subscribers. Each subscription
reads the ring from its own cursor, and marks which events match its filter as
it first looks at them (one bit per place in the ring), so it looks at each
event at most once. A subscriber that falls further behind than the ring holds
(it reads slower than events arrive, or not at all) finds that what it had not
read was overwritten: it goes on from the oldest event held, and its
``dropped`` count grows by the events it missed that match its filter (counted
from its marks, or, for events overwritten before it looked, from the number
of events published per name). So a slow subscriber costs publishing nothing,
and it can see what it missed.

What goes out is encoded once per event, whatever the number of subscribers: the
first subscriber that takes an event encodes it (``subscribe_entry``) and the
ring keeps the bytes beside the event for the others; a subscriber takes the
matching events held, up to its batch, in one step, and they go out as one
response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bitarray import bitarray

from kimball_grpc.codec.proto_mapping import subscribe_entry
from kimball_grpc.core.events import AcceptedEvent, Event
from kimball_grpc.core.limits import (
    DEFAULT_SUBSCRIBER_BUFFER_EVENTS,
    SUBSCRIBE_BATCH_WAIT_S,
    SUBSCRIBE_RESPONSE_BYTES,
)

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
    """One subscriber: its cursor in the hub's ring, and which events there match."""

    def __init__(self, hub: SubscriptionHub, event_filter: EventFilter, after: int) -> None:
        self.filter = event_filter
        self.after = after  # events with sequence numbers up to this are skipped
        self._hub = hub
        self.cursor = hub.head  # the position of the next event to read
        self.scanned = hub.head  # positions before this were looked at
        self.marks = bitarray(hub.max_queue)  # by place in the ring: matches the filter
        # Matching events appended before this subscription began: with those it looked
        # at, every matching event is accounted for.
        self.matched_before = hub.matched(event_filter)
        self.found = 0  # matching events it looked at
        self.lost = 0  # of those, overwritten before it read them
        self.unseen = 0  # matching events overwritten before it looked at them

    @property
    def dropped(self) -> int:
        """How many events matching the filter this subscriber missed so far."""
        self._hub.catch_up(self)
        return self.lost + self.unseen

    def poll(self, limit: int = 1, room: int = SUBSCRIBE_RESPONSE_BYTES) -> list[bytes]:
        """The next matching events held, at most ``limit`` (and about ``room`` bytes),
        each as ``subscribe_entry`` encodes it; none if none is held."""
        return self._hub.take(self, limit, room)

    async def next(self, limit: int = 1) -> list[bytes]:
        """Like ``poll``, waiting for at least one event. Asked for several, it takes what
        arrives within ``SUBSCRIBE_BATCH_WAIT_S`` of the first too, up to ``limit``: under
        a steady flow of events, fewer, larger answers (each costs the server about the
        same whatever its size)."""
        while not (entries := self.poll(limit)):
            await self._hub.arrived.wait()
        if len(entries) < limit:
            await asyncio.sleep(SUBSCRIBE_BATCH_WAIT_S)
            room = SUBSCRIBE_RESPONSE_BYTES - sum(map(len, entries))
            if room > 0:
                entries += self.poll(limit - len(entries), room)
        return entries


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
        self._entries: list[bytes | None] = []  # by place in the ring: its event encoded
        # Ring places looked at for a filter since the last publish: (filter, start, end).
        self._matched: dict[tuple[EventFilter, int, int], bitarray] = {}
        self.head = 0  # the position the next event takes (positions count from the reset)
        self._appended: dict[str, dict[str, int]] = {}

    def subscribe(self, event_filter: EventFilter, after: int = -1) -> Subscription:
        """A new subscription: it reads what is published from now on, but for events with
        sequence numbers up to ``after``."""
        subscription = Subscription(self, event_filter, after)
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
        ring, entries, size, appended = self._ring, self._entries, self.max_queue, self._appended
        head = self.head
        for item in accepted:
            if head < size:
                ring.append(item)
                entries.append(None)
            else:
                ring[head % size] = item
                entries[head % size] = None
            head += 1
            event = item.event
            by_name = appended.get(event.namespace)
            if by_name is None:
                by_name = appended[event.namespace] = {}
            by_name[event.event_name] = by_name.get(event.event_name, 0) + 1
        self.head = head
        self._matched.clear()
        self.arrived.set()  # the waiters are woken; the flag is not needed after that
        self.arrived.clear()

    def matched(self, event_filter: EventFilter) -> int:
        """How many events appended so far match ``event_filter``."""
        if event_filter.matches_all:
            return self.head
        return event_filter.count(self._appended)

    def take(self, subscription: Subscription, limit: int, room: int) -> list[bytes]:
        """The next matching events held for ``subscription``, at most ``limit`` (and about
        ``room`` bytes), encoded."""
        self.catch_up(subscription)
        marks = subscription.marks
        taken: list[bytes] = []
        position = subscription.cursor
        for a, b in self._places(position, subscription.scanned):
            end = min(b, a + limit - len(taken))
            if subscription.after < 0 and marks.count(1, a, end) == end - a:
                # Every one matches (a subscriber of everything): taken as a slice.
                places: Iterable[int] = range(a, end)
                run = self._encoded(a, end)
                if room - sum(map(len, run)) > 0:
                    taken += run
                    room -= sum(map(len, run))
                    position += end - a
                    if len(taken) == limit:
                        subscription.cursor = position
                        return taken
                    continue
            else:
                places = marks.search(1, a, b)
            for place in places:
                (entry,) = self._encoded(place, place + 1)
                if subscription.after >= 0:  # just after a read-back from the log
                    if self._ring[place].sequence <= subscription.after:
                        continue
                    subscription.after = -1  # sequence numbers grow: no more to skip
                taken.append(entry)
                room -= len(entry)
                if len(taken) == limit or room <= 0:
                    subscription.cursor = position + place - a + 1
                    return taken
            position += b - a
        subscription.cursor = position
        return taken

    def _encoded(self, start: int, end: int) -> list[bytes]:
        """The encoded events of ring places ``start`` to ``end``, encoding those not yet."""
        entries = self._entries[start:end]
        if None in entries:
            ring = self._ring
            for i, entry in enumerate(entries):
                if entry is None:
                    entries[i] = self._entries[start + i] = subscribe_entry(ring[start + i])
        return entries  # type: ignore[return-value]  # none is None any more

    def catch_up(self, subscription: Subscription) -> None:
        """Count what the ring overwrote before ``subscription`` read it, and look at the
        events published since it last looked."""
        head = self.head
        oldest = head - len(self._ring)
        cursor, scanned = subscription.cursor, subscription.scanned
        if cursor < oldest:
            # Overwritten unread: the matching ones it had looked at are marked.
            subscription.lost += self._count(subscription.marks, cursor, min(scanned, oldest))
            subscription.cursor = oldest
        if scanned == head:
            return
        marks = subscription.marks
        for a, b in self._places(max(scanned, oldest), head):
            matching = self._matching(subscription.filter, a, b)
            marks[a:b] = matching
            subscription.found += matching.count()
        subscription.scanned = head
        if scanned < oldest:
            # Some were overwritten before it looked (it did not read while the ring went
            # round once, so this look at the whole ring is at most once per round).
            subscription.unseen = (
                self.matched(subscription.filter) - subscription.matched_before - subscription.found
            )

    def _matching(self, event_filter: EventFilter, start: int, end: int) -> bitarray:
        """Which events of ring places ``start`` to ``end`` match ``event_filter``: looked at
        once per publish for all subscribers with the same filter."""
        key = (event_filter, start, end)
        matching = self._matched.get(key)
        if matching is None:
            if event_filter.matches_all:
                matching = bitarray(end - start)
                matching.setall(1)
            else:
                matches = event_filter.matches
                matching = bitarray([matches(item.event) for item in self._ring[start:end]])
            self._matched[key] = matching
        return matching

    def _places(self, start: int, end: int) -> list[tuple[int, int]]:
        """The ring's places of positions ``start`` to ``end`` (at most one round), as
        ranges: two when they wrap."""
        size = self.max_queue
        if end <= start:
            return []
        first = start % size
        last = first + (end - start)
        return [(first, last)] if last <= size else [(first, size), (0, last - size)]

    def _count(self, marks: bitarray, start: int, end: int) -> int:
        """How many of positions ``start`` to ``end`` are marked."""
        return sum(marks.count(1, a, b) for a, b in self._places(start, end))
